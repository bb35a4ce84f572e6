//! Single reverse-process steps with explicit noise — the one place each update is written; the
//! loops of [`crate::sampler`] are built from these functions.
//!
//! Every step takes the current sample `x` (`[B, …]`), the index `t` of the (possibly respaced)
//! process — one for the whole batch or one per sample ([`Timesteps`]) —, the network's output
//! at `(x, t)` (see [`model_output`], which feeds the network the reference's model timesteps:
//! the original step through the respacing map, rescaled to [0, 1000) when the process says so),
//! and the noise as a tensor of `x`'s shape. [`NoiseSource`](crate::NoiseSource) is one way to
//! produce that noise; any tensor will do.
//!
//! | step | update | reference |
//! |---|---|---|
//! | [`ancestral_step`] | x ← μ_θ + σ_t z (σ from the process's variance; no noise at t = 0) | improved-diffusion `p_sample` |
//! | [`ddim_step`] | x ← √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ²) ε̂ + σ z, σ = η √((1−ᾱ_{t−1})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}) | `ddim_sample` |
//! | [`ddim_reverse_step`] | x_{t+1} ← √ᾱ_{t+1} x̂_0 + √(1 − ᾱ_{t+1}) ε̂, ε̂ at t | `ddim_reverse_sample` |
//! | [`ddim_inversion_step`] | x_t ← √ᾱ_t x̂_0 + √(1 − ᾱ_t) ε̂ from x_{t−1}, ε̂ at t | the exact inverse used by [`crate::ddim_reverse_loop`] |
//! | [`langevin_step`] | y ← y + (α/2) ∇_y log q_t(y) + √α z on y = x/√ᾱ_t, α = ε σ_t²/σ_min² | Song & Ermon 2019, Alg. 1 |
//! | [`corrector_step`] | x ← x + ς ∇log q_t(x) + √(2ς) z, ς = 2 α_t (r ‖z‖/‖∇‖)² | Song et al. 2021, Alg. 5 |
//! | [`predictor_corrector_step`] | K corrector steps, then a DDPM or DDIM predictor | Song et al. 2021, Alg. 5 |
//!
//! Classifier guidance (Dhariwal & Nichol 2021, Alg. 1 and 2), as guided-diffusion computes it:
//! [`condition_mean`] (μ + Σ g) and [`condition_score`] (ε' = ε̂ − √(1−ᾱ_t) g, x̂_0 from ε', the
//! posterior mean of that x̂_0, Σ unchanged), where g = s ∇_x log p(y∣x_t) is the gradient a
//! [`Guidance`] returns at `(x, model timesteps)`. The ancestral step applies `condition_mean`,
//! DDIM and the score-based steps `condition_score`, when [`StepOptions::guidance`] is set.
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use diffusion_core::{BetaSchedule, GaussianDiffusion};
//! use diffusion_sample::step::{StepOptions, ancestral_step, ddim_step, model_output};
//!
//! let device = Device::flex();
//! let d = GaussianDiffusion::from_schedule(&BetaSchedule::Linear { num_timesteps: 1000 }, Default::default())?
//!     .respace_spec("ddim50")?;
//! let network = |x: Tensor<4>, _t: Tensor<1>| x.mul_scalar(0.1); // ε̂ from any network
//! let x = Tensor::<4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
//! let noise = Tensor::<4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
//!
//! let out = model_output(&d, &network, x.clone(), 49)?;
//! let step = ancestral_step(&d, x.clone(), 49, out.clone(), Some(noise), &StepOptions::default())?;
//! assert_eq!(step.sample.dims(), [2, 3, 8, 8]);
//! let det = ddim_step(&d, x, 49, out, 0.0, None, &StepOptions::default())?; // η = 0 needs no noise
//! assert_eq!(det.pred_x0.dims(), [2, 3, 8, 8]);
//! # Ok::<(), diffusion_sample::SampleError>(())
//! ```

use burn::tensor::{Device, Int, Tensor, TensorData};
use diffusion_core::{GaussianDiffusion, PMeanVariance};

use crate::error::{Result, SampleError};

/// A network `(x_t, model timesteps) → output` (ε̂, x̂_0, … and variance channels, as the
/// process's configuration says). Any closure of that shape is one.
pub trait Denoiser<const D: usize> {
    /// The network output.
    fn denoise(&self, x: Tensor<D>, t: Tensor<1>) -> Tensor<D>;
}

