//! The sampling loop and its steps.
//!
//! | method | update (t → t−1), with x̂_0 and ε̂ from the network | source |
//! |---|---|---|
//! | [`Method::Ddpm`] | x ← μ_θ(x_t, t) + σ_t z (σ from the process's variance choice) | Ho et al. 2020, Alg. 2 |
//! | [`Method::Ddim`] | x ← √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ²) ε̂ + σ z, σ = η √((1−ᾱ_{t−1})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}) | Song et al. 2021, Eq. 12 |
//! | [`Method::Langevin`] | on y = x/√ᾱ_t (the variance-exploding form, σ_t² = (1−ᾱ_t)/ᾱ_t): K steps y ← y + (α_t/2) ∇log q_t(y) + √α_t z per level, α_t = ε σ_t²/σ_min², ∇_x log q_t = −ε̂/√(1−ᾱ_t) | Song & Ermon 2019, Alg. 1 |
//! | [`Method::PredictorCorrector`] | K Langevin corrector steps with step 2 α_t (r ‖z‖/‖s‖)², then a DDPM or DDIM predictor | Song et al. 2021 (SDE), Alg. 5 |
//!
//! Classifier guidance (Dhariwal & Nichol 2021, Alg. 1 and 2): for ancestral steps the mean moves
//! by Σ ∇log p(y|x_t); for DDIM the noise estimate becomes ε̂ − √(1−ᾱ_t) ∇log p(y|x_t). The
//! [`Guidance`] returns the gradient already multiplied by the guidance scale.

use burn::tensor::{Device, Int, Tensor};
use diffusion_core::GaussianDiffusion;

use crate::noise::{INITIAL_STEP, NoiseSource};

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

/// s · ∇_x log p(y | x_t): the guidance gradient, scale included.
pub trait Guidance<const D: usize> {
    /// The gradient at `x` for model timesteps `t`.
    fn gradient(&self, x: Tensor<D>, t: Tensor<1>) -> Tensor<D>;
}

impl<const D: usize, F: Fn(Tensor<D>, Tensor<1>) -> Tensor<D>> Guidance<D> for F {
    fn gradient(&self, x: Tensor<D>, t: Tensor<1>) -> Tensor<D> {
        self(x, t)
    }
}

/// The predictor of a predictor-corrector sampler.
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

/// A sampling algorithm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Ancestral sampling.
    Ddpm,
    /// DDIM; η = 0 is deterministic, η = 1 matches DDPM's fixed-small variance.
    Ddim {
        /// η.
        eta: f64,
    },
    /// Annealed Langevin dynamics over the noise levels (NCSN style).
    Langevin {
        /// Langevin steps per level.
        steps_per_level: usize,
        /// ε: the step size is ε σ_t² / σ_min² (σ in the variance-exploding form; stable for
        /// ε < 4 σ_min², and the stationary variance is inflated by 1/(1 − ε/(4σ_min²))).
        step_scale: f64,
    },
    /// Predictor-corrector.
    PredictorCorrector {
        /// The predictor.
        predictor: Predictor,
        /// Langevin corrector steps per level.
        corrector_steps: usize,
        /// Signal-to-noise ratio r of the step-size rule.
        snr: f64,
    },
}

/// Options of [`sample`].
#[derive(Debug, Clone, PartialEq)]
pub struct SampleOptions {
    /// Clip x̂_0 to [−1, 1] (for data in that range).
    pub clip_denoised: bool,
    /// Keep x_t and x̂_0 every this many steps.
    pub record_every: Option<usize>,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self { clip_denoised: true, record_every: None }
    }
}

/// What [`sample`] returns.
#[derive(Debug, Clone)]
pub struct SampleOutput<const D: usize> {
    /// The final samples.
    pub sample: Tensor<D>,
    /// `(t, x_t)` every `record_every` steps.
    pub trajectory: Vec<(usize, Tensor<D>)>,
    /// `(t, x̂_0)` every `record_every` steps.
    pub pred_x0: Vec<(usize, Tensor<D>)>,
}

