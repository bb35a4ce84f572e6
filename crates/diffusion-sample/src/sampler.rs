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

use burn::tensor::{Device, Tensor};
use diffusion_core::GaussianDiffusion;

use crate::dpm_solver::{DpmAlgorithm, DpmSolver, DpmState};
use crate::error::{Result, SampleError};
use crate::noise::{INITIAL_STEP, NoiseSource};
pub use crate::step::{Denoiser, Guidance, Predictor};
use crate::step::{
    PcNoise, StepOptions, ancestral_step, ddim_adds_noise, ddim_inversion_step, ddim_step, langevin_step,
    model_output, norms, per_sample, predict, predictor_corrector_step,
};

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
    /// DPM-Solver++ multistep (orders 1–3) or SDE-DPM-Solver++ (orders 1–2) over the steps of
    /// the (respaced) process, as diffusers' `DPMSolverMultistepScheduler` (see
    /// [`crate::dpm_solver`]); the last step lands on σ = 0.
    DpmSolver {
        /// Solver order.
        order: usize,
        /// Deterministic or SDE.
        algorithm: DpmAlgorithm,
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

impl Method {
    /// Annealed Langevin with `steps_per_level` steps and the default step scale ε = 0.1 σ_min²
    /// (σ_min² = (1 − ᾱ_0)/ᾱ_0, the smallest level of `diffusion`; stable below 4 σ_min²).
    pub fn langevin(diffusion: &GaussianDiffusion, steps_per_level: usize) -> Self {
        let ab0 = diffusion.tables().alphas_cumprod[0];
        Method::Langevin { steps_per_level: steps_per_level.max(1), step_scale: 0.1 * (1.0 - ab0) / ab0 }
    }

    /// Network evaluations per level of the process.
    pub fn evaluations_per_level(&self) -> usize {
        match *self {
            Method::Ddpm | Method::Ddim { .. } | Method::DpmSolver { .. } => 1,
            Method::Langevin { steps_per_level, .. } => steps_per_level + 1,
            Method::PredictorCorrector { corrector_steps, .. } => corrector_steps + 1,
        }
    }
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

/// The noise key of inner step `j` at level `i` (j = 0: the predictor / the ancestral step).
pub fn step_key(i: usize, j: usize) -> u64 {
    ((i as u64) << 20) | j as u64
}

/// Where a sampling loop's noise comes from: x_T and the noise of inner step `j` at level `i`
/// (j = 0: the ancestral or predictor step; j ≥ 1: Langevin / corrector steps, `j − 1` for
/// Langevin's own steps as keyed by [`step_key`]).
pub trait LoopNoise<const D: usize> {
    /// x_T (used when no `x_init` is given).
    fn initial(&self) -> Tensor<D>;
    /// The noise for `key` = [`step_key`]`(i, j)`.
    fn step(&self, key: u64) -> Tensor<D>;
}

/// [`LoopNoise`] from a [`NoiseSource`]: sample `id`'s noise at each key.
#[derive(Debug, Clone)]
pub struct KeyedNoise<'a, const D: usize> {
    /// The source.
    pub source: &'a NoiseSource,
    /// The sample ids of the batch.
    pub ids: &'a [u64],
    /// One sample's shape, `[1, …]`.
    pub item: [usize; D],
    /// The device of the noise.
    pub device: &'a Device,
}

impl<const D: usize> LoopNoise<D> for KeyedNoise<'_, D> {
    fn initial(&self) -> Tensor<D> {
        self.source.batch(self.ids, INITIAL_STEP, self.item, self.device)
    }

    fn step(&self, key: u64) -> Tensor<D> {
        self.source.batch(self.ids, key, self.item, self.device)
    }
}

/// Draws samples `ids` (each of shape `item`, whose first entry is 1) from the process, starting
/// from noise drawn for `(seed, id)`.
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
) -> Result<SampleOutput<D>> {
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
) -> Result<SampleOutput<D>> {
    if ids.is_empty() {
        return Err(SampleError::InvalidOption("nothing to sample: no sample ids were given".into()));
    }
    if D < 1 || item[0] != 1 {
        return Err(SampleError::InvalidOption(format!("the item shape must be [1, …], got {item:?}")));
    }
    let keyed = KeyedNoise { source: noise, ids, item, device };
    let x = x_init.unwrap_or_else(|| keyed.initial());
    let mut expected = item;
    expected[0] = ids.len();
    if x.dims() != expected {
        return Err(SampleError::Shape { what: "x_T", got: x.dims().to_vec(), expected: expected.to_vec() });
    }
    sample_with(diffusion, model, x, &keyed, method, options, guidance)
}