impl<const D: usize, F: Fn(Tensor<D>, Tensor<1>) -> Tensor<D>> Denoiser<D> for F {
    fn denoise(&self, x: Tensor<D>, t: Tensor<1>) -> Tensor<D> {
        self(x, t)
    }
}

/// s · ∇_x log p(y | x_t): the guidance gradient, scale included, at `x` for the model
/// timesteps `t` (what guided-diffusion's `cond_fn` returns).
pub trait Guidance<const D: usize> {
    /// The gradient at `x` for model timesteps `t`.
    fn gradient(&self, x: Tensor<D>, t: Tensor<1>) -> Tensor<D>;
}

impl<const D: usize, F: Fn(Tensor<D>, Tensor<1>) -> Tensor<D>> Guidance<D> for F {
    fn gradient(&self, x: Tensor<D>, t: Tensor<1>) -> Tensor<D> {
        self(x, t)
    }
}

/// Indices of the (respaced) process: one for the whole batch, or one per sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timesteps {
    /// Every sample at this index.
    All(usize),
    /// Sample `k` at index `v[k]`.
    PerSample(Vec<usize>),
}

impl From<usize> for Timesteps {
    fn from(t: usize) -> Self {
        Timesteps::All(t)
    }
}

impl From<Vec<usize>> for Timesteps {
    fn from(t: Vec<usize>) -> Self {
        Timesteps::PerSample(t)
    }
}

impl From<&[usize]> for Timesteps {
    fn from(t: &[usize]) -> Self {
        Timesteps::PerSample(t.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Timesteps {
    fn from(t: [usize; N]) -> Self {
        Timesteps::PerSample(t.to_vec())
    }
}

impl Timesteps {
    /// One index per sample of a batch of `batch`, each checked against the process.
    pub fn resolve(&self, batch: usize, num_timesteps: usize) -> Result<Vec<usize>> {
        let v = match self {
            Timesteps::All(t) => vec![*t; batch],
            Timesteps::PerSample(v) if v.len() == batch => v.clone(),
            Timesteps::PerSample(v) => return Err(SampleError::TimestepCount { got: v.len(), batch }),
        };
        if let Some(&t) = v.iter().find(|&&t| t >= num_timesteps) {
            return Err(SampleError::TimestepOutOfRange { t, num_timesteps });
        }
        Ok(v)
    }
}

/// Options shared by the steps.
pub struct StepOptions<'a, const D: usize> {
    /// Clip x̂_0 to [−1, 1] before forming the mean (the reference's `clip_denoised`).
    pub clip_denoised: bool,
    /// Classifier guidance: the ancestral step shifts the mean ([`condition_mean`]), the others
    /// the score ([`condition_score`]).
    pub guidance: Option<&'a dyn Guidance<D>>,
}

impl<const D: usize> Default for StepOptions<'_, D> {
    fn default() -> Self {
        Self { clip_denoised: true, guidance: None }
    }
}

impl<const D: usize> Clone for StepOptions<'_, D> {
    fn clone(&self) -> Self {
        Self { clip_denoised: self.clip_denoised, guidance: self.guidance }
    }
}

impl<const D: usize> std::fmt::Debug for StepOptions<'_, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepOptions")
            .field("clip_denoised", &self.clip_denoised)
            .field("guidance", &self.guidance.is_some())
            .finish()
    }
}

/// What [`ancestral_step`] returns: the reference's `sample` and `pred_xstart`, and the
/// distribution the sample was drawn from.
#[derive(Debug, Clone)]
pub struct AncestralStep<const D: usize> {
    /// x_{t−1} = μ + σ z (μ at t = 0).
    pub sample: Tensor<D>,
    /// x̂_0 (clipped when asked).
    pub pred_x0: Tensor<D>,
    /// μ_θ(x_t, t), shifted by the guidance when there is one.
    pub mean: Tensor<D>,
    /// Σ_θ(x_t, t).
    pub variance: Tensor<D>,
    /// log Σ_θ(x_t, t).
    pub log_variance: Tensor<D>,
}

/// What the DDIM steps return: the reference's `sample` and `pred_xstart`, and ε̂.
#[derive(Debug, Clone)]
pub struct DdimStep<const D: usize> {
    /// The next sample (x_{t−1}; x_{t+1} for the reverse steps).
    pub sample: Tensor<D>,
    /// x̂_0 (after guidance, when there is one).
    pub pred_x0: Tensor<D>,
    /// ε̂ implied by x̂_0 at (x, t).
    pub eps: Tensor<D>,
}