/// Shape `[B, 1, …, 1]` for per-sample scalars against data of rank D.
fn per_sample<const D: usize>(v: Vec<f32>, device: &Device) -> Tensor<D> {
    let b = v.len();
    let mut shape = [1usize; D];
    shape[0] = b;
    Tensor::<1>::from_floats(v.as_slice(), device).reshape(shape)
}

/// Per-sample Euclidean norms.
fn norms<const D: usize>(x: &Tensor<D>) -> Vec<f32> {
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

struct Ctx<'a, const D: usize> {
    diffusion: &'a GaussianDiffusion,
    model: &'a dyn Denoiser<D>,
    guidance: Option<&'a dyn Guidance<D>>,
    noise: &'a NoiseSource,
    ids: &'a [u64],
    item: [usize; D],
    clip: bool,
    device: &'a Device,
}

impl<const D: usize> Ctx<'_, D> {
    fn t(&self, i: usize) -> Tensor<1, Int> {
        Tensor::<1, Int>::full([self.ids.len()], i as i64, self.device)
    }

    fn z(&self, step: u64) -> Tensor<D> {
        self.noise.batch(self.ids, step, self.item, self.device)
    }

    /// ε̂ at level i (from whatever the network predicts), with the DDIM score shift of guidance.
    fn eps(&self, x: Tensor<D>, i: usize, guided: bool) -> (Tensor<D>, Tensor<D>) {
        let t = self.t(i);
        let mt = self.diffusion.model_timesteps(t.clone());
        let out = self.model.denoise(x.clone(), mt.clone());
        let pmv = self.diffusion.p_mean_variance(out, x.clone(), t.clone(), self.clip);
        let mut pred_x0 = pmv.pred_x0;
        let mut eps = self.diffusion.predict_eps_from_x0(x.clone(), t.clone(), pred_x0.clone());
        if guided && let Some(g) = self.guidance {
            let s = (1.0 - self.diffusion.tables().alphas_cumprod[i]).sqrt();
            eps = eps - g.gradient(x.clone(), mt).mul_scalar(s);
            pred_x0 = self.diffusion.predict_x0_from_eps(x, t, eps.clone());
        }
        (eps, pred_x0)
    }

    fn ddpm(&self, x: Tensor<D>, i: usize, step: u64) -> (Tensor<D>, Tensor<D>) {
        let t = self.t(i);
        let mt = self.diffusion.model_timesteps(t.clone());
        let out = self.model.denoise(x.clone(), mt.clone());
        let pmv = self.diffusion.p_mean_variance(out, x.clone(), t, self.clip);
        let mut mean = pmv.mean;
        if let Some(g) = self.guidance {
            mean = mean + pmv.variance * g.gradient(x, mt);
        }
        let next = if i > 0 { mean + pmv.log_variance.mul_scalar(0.5).exp() * self.z(step) } else { mean };
        (next, pmv.pred_x0)
    }

    fn ddim(&self, x: Tensor<D>, i: usize, eta: f64, step: u64) -> (Tensor<D>, Tensor<D>) {
        let (_, pred_x0) = self.eps(x.clone(), i, true);
        let eps = self.diffusion.predict_eps_from_x0(x, self.t(i), pred_x0.clone());
        let tb = self.diffusion.tables();
        let (ab, ab_prev) = (tb.alphas_cumprod[i], tb.alphas_cumprod_prev[i]);
        let sigma = eta * ((1.0 - ab_prev) / (1.0 - ab)).sqrt() * (1.0 - ab / ab_prev).sqrt();
        let mean = pred_x0.clone().mul_scalar(ab_prev.sqrt())
            + eps.mul_scalar((1.0 - ab_prev - sigma * sigma).max(0.0).sqrt());
        let next = if i > 0 && sigma > 0.0 { mean + self.z(step).mul_scalar(sigma) } else { mean };
        (next, pred_x0)
    }

    /// The score −ε̂/√(1−ᾱ_t), plus the guidance gradient.
    fn score(&self, x: Tensor<D>, i: usize) -> Tensor<D> {
        let (eps, _) = self.eps(x.clone(), i, false);
        let s = eps.div_scalar(-(1.0 - self.diffusion.tables().alphas_cumprod[i]).sqrt());
        match self.guidance {
            Some(g) => s + g.gradient(x, self.diffusion.model_timesteps(self.t(i))),
            None => s,
        }
    }
}