/// The sampling loop from `x` (x at the last level), with the noise of every step from `noise`:
/// each level is one call of a [`crate::step`] function, whose noise is `noise.step(step_key(i,
/// j))` — drawn only where the step needs it.
pub fn sample_with<const D: usize>(
    diffusion: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    x: Tensor<D>,
    noise: &dyn LoopNoise<D>,
    method: Method,
    options: &SampleOptions,
    guidance: Option<&dyn Guidance<D>>,
) -> Result<SampleOutput<D>> {
    let dims = x.dims();
    let z = |key: u64| {
        let n = noise.step(key);
        if n.dims() == dims {
            Ok(n)
        } else {
            Err(SampleError::Shape {
                what: "the loop's noise",
                got: n.dims().to_vec(),
                expected: dims.to_vec(),
            })
        }
    };
    let mut x = x;
    let step_options = StepOptions { clip_denoised: options.clip_denoised, guidance };
    let num_t = diffusion.num_timesteps();
    let ab = &diffusion.tables().alphas_cumprod;
    let mut out = SampleOutput { sample: x.clone(), trajectory: Vec::new(), pred_x0: Vec::new() };
    // DPM-Solver++ over every step of this (respaced) process: ᾱ at a kept step is the
    // original's, so σ and the model timesteps are those of the original steps.
    let mut dpm = match method {
        Method::DpmSolver { .. } if guidance.is_some() => {
            return Err(SampleError::InvalidOption(
                "classifier guidance is not available with DPM-Solver++ (use ddpm, ddim, langevin or pc)"
                    .into(),
            ));
        }
        Method::DpmSolver { order, algorithm } => {
            let mut solver = DpmSolver::new(
                diffusion,
                (0..num_t).rev().collect(),
                order,
                algorithm,
                diffusion.config().mean,
            )?;
            solver.clip_denoised = options.clip_denoised;
            Some((solver, DpmState::default()))
        }
        _ => None,
    };
    for (k, i) in (0..num_t).rev().enumerate() {
        let pred_x0 = match method {
            Method::DpmSolver { algorithm, .. } => {
                let (solver, state) = dpm.as_mut().expect("built above for this method");
                let (eps_part, _) =
                    diffusion.split_model_output(model_output(diffusion, model, x.clone(), i)?);
                let noisy = algorithm == DpmAlgorithm::SdeDpmSolverPp && i > 0;
                let n = if noisy { Some(z(step_key(i, 0))?) } else { None };
                let s = solver.step(state, x, eps_part, n)?;
                x = s.sample;
                s.pred_x0
            }
            Method::Ddpm => {
                let m = model_output(diffusion, model, x.clone(), i)?;
                let n = if i > 0 { Some(z(step_key(i, 0))?) } else { None };
                let s = ancestral_step(diffusion, x, i, m, n, &step_options)?;
                x = s.sample;
                s.pred_x0
            }
            Method::Ddim { eta } => {
                let m = model_output(diffusion, model, x.clone(), i)?;
                let n = if ddim_adds_noise(diffusion, i, eta) { Some(z(step_key(i, 0))?) } else { None };
                let s = ddim_step(diffusion, x, i, m, eta, n, &step_options)?;
                x = s.sample;
                s.pred_x0
            }
            Method::Langevin { steps_per_level, step_scale } => {
                // NCSN runs on the variance-exploding variable y = x/√ᾱ_t, which carries over
                // from level to level unchanged.
                if i == num_t - 1 {
                    x = x.div_scalar(ab[i].sqrt());
                }
                for j in 0..steps_per_level {
                    x = langevin_step(diffusion, model, x, i, step_scale, z(step_key(i, j))?, &step_options)?
                        .sample;
                }
                let at_level = x.clone().mul_scalar(ab[i].sqrt());
                let m = model_output(diffusion, model, at_level.clone(), i)?;
                let p = predict(diffusion, at_level, i, m, &step_options)?.pred_x0;
                if i == 0 {
                    // Finish with the denoised estimate (Tweedie), as NCSN++'s `denoise`.
                    x = p.clone();
                }
                p
            }
            Method::PredictorCorrector { predictor, corrector_steps, snr } => {
                let needs = match predictor {
                    Predictor::Ddpm => i > 0,
                    Predictor::Ddim { eta } => ddim_adds_noise(diffusion, i, eta),
                };
                let pc_noise = PcNoise {
                    corrector: (0..corrector_steps).map(|j| z(step_key(i, j + 1))).collect::<Result<_>>()?,
                    predictor: if needs { Some(z(step_key(i, 0))?) } else { None },
                };
                let s = predictor_corrector_step(
                    diffusion,
                    model,
                    x,
                    i,
                    predictor,
                    snr,
                    pc_noise,
                    &step_options,
                )?;
                x = s.sample;
                s.pred_x0
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
    Ok(out)
}

/// DDIM inversion (η = 0 run backwards, x_0 → x_{T−1}): [`ddim_inversion_step`] for
/// i = 0, 1, …, T−1 — ε̂ = ε_θ(x, i), x̂_0 = (x − √(1 − ᾱ_{i−1}) ε̂)/√ᾱ_{i−1},
/// x ← √ᾱ_i x̂_0 + √(1 − ᾱ_i) ε̂ (ᾱ_{−1} = 1), the exact inverse of the η = 0 sampler up to
/// evaluating ε̂ one level early.
///
/// improved-diffusion's `ddim_reverse_sample` ([`crate::step::ddim_reverse_step`]) instead maps
/// to ᾱ_{i+1} and ends at ᾱ = 0 (pure ε̂), one level past where sampling starts; ending at level
/// T − 1 is what makes `sample_from(…, ddim_reverse_loop(x_0))` reproduce x_0.
///
/// # Shapes
/// `x0: [B, …]` → `[B, …]`.
pub fn ddim_reverse_loop<const D: usize>(
    diffusion: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    x0: Tensor<D>,
) -> Result<Tensor<D>> {
    let mut x = x0;
    for i in 0..diffusion.num_timesteps() {
        let m = model_output(diffusion, model, x.clone(), i)?;
        x = ddim_inversion_step(diffusion, x, i, m)?.sample;
    }
    Ok(x)
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