/// ε̂ and x̂_0 of the network at (x, t), after guidance when there is one.
#[derive(Debug, Clone)]
pub struct Prediction<const D: usize> {
    /// ε̂ (for guidance: ε̂ − √(1−ᾱ_t) g).
    pub eps: Tensor<D>,
    /// x̂_0 (for guidance: the one implied by the shifted ε̂).
    pub pred_x0: Tensor<D>,
    /// p_θ(x_{t−1}∣x_t) (for guidance: [`condition_score`]'s).
    pub p: PMeanVariance<D>,
}

/// What [`langevin_step`] returns.
#[derive(Debug, Clone)]
pub struct LangevinStep<const D: usize> {
    /// The next y (the variance-exploding variable).
    pub sample: Tensor<D>,
    /// ∇_x log q_t at x = √ᾱ_t y (guidance included).
    pub score: Tensor<D>,
}

/// What [`predictor_corrector_step`] returns.
#[derive(Debug, Clone)]
pub struct PcStep<const D: usize> {
    /// x_{t−1}.
    pub sample: Tensor<D>,
    /// The predictor's x̂_0.
    pub pred_x0: Tensor<D>,
}

/// The predictor of a predictor-corrector step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Predictor {
    /// Ancestral sampling.
    Ddpm,
    /// DDIM with η.
    Ddim {
        /// η.
        eta: f64,
    },
}

/// The noise of one [`predictor_corrector_step`].
#[derive(Debug, Clone)]
pub struct PcNoise<const D: usize> {
    /// One tensor per corrector step.
    pub corrector: Vec<Tensor<D>>,
    /// The predictor's noise (see [`ancestral_step`] and [`ddim_step`] for when it is needed).
    pub predictor: Option<Tensor<D>>,
}

/// The timesteps of one step, resolved against a batch: host indices, the device tensor, and
/// per-sample coefficients gathered from the process's f64 tables.
pub(crate) struct At {
    pub(crate) idx: Vec<usize>,
    pub(crate) t: Tensor<1, Int>,
    device: Device,
}

impl At {
    pub(crate) fn new<const D: usize>(
        d: &GaussianDiffusion,
        x: &Tensor<D>,
        t: impl Into<Timesteps>,
    ) -> Result<Self> {
        let device = x.device();
        let idx = t.into().resolve(x.dims()[0], d.num_timesteps())?;
        let ints: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        let t = Tensor::<1, Int>::from_data(TensorData::new(ints, [idx.len()]), &device);
        Ok(Self { idx, t, device })
    }

    /// `f(i)` per sample, shaped `[B, 1, …, 1]`. Coefficients derived from the tables are
    /// computed in f32 from the f32 table entries, as the reference computes them on its
    /// gathered tensors (e.g. √(1 − ᾱ) near t = 0, where that cancellation dominates).
    pub(crate) fn coef<const D: usize>(&self, f: impl Fn(usize) -> f32) -> Tensor<D> {
        per_sample(self.idx.iter().map(|&i| f(i)).collect(), &self.device)
    }

    /// `x · f(t)` per sample: a scalar multiply when the whole batch is at one index (the
    /// loops' case), a broadcast one otherwise.
    pub(crate) fn mul<const D: usize>(&self, x: Tensor<D>, f: impl Fn(usize) -> f32) -> Tensor<D> {
        match self.uniform() {
            Some(i) => x.mul_scalar(f(i)),
            None => x * self.coef::<D>(f),
        }
    }

    /// `x / f(t)` per sample, like [`Self::mul`].
    pub(crate) fn div<const D: usize>(&self, x: Tensor<D>, f: impl Fn(usize) -> f32) -> Tensor<D> {
        match self.uniform() {
            Some(i) => x.div_scalar(f(i)),
            None => x / self.coef::<D>(f),
        }
    }

    fn uniform(&self) -> Option<usize> {
        let first = *self.idx.first()?;
        self.idx.iter().all(|&i| i == first).then_some(first)
    }