fn step_id(i: usize, j: usize) -> u64 {
    ((i as u64) << 20) | j as u64
}

/// Draws samples `ids` (each of shape `item`, whose first entry is 1) from the process, starting
/// from `x_init` or, by default, from noise drawn for `(seed, id)`.
///
/// # Shapes
/// `item: [1, …]`; the output is `[ids.len(), …]`.
#[allow(clippy::too_many_arguments)]
pub fn sample<const D: usize>(
    diffusion: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    ids: &[u64],
    item: [usize; D],
    noise: &NoiseSource,
    method: Method,
    options: &SampleOptions,
    guidance: Option<&dyn Guidance<D>>,
    device: &Device,
) -> SampleOutput<D> {
    sample_from(diffusion, model, ids, item, noise, method, options, guidance, None, device)
}

/// [`sample`] from a given x_T (e.g. the output of [`ddim_reverse_loop`]).
#[allow(clippy::too_many_arguments)]
pub fn sample_from<const D: usize>(
    diffusion: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    ids: &[u64],
    item: [usize; D],
    noise: &NoiseSource,
    method: Method,
    options: &SampleOptions,
    guidance: Option<&dyn Guidance<D>>,
    x_init: Option<Tensor<D>>,
    device: &Device,
) -> SampleOutput<D> {
    let ctx = Ctx { diffusion, model, guidance, noise, ids, item, clip: options.clip_denoised, device };
    let mut x = x_init.unwrap_or_else(|| ctx.z(INITIAL_STEP));
    let num_t = diffusion.num_timesteps();
    let tb = diffusion.tables();
    let mut out = SampleOutput { sample: x.clone(), trajectory: Vec::new(), pred_x0: Vec::new() };
    for (k, i) in (0..num_t).rev().enumerate() {
        let pred_x0 = match method {
            Method::Ddpm => {
                let (nx, p) = ctx.ddpm(x, i, step_id(i, 0));
                x = nx;
                p
            }
            Method::Ddim { eta } => {
                let (nx, p) = ctx.ddim(x, i, eta, step_id(i, 0));
                x = nx;
                p
            }
            Method::Langevin { steps_per_level, step_scale } => {
                // NCSN runs on the variance-exploding variable y = x/√ᾱ_t = x_0 + σ_t n with
                // σ_t² = (1 − ᾱ_t)/ᾱ_t, whose score is √ᾱ_t ∇_x log q_t(x); there the same y
                // carries over from level to level.
                let ab = tb.alphas_cumprod[i];
                let ve = |a: f64| (1.0 - a) / a;
                let alpha = step_scale * ve(ab) / ve(tb.alphas_cumprod[0]);
                if i == num_t - 1 {
                    x = x.div_scalar(ab.sqrt());
                }
                for j in 0..steps_per_level {
                    let score_y = ctx.score(x.clone().mul_scalar(ab.sqrt()), i).mul_scalar(ab.sqrt());
                    x = x + score_y.mul_scalar(alpha / 2.0) + ctx.z(step_id(i, j)).mul_scalar(alpha.sqrt());
                }
                let (_, p) = ctx.eps(x.clone().mul_scalar(ab.sqrt()), i, true);
                if i == 0 {
                    // Finish with the denoised estimate (Tweedie), as NCSN++'s `denoise`.
                    x = p.clone();
                }
                p
            }
            Method::PredictorCorrector { predictor, corrector_steps, snr } => {
                let a = 1.0 - tb.betas[i];
                for j in 0..corrector_steps {
                    let g = ctx.score(x.clone(), i);
                    let z = ctx.z(step_id(i, j + 1));
                    // Per-sample step sizes keep each sample's path independent of the batch.
                    let steps: Vec<f32> = norms(&g)
                        .into_iter()
                        .zip(norms(&z))
                        .map(|(gn, zn)| {
                            (2.0 * a * (snr * f64::from(zn) / f64::from(gn).max(1e-12)).powi(2)) as f32
                        })
                        .collect();
                    let step: Tensor<D> = per_sample(steps, device);
                    x = x + g * step.clone() + z * step.mul_scalar(2.0).sqrt();
                }
                let (nx, p) = match predictor {
                    Predictor::Ddpm => ctx.ddpm(x, i, step_id(i, 0)),
                    Predictor::Ddim { eta } => ctx.ddim(x, i, eta, step_id(i, 0)),
                };
                x = nx;
                p
            }
        };
        if let Some(every) = options.record_every
            && (k % every.max(1) == 0 || i == 0)
        {
            out.trajectory.push((i, x.clone()));
            out.pred_x0.push((i, pred_x0));
        }
    }
    out.sample = x;
    out
}