    /// Adds `scale(noise)` to `mean` for the samples where `zero(i)` is false (the reference's
    /// `nonzero_mask`); needs the noise only if such a sample exists.
    fn add_noise<const D: usize>(
        &self,
        step: &'static str,
        mean: Tensor<D>,
        scale: impl FnOnce(Tensor<D>) -> Tensor<D>,
        noise: Option<Tensor<D>>,
        zero: impl Fn(usize) -> bool,
    ) -> Result<Tensor<D>> {
        let keep: Vec<bool> = self.idx.iter().map(|&i| !zero(i)).collect();
        if !keep.iter().any(|&k| k) {
            return Ok(mean);
        }
        let noise = noise.ok_or(SampleError::MissingNoise { step })?;
        same_shape("the noise", &noise, mean.dims())?;
        let shifted = scale(noise);
        if keep.iter().all(|&k| k) {
            Ok(mean + shifted)
        } else {
            let mask: Tensor<D> =
                per_sample(keep.iter().map(|&k| f32::from(u8::from(k))).collect(), &self.device);
            Ok(mean + shifted * mask)
        }
    }
}

/// Shape `[B, 1, …, 1]` for per-sample scalars against data of rank D.
pub(crate) fn per_sample<const D: usize>(v: Vec<f32>, device: &Device) -> Tensor<D> {
    let b = v.len();
    let mut shape = [1usize; D];
    shape[0] = b;
    Tensor::<1>::from_floats(v.as_slice(), device).reshape(shape)
}

fn same_shape<const D: usize>(what: &'static str, t: &Tensor<D>, expected: [usize; D]) -> Result<()> {
    if t.dims() == expected {
        Ok(())
    } else {
        Err(SampleError::Shape { what, got: t.dims().to_vec(), expected: expected.to_vec() })
    }
}

/// The network output must have x's shape, with twice the channels for a learned variance.
pub(crate) fn check_output<const D: usize>(
    d: &GaussianDiffusion,
    x: &Tensor<D>,
    out: &Tensor<D>,
) -> Result<()> {
    let mut expected = x.dims();
    if D >= 2 {
        expected[1] = d.model_output_channels(expected[1]);
    }
    same_shape("the model output", out, expected)
}

/// The network's output at `(x, t)`: `model` is fed the model timesteps of `t` (the original
/// step through the respacing map, ×1000/T when the process rescales them), as the reference's
/// wrapped model is.
pub fn model_output<const D: usize>(
    d: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    x: Tensor<D>,
    t: impl Into<Timesteps>,
) -> Result<Tensor<D>> {
    let at = At::new(d, &x, t)?;
    let out = model.denoise(x.clone(), d.model_timesteps(at.t));
    check_output(d, &x, &out)?;
    Ok(out)
}

/// The guidance gradient at `(x, t)`, the guidance being called with the model timesteps of `t`
/// (as guided-diffusion's wrapped `cond_fn`).
pub fn guidance_gradient<const D: usize>(
    d: &GaussianDiffusion,
    guidance: &dyn Guidance<D>,
    x: Tensor<D>,
    t: impl Into<Timesteps>,
) -> Result<Tensor<D>> {
    let at = At::new(d, &x, t)?;
    let dims = x.dims();
    let g = guidance.gradient(x, d.model_timesteps(at.t));
    same_shape("the guidance gradient", &g, dims)?;
    Ok(g)
}

/// p_θ(x_{t−1}∣x_t) from the network output: [`GaussianDiffusion::p_mean_variance`] with the
/// shapes and timesteps checked.
pub fn p_mean_variance<const D: usize>(
    d: &GaussianDiffusion,
    x: Tensor<D>,
    t: impl Into<Timesteps>,
    model_output: Tensor<D>,
    clip_denoised: bool,
) -> Result<PMeanVariance<D>> {
    let at = At::new(d, &x, t)?;
    check_output(d, &x, &model_output)?;
    Ok(d.p_mean_variance(model_output, x, at.t, clip_denoised))
}

/// Classifier guidance on the mean (guided-diffusion's `condition_mean`): μ + Σ g, where `grad`
/// is the guidance gradient at (x_t, t) (scale included). Valid at every t, including 0.
pub fn condition_mean<const D: usize>(p: &PMeanVariance<D>, grad: Tensor<D>) -> Result<Tensor<D>> {
    same_shape("the guidance gradient", &grad, p.mean.dims())?;
    Ok(p.mean.clone() + p.variance.clone() * grad)
}

/// Classifier guidance on the score (guided-diffusion's `condition_score`): ε' = ε̂ − √(1−ᾱ_t) g
/// with ε̂ from `p`'s x̂_0, then x̂_0 from ε' (not clipped again) and the posterior mean of that
/// x̂_0; the variance is unchanged. Valid at every t, including 0.
pub fn condition_score<const D: usize>(
    d: &GaussianDiffusion,
    p: &PMeanVariance<D>,
    x: Tensor<D>,
    t: impl Into<Timesteps>,
    grad: Tensor<D>,
) -> Result<PMeanVariance<D>> {
    let at = At::new(d, &x, t)?;
    condition_score_at(d, p, x, &at, grad)
}

fn condition_score_at<const D: usize>(
    d: &GaussianDiffusion,
    p: &PMeanVariance<D>,
    x: Tensor<D>,
    at: &At,
    grad: Tensor<D>,
) -> Result<PMeanVariance<D>> {
    same_shape("p's x̂_0", &p.pred_x0, x.dims())?;
    same_shape("the guidance gradient", &grad, x.dims())?;
    let ab = &d.tables().alphas_cumprod;
    let eps = d.predict_eps_from_x0(x.clone(), at.t.clone(), p.pred_x0.clone())
        - at.mul(grad, |i| (1.0 - ab[i] as f32).sqrt());
    let pred_x0 = if d.has_zero_terminal_snr() {
        // Where ᾱ = 0, x_t is pure noise and x̂_0 cannot be read from ε̂: x̂_0 stays the
        // network's, so guidance does nothing at that step (as it should: x_T carries no
        // information about y, ∇ log p(y∣x_T) = 0) and acts from the next step on.
        let tb = d.tables();
        let zero = |i: usize| ab[i] == 0.0;
        let coef = |table: &[f64], i: usize| if zero(i) { 0.0 } else { table[i] as f32 };
        at.mul(x.clone(), |i| coef(&tb.sqrt_recip_alphas_cumprod, i))
            - at.mul(eps, |i| coef(&tb.sqrt_recipm1_alphas_cumprod, i))
            + at.mul(p.pred_x0.clone(), |i| if zero(i) { 1.0 } else { 0.0 })
    } else {
        d.predict_x0_from_eps(x.clone(), at.t.clone(), eps)
    };
    let mean = d.q_posterior_mean_variance(pred_x0.clone(), x, at.t.clone()).mean;
    Ok(PMeanVariance { mean, variance: p.variance.clone(), log_variance: p.log_variance.clone(), pred_x0 })
}

/// ε̂ and x̂_0 from the network output at (x, t), with [`condition_score`] applied when
/// `options.guidance` is set.
pub fn predict<const D: usize>(
    d: &GaussianDiffusion,
    x: Tensor<D>,
    t: impl Into<Timesteps>,
    model_output: Tensor<D>,
    options: &StepOptions<'_, D>,
) -> Result<Prediction<D>> {
    let at = At::new(d, &x, t)?;
    predict_at(d, x, &at, model_output, options)
}

fn predict_at<const D: usize>(
    d: &GaussianDiffusion,
    x: Tensor<D>,
    at: &At,
    model_output: Tensor<D>,
    options: &StepOptions<'_, D>,
) -> Result<Prediction<D>> {
    check_output(d, &x, &model_output)?;
    let mut p = d.p_mean_variance(model_output, x.clone(), at.t.clone(), options.clip_denoised);
    if let Some(g) = options.guidance {
        let grad = g.gradient(x.clone(), d.model_timesteps(at.t.clone()));
        p = condition_score_at(d, &p, x.clone(), at, grad)?;
    }
    let eps = d.predict_eps_from_x0(x, at.t.clone(), p.pred_x0.clone());
    Ok(Prediction { eps, pred_x0: p.pred_x0.clone(), p })
}

/// One ancestral step x_t → x_{t−1} (improved-diffusion's `p_sample`; guided-diffusion's with a
/// `cond_fn` when `options.guidance` is set): x_{t−1} = μ + exp(½ log Σ) z for samples with
/// t > 0, μ at t = 0. `noise` may be `None` only when every sample is at t = 0.
pub fn ancestral_step<const D: usize>(
    d: &GaussianDiffusion,
    x: Tensor<D>,
    t: impl Into<Timesteps>,
    model_output: Tensor<D>,
    noise: Option<Tensor<D>>,
    options: &StepOptions<'_, D>,
) -> Result<AncestralStep<D>> {
    let at = At::new(d, &x, t)?;
    check_output(d, &x, &model_output)?;
    let p = d.p_mean_variance(model_output, x.clone(), at.t.clone(), options.clip_denoised);
    let mean = match options.guidance {
        Some(g) => condition_mean(&p, g.gradient(x, d.model_timesteps(at.t.clone())))?,
        None => p.mean,
    };
    let std = p.log_variance.clone().mul_scalar(0.5).exp();
    let sample = at.add_noise("ancestral_step", mean.clone(), |z| std * z, noise, |i| i == 0)?;
    Ok(AncestralStep { sample, pred_x0: p.pred_x0, mean, variance: p.variance, log_variance: p.log_variance })
}