/// DDIM inversion (η = 0 run backwards, x_0 → x_{T−1}): for i = 0, 1, …, T−1,
/// ε̂ = ε_θ(x, i), x̂_0 = (x − √(1 − ᾱ_{i−1}) ε̂)/√ᾱ_{i−1}, x ← √ᾱ_i x̂_0 + √(1 − ᾱ_i) ε̂
/// (ᾱ_{−1} = 1), the exact inverse of the η = 0 sampler up to evaluating ε̂ one level early.
///
/// improved-diffusion's `ddim_reverse_sample` instead maps to ᾱ_{i+1} and ends at ᾱ = 0 (pure
/// ε̂), one level past where sampling starts; ending at level T − 1 is what makes
/// `sample_from(…, ddim_reverse_loop(x_0))` reproduce x_0.
///
/// # Shapes
/// `x0: [B, …]` → `[B, …]`.
pub fn ddim_reverse_loop<const D: usize>(
    diffusion: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    x0: Tensor<D>,
) -> Tensor<D> {
    let b = x0.dims()[0];
    let device = x0.device();
    let tb = diffusion.tables();
    let mut x = x0;
    for i in 0..diffusion.num_timesteps() {
        let t = Tensor::<1, Int>::full([b], i as i64, &device);
        let out = model.denoise(x.clone(), diffusion.model_timesteps(t.clone()));
        // ε̂ from the network output, whatever it parameterises (x̂_0 from the current x at level i).
        let pmv = diffusion.p_mean_variance(out, x.clone(), t.clone(), false);
        let eps = diffusion.predict_eps_from_x0(x.clone(), t, pmv.pred_x0);
        let (ab, ab_prev) = (tb.alphas_cumprod[i], tb.alphas_cumprod_prev[i]);
        let x0_hat = (x - eps.clone().mul_scalar((1.0 - ab_prev).sqrt())).div_scalar(ab_prev.sqrt());
        x = x0_hat.mul_scalar(ab.sqrt()) + eps.mul_scalar((1.0 - ab).sqrt());
    }
    x
}

/// Spherical interpolation between latents, per sample: θ = ∠(a, b),
/// slerp = sin((1−α)θ)/sin θ · a + sin(αθ)/sin θ · b (linear when a ∥ b).
///
/// # Shapes
/// `a, b: [B, …]` → `[B, …]`.
pub fn slerp<const D: usize>(a: Tensor<D>, b: Tensor<D>, alpha: f64) -> Tensor<D> {
    let device = a.device();
    let n = a.dims()[0];
    let dots: Tensor<2> = (a.clone() * b.clone()).reshape([n as i32, -1]).sum_dim(1);
    let dots = dots.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
    let (na, nb) = (norms(&a), norms(&b));
    let (mut wa, mut wb) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for k in 0..n {
        let cos = (f64::from(dots[k]) / (f64::from(na[k]) * f64::from(nb[k])).max(1e-30)).clamp(-1.0, 1.0);
        let theta = cos.acos();
        if theta.sin().abs() < 1e-6 {
            wa.push((1.0 - alpha) as f32);
            wb.push(alpha as f32);
        } else {
            wa.push((((1.0 - alpha) * theta).sin() / theta.sin()) as f32);
            wb.push(((alpha * theta).sin() / theta.sin()) as f32);
        }
    }
    a * per_sample::<D>(wa, &device) + b * per_sample::<D>(wb, &device)
}