/// DDIM's σ_t for η (Song et al. 2021, Eq. 16): η √((1−ᾱ_{t−1})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}),
/// in f32 from the f32 table entries, as [`ddim_step`] uses it (and the reference computes it).
pub fn ddim_sigma(d: &GaussianDiffusion, t: usize, eta: f64) -> f32 {
    let tb = d.tables();
    let (ab, ab_prev) = (tb.alphas_cumprod[t] as f32, tb.alphas_cumprod_prev[t] as f32);
    eta as f32 * ((1.0 - ab_prev) / (1.0 - ab)).sqrt() * (1.0 - ab / ab_prev).sqrt()
}

/// Whether the DDIM step at `t` adds noise (σ_t > 0, t > 0): the step and the loops ask this.
pub(crate) fn ddim_adds_noise(d: &GaussianDiffusion, t: usize, eta: f64) -> bool {
    t > 0 && ddim_sigma(d, t, eta) > 0.0
}

fn check_eta(eta: f64) -> Result<()> {
    if eta.is_finite() && eta >= 0.0 {
        Ok(())
    } else {
        Err(SampleError::InvalidOption(format!("DDIM's η must be a finite number ≥ 0, got {eta}")))
    }
}

/// One DDIM step x_t → x_{t−1} with η (improved-diffusion's `ddim_sample`; guided-diffusion's
/// with `condition_score` when `options.guidance` is set). `noise` is needed only where σ_t > 0
/// (η > 0 and t > 0).
pub fn ddim_step<const D: usize>(
    d: &GaussianDiffusion,
    x: Tensor<D>,
    t: impl Into<Timesteps>,
    model_output: Tensor<D>,
    eta: f64,
    noise: Option<Tensor<D>>,
    options: &StepOptions<'_, D>,
) -> Result<DdimStep<D>> {
    check_eta(eta)?;
    let at = At::new(d, &x, t)?;
    let pred = predict_at(d, x, &at, model_output, options)?;
    let abp = &d.tables().alphas_cumprod_prev;
    let sigma = |i: usize| ddim_sigma(d, i, eta);
    let mean = at.mul(pred.pred_x0.clone(), |i| (abp[i] as f32).sqrt())
        + at.mul(pred.eps.clone(), |i| (1.0 - abp[i] as f32 - sigma(i).powi(2)).max(0.0).sqrt());
    let sample =
        at.add_noise("ddim_step", mean, |z| at.mul(z, sigma), noise, |i| !ddim_adds_noise(d, i, eta))?;
    Ok(DdimStep { sample, pred_x0: pred.pred_x0, eps: pred.eps })
}

/// The reference's DDIM reverse step x_t → x_{t+1} (improved-diffusion's `ddim_reverse_sample`,
/// η = 0): ε̂ and x̂_0 at (x_t, t), then √ᾱ_{t+1} x̂_0 + √(1 − ᾱ_{t+1}) ε̂ (ᾱ_T = 0 past the last
/// step, so the last index returns ε̂).
pub fn ddim_reverse_step<const D: usize>(
    d: &GaussianDiffusion,
    x: Tensor<D>,
    t: impl Into<Timesteps>,
    model_output: Tensor<D>,
    clip_denoised: bool,
) -> Result<DdimStep<D>> {
    let at = At::new(d, &x, t)?;
    let options = StepOptions { clip_denoised, guidance: None };
    let pred = predict_at(d, x, &at, model_output, &options)?;
    let abn = &d.tables().alphas_cumprod_next;
    let sample = at.mul(pred.pred_x0.clone(), |i| (abn[i] as f32).sqrt())
        + at.mul(pred.eps.clone(), |i| (1.0 - abn[i] as f32).sqrt());
    Ok(DdimStep { sample, pred_x0: pred.pred_x0, eps: pred.eps })
}

/// One step of exact DDIM inversion, from x at level t − 1 (x_0 for t = 0) to level t: ε̂ is the
/// network's at (x, t), x̂_0 = (x − √(1 − ᾱ_{t−1}) ε̂)/√ᾱ_{t−1} (ᾱ_{−1} = 1), and
/// x_t = √ᾱ_t x̂_0 + √(1 − ᾱ_t) ε̂ — the η = 0 step solved for its input, up to evaluating ε̂ one
/// level early. Chained over t = 0, …, T−1 this ends where sampling starts (see
/// [`crate::ddim_reverse_loop`]), unlike [`ddim_reverse_step`], which ends past it at ᾱ = 0.
pub fn ddim_inversion_step<const D: usize>(
    d: &GaussianDiffusion,
    x: Tensor<D>,
    t: impl Into<Timesteps>,
    model_output: Tensor<D>,
) -> Result<DdimStep<D>> {
    let at = At::new(d, &x, t)?;
    let options = StepOptions { clip_denoised: false, guidance: None };
    let pred = predict_at(d, x.clone(), &at, model_output, &options)?;
    let tb = d.tables();
    let (ab, abp) = (&tb.alphas_cumprod, &tb.alphas_cumprod_prev);
    let x0_hat =
        at.div(x - at.mul(pred.eps.clone(), |i| (1.0 - abp[i] as f32).sqrt()), |i| (abp[i] as f32).sqrt());
    let sample = at.mul(x0_hat.clone(), |i| (ab[i] as f32).sqrt())
        + at.mul(pred.eps.clone(), |i| (1.0 - ab[i] as f32).sqrt());
    Ok(DdimStep { sample, pred_x0: x0_hat, eps: pred.eps })
}

/// ∇_x log q_t(x) ≈ −ε̂/√(1−ᾱ_t) from the network at (x, t), plus the guidance gradient when
/// `options.guidance` is set (ε̂ from the possibly clipped x̂_0, as the DDIM step forms it).
pub fn score<const D: usize>(
    d: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    x: Tensor<D>,
    t: impl Into<Timesteps>,
    options: &StepOptions<'_, D>,
) -> Result<Tensor<D>> {
    let at = At::new(d, &x, t)?;
    score_at(d, model, x, &at, options)
}

fn score_at<const D: usize>(
    d: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    x: Tensor<D>,
    at: &At,
    options: &StepOptions<'_, D>,
) -> Result<Tensor<D>> {
    let mt = d.model_timesteps(at.t.clone());
    let out = model.denoise(x.clone(), mt.clone());
    let unguided = StepOptions { clip_denoised: options.clip_denoised, guidance: None };
    let pred = predict_at(d, x.clone(), at, out, &unguided)?;
    let ab = &d.tables().alphas_cumprod;
    let s = at.div(pred.eps, |i| -(1.0 - ab[i] as f32).sqrt());
    Ok(match options.guidance {
        Some(g) => {
            let dims = x.dims();
            let grad = g.gradient(x, mt);
            same_shape("the guidance gradient", &grad, dims)?;
            s + grad
        }
        None => s,
    })
}

/// One step of annealed Langevin dynamics (Song & Ermon 2019, Alg. 1) at level t, on the
/// variance-exploding variable y = x/√ᾱ_t (y = x_0 + σ_t n, σ_t² = (1 − ᾱ_t)/ᾱ_t, whose score is
/// √ᾱ_t ∇_x log q_t(x)): y ← y + (α/2) ∇_y log q_t(y) + √α z with α = ε σ_t²/σ_min² (ε =
/// `step_scale`, σ_min the level of index 0). The network is evaluated at x = √ᾱ_t y.
pub fn langevin_step<const D: usize>(
    d: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    y: Tensor<D>,
    t: impl Into<Timesteps>,
    step_scale: f64,
    noise: Tensor<D>,
    options: &StepOptions<'_, D>,
) -> Result<LangevinStep<D>> {
    if !(step_scale.is_finite() && step_scale > 0.0) {
        return Err(SampleError::InvalidOption(format!(
            "the Langevin step scale must be > 0, got {step_scale}"
        )));
    }
    if d.has_zero_terminal_snr() {
        return Err(zero_snr_refused("annealed Langevin dynamics"));
    }
    let at = At::new(d, &y, t)?;
    same_shape("the noise", &noise, y.dims())?;
    let ab = &d.tables().alphas_cumprod;
    let ve = |a: f64| (1.0 - a) / a;
    let alpha = |i: usize| step_scale * ve(ab[i]) / ve(ab[0]);
    let sqrt_ab = |i: usize| ab[i].sqrt() as f32;
    let score = score_at(d, model, at.mul(y.clone(), sqrt_ab), &at, options)?;
    let sample = y
        + at.mul(at.mul(score.clone(), sqrt_ab), |i| (alpha(i) / 2.0) as f32)
        + at.mul(noise, |i| alpha(i).sqrt() as f32);
    Ok(LangevinStep { sample, score })
}

/// The error of a sampler that needs a finite σ at every level on a zero-terminal-SNR process.
pub(crate) fn zero_snr_refused(what: &str) -> SampleError {
    SampleError::InvalidOption(format!(
        "{what} needs a finite noise level σ_t = √((1 − ᾱ_t)/ᾱ_t) at every step, but this process has zero \
         terminal SNR (ᾱ_T = 0, σ_T = ∞): use ddpm, ddim, pc, dpm++2m, dpm++3m, sde-dpm++2m, unipc, euler, euler-a \
         or heun"
    ))
}

/// Per-sample Euclidean norms.
pub(crate) fn norms<const D: usize>(x: &Tensor<D>) -> Vec<f32> {
    let b = x.dims()[0];
    let sq: Tensor<2> = x.clone().square().reshape([b as i32, -1]).sum_dim(1);
    sq.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
        .into_iter()
        .map(f32::sqrt)
        .collect()
}

/// One Langevin corrector step at level t (Song et al. 2021, Alg. 5): with g = ∇log q_t(x) and
/// a = 1 − β_t, ς = 2a (r ‖z‖/‖g‖)² per sample (`snr` = r), x ← x + ς g + √(2ς) z.
pub fn corrector_step<const D: usize>(
    d: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    x: Tensor<D>,
    t: impl Into<Timesteps>,
    snr: f64,
    noise: Tensor<D>,
    options: &StepOptions<'_, D>,
) -> Result<Tensor<D>> {
    if !(snr.is_finite() && snr > 0.0) {
        return Err(SampleError::InvalidOption(format!(
            "the corrector's signal-to-noise ratio must be > 0, got {snr}"
        )));
    }
    let at = At::new(d, &x, t)?;
    same_shape("the noise", &noise, x.dims())?;
    let g = score_at(d, model, x.clone(), &at, options)?;
    let betas = &d.tables().betas;
    // Per-sample step sizes keep each sample's path independent of the batch; they stay on the
    // device (no read-back), as do the norms they come from.
    let b = x.dims()[0];
    let mut shape = [1i32; D];
    shape[0] = b as i32;
    let norm = |v: &Tensor<D>| -> Tensor<D> {
        v.clone().square().reshape([b as i32, -1]).sum_dim(1).sqrt().reshape(shape)
    };
    let ratio = norm(&noise) / norm(&g).clamp_min(1e-12);
    let step = at.mul(ratio.square(), |i| (2.0 * (1.0 - betas[i]) * snr * snr) as f32);
    Ok(x + g * step.clone() + noise * step.mul_scalar(2.0).sqrt())
}

/// One predictor-corrector step x_t → x_{t−1}: `noise.corrector.len()` [`corrector_step`]s at
/// level t, then the predictor ([`ancestral_step`] or [`ddim_step`]) from the corrected x.
#[allow(clippy::too_many_arguments)]
pub fn predictor_corrector_step<const D: usize>(
    d: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    x: Tensor<D>,
    t: impl Into<Timesteps>,
    predictor: Predictor,
    snr: f64,
    noise: PcNoise<D>,
    options: &StepOptions<'_, D>,
) -> Result<PcStep<D>> {
    let t: Timesteps = t.into();
    let mut x = x;
    for z in noise.corrector {
        x = corrector_step(d, model, x, t.clone(), snr, z, options)?;
    }
    let out = model_output(d, model, x.clone(), t.clone())?;
    Ok(match predictor {
        Predictor::Ddpm => {
            let s = ancestral_step(d, x, t, out, noise.predictor, options)?;
            PcStep { sample: s.sample, pred_x0: s.pred_x0 }
        }
        Predictor::Ddim { eta } => {
            let s = ddim_step(d, x, t, out, eta, noise.predictor, options)?;
            PcStep { sample: s.sample, pred_x0: s.pred_x0 }
        }
    })
}
