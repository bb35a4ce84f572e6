//! The sampling loop and its steps.
//!
//! | method | update (t → t−1), with x̂_0 and ε̂ from the network | source |
//! |---|---|---|
//! | [`Method::Ddpm`] | x ← μ_θ(x_t, t) + σ_t z (σ from the process's variance choice) | Ho et al. 2020, Alg. 2 |
//! | [`Method::Ddim`] | x ← √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ²) ε̂ + σ z, σ = η √((1−ᾱ_{t−1})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}) | Song et al. 2021, Eq. 12 |
//! | [`Method::Langevin`] | on y = x/√ᾱ_t (the variance-exploding form, σ_t² = (1−ᾱ_t)/ᾱ_t): K steps y ← y + (α_t/2) ∇log q_t(y) + √α_t z per level, α_t = ε σ_t²/σ_min², ∇_x log q_t = −ε̂/√(1−ᾱ_t) | Song & Ermon 2019, Alg. 1 |
//! | [`Method::PredictorCorrector`] | K Langevin corrector steps with step 2 α_t (r ‖z‖/‖s‖)², then a DDPM or DDIM predictor | Song et al. 2021 (SDE), Alg. 5 |
//! | [`Method::DpmSolver`] | DPM-Solver++ multistep / SDE ([`crate::dpm_solver`]) | Lu et al. 2022 |
//! | [`Method::UniPc`] | UniPC predictor + corrector ([`crate::unipc`]) | Zhao et al. 2023 |
//! | [`Method::Karras`] | Euler, Euler-ancestral, Heun in σ ([`crate::karras`]) | Karras et al. 2022, Alg. 1–2 |
//!
//! Classifier guidance (Dhariwal & Nichol 2021, Alg. 1 and 2): for ancestral steps the mean moves
//! by Σ ∇log p(y|x_t); for DDIM the noise estimate becomes ε̂ − √(1−ᾱ_t) ∇log p(y|x_t). The
//! [`Guidance`] returns the gradient already multiplied by the guidance scale.

use burn::tensor::{Device, Tensor, TensorData};
use diffusion_core::{GaussianDiffusion, SigmaSchedule, TimestepSpacing};

use crate::dpm_solver::{DpmAlgorithm, DpmSolver, DpmState, dpm_timesteps};
use crate::error::{Result, SampleError};
use crate::karras::{Churn, KarrasMethod, KarrasSampler, KarrasState};
use crate::noise::{INITIAL_STEP, NoiseSource};
pub use crate::step::{Denoiser, Guidance, Predictor};
use crate::step::{
    PcNoise, StepOptions, ancestral_step, check_output, ddim_adds_noise, ddim_inversion_step, ddim_step,
    langevin_step, model_output, norms, per_sample, predict, predictor_corrector_step,
};
use crate::unipc::{UniPc, UniPcState, UniPcVariant};

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
        /// The solver's own steps of the (unrespaced) process, as diffusers picks them; `None`:
        /// every step of the process given (respace it first).
        schedule: Option<StepSchedule>,
    },
    /// UniPC multistep with its corrector (see [`crate::unipc`]), as diffusers'
    /// `UniPCMultistepScheduler`; the last step lands on σ = 0.
    UniPc {
        /// Solver order (1–3; diffusers' default 2).
        order: usize,
        /// B(h): bh1 or bh2 (diffusers' default).
        variant: UniPcVariant,
        /// The solver's own steps of the (unrespaced) process; `None`: every step of the
        /// process given.
        schedule: Option<StepSchedule>,
    },
    /// Euler, Euler-ancestral or Heun in the σ parameterisation (see [`crate::karras`]), as
    /// diffusers' Euler, EulerAncestral and Heun discrete schedulers: `schedule.steps` steps
    /// (Heun: 2 n − 1 network calls), the network evaluated at fractional timesteps.
    Karras {
        /// Which sampler.
        method: KarrasMethod,
        /// Its steps.
        schedule: StepSchedule,
        /// Euler's churn (none by default).
        churn: Churn,
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

/// How a sampler with its own step choice (diffusers' `set_timesteps(n)`) picks its steps of
/// the process: `steps` of them by `spacing`, or Karras σ (ρ = 7) over the same range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StepSchedule {
    /// Steps (network calls for every sampler but Heun).
    pub steps: usize,
    /// Timestep spacing.
    pub spacing: TimestepSpacing,
    /// Karras σ (ρ = 7) instead of the spacing's own σ.
    pub karras: bool,
}

impl Method {
    /// Annealed Langevin with `steps_per_level` steps and the default step scale ε = 0.1 σ_min²
    /// (σ_min² = (1 − ᾱ_0)/ᾱ_0, the smallest level of `diffusion`; stable below 4 σ_min²).
    pub fn langevin(diffusion: &GaussianDiffusion, steps_per_level: usize) -> Self {
        let ab0 = diffusion.tables().alphas_cumprod[0];
        Method::Langevin { steps_per_level: steps_per_level.max(1), step_scale: 0.1 * (1.0 - ab0) / ab0 }
    }

    /// Network evaluations per level of the process (for the samplers with their own
    /// schedule, per step of it).
    pub fn evaluations_per_level(&self) -> usize {
        match *self {
            Method::Ddpm
            | Method::Ddim { .. }
            | Method::DpmSolver { .. }
            | Method::UniPc { .. }
            | Method::Karras { .. } => 1,
            Method::Langevin { steps_per_level, .. } => steps_per_level + 1,
            Method::PredictorCorrector { corrector_steps, .. } => corrector_steps + 1,
        }
    }

    /// Network evaluations of a whole run over `diffusion`.
    pub fn evaluations(&self, diffusion: &GaussianDiffusion) -> usize {
        match *self {
            Method::DpmSolver { schedule: Some(s), .. } | Method::UniPc { schedule: Some(s), .. } => s.steps,
            Method::Karras { method: KarrasMethod::Heun, schedule, .. } => {
                (2 * schedule.steps).saturating_sub(1)
            }
            Method::Karras { schedule, .. } => schedule.steps,
            _ => diffusion.num_timesteps() * self.evaluations_per_level(),
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
    match method {
        Method::DpmSolver { .. } | Method::UniPc { .. } | Method::Karras { .. } if guidance.is_some() => {
            return Err(SampleError::InvalidOption(
                "classifier guidance is not available with DPM-Solver++, UniPC, Euler or Heun (use ddpm, \
                 ddim, langevin or pc)"
                    .into(),
            ));
        }
        // Annealed Langevin runs on y = x/√ᾱ, undefined where ᾱ_T = 0: refused before any step.
        Method::Langevin { .. } if diffusion.has_zero_terminal_snr() => {
            return Err(crate::step::zero_snr_refused("annealed Langevin dynamics"));
        }
        Method::UniPc { order, variant, schedule } => {
            let ab = &diffusion.tables().alphas_cumprod;
            let (steps, karras) = match schedule {
                Some(s) => (dpm_timesteps(ab.len(), s.steps, s.spacing)?, s.karras),
                None => ((0..ab.len()).rev().collect(), false),
            };
            let sigmas = SigmaSchedule::multistep(ab, &steps, karras.then_some(7.0), false)?;
            let mut solver = UniPc::from_schedule(&sigmas, order, variant, diffusion.config().mean)?;
            solver.clip_denoised = options.clip_denoised;
            return unipc_loop(diffusion, model, x, &solver, options);
        }
        Method::DpmSolver { order, algorithm, schedule: Some(schedule) } => {
            let ab = &diffusion.tables().alphas_cumprod;
            let steps = dpm_timesteps(ab.len(), schedule.steps, schedule.spacing)?;
            let sigmas = SigmaSchedule::multistep(ab, &steps, schedule.karras.then_some(7.0), false)?;
            let mut solver = DpmSolver::from_schedule(&sigmas, order, algorithm, diffusion.config().mean)?;
            solver.clip_denoised = options.clip_denoised;
            return dpm_loop(diffusion, model, x, &z, &solver, options);
        }
        Method::Karras { method, schedule, churn } => {
            let mut sampler = KarrasSampler::new(
                diffusion,
                method,
                schedule.steps,
                schedule.spacing,
                schedule.karras,
                diffusion.config().mean,
            )?;
            sampler.churn = churn;
            sampler.clip_denoised = options.clip_denoised;
            return karras_loop(diffusion, model, x, &z, &sampler, options);
        }
        _ => {}
    }
    let mut x = x;
    let step_options = StepOptions { clip_denoised: options.clip_denoised, guidance };
    let num_t = diffusion.num_timesteps();
    let ab = &diffusion.tables().alphas_cumprod;
    let mut out = SampleOutput { sample: x.clone(), trajectory: Vec::new(), pred_x0: Vec::new() };
    // DPM-Solver++ over every step of this (respaced) process: ᾱ at a kept step is the
    // original's, so σ and the model timesteps are those of the original steps.
    let mut dpm = match method {
        Method::DpmSolver { order, algorithm, .. } => {
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
            Method::Karras { .. } | Method::UniPc { .. } => unreachable!("run by their own loops above"),
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

/// The network's output at a fractional process timestep `t` for the whole batch (its mean part
/// where the variance is learned).
fn output_at<const D: usize>(
    diffusion: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    x: Tensor<D>,
    t: f64,
) -> Result<Tensor<D>> {
    let b = x.dims()[0];
    let time =
        Tensor::<1>::from_data(TensorData::new(vec![diffusion.model_time(t) as f32; b], [b]), &x.device());
    let out = model.denoise(x.clone(), time);
    check_output(diffusion, &x, &out)?;
    Ok(diffusion.split_model_output(out).0)
}

/// The recorded level of a fractional timestep.
fn level(t: f64) -> usize {
    t.round().max(0.0) as usize
}

/// A multistep solver over its own whole timesteps: at step k the network at `timesteps[k]`,
/// then `step(k, x, output)` → (next sample, x̂_0).
fn multistep_loop<const D: usize>(
    diffusion: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    x: Tensor<D>,
    timesteps: &[usize],
    options: &SampleOptions,
    mut step: impl FnMut(usize, Tensor<D>, Tensor<D>) -> Result<(Tensor<D>, Tensor<D>)>,
) -> Result<SampleOutput<D>> {
    let mut x = x;
    let mut out = SampleOutput { sample: x.clone(), trajectory: Vec::new(), pred_x0: Vec::new() };
    let n = timesteps.len();
    for (k, &t) in timesteps.iter().enumerate() {
        let m = output_at(diffusion, model, x.clone(), t as f64)?;
        let (sample, pred_x0) = step(k, x, m)?;
        x = sample;
        if let Some(every) = options.record_every
            && (k % every.max(1) == 0 || k + 1 == n)
        {
            out.trajectory.push((t, x.clone()));
            out.pred_x0.push((t, pred_x0));
        }
    }
    out.sample = x;
    Ok(out)
}

/// DPM-Solver++ over its own schedule (timesteps not those of `diffusion`'s levels).
fn dpm_loop<const D: usize>(
    diffusion: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    x: Tensor<D>,
    z: &dyn Fn(u64) -> Result<Tensor<D>>,
    solver: &DpmSolver,
    options: &SampleOptions,
) -> Result<SampleOutput<D>> {
    let mut state = DpmState::default();
    let n = solver.num_steps();
    multistep_loop(diffusion, model, x, &solver.timesteps, options, |k, x, m| {
        let noisy = solver.algorithm == DpmAlgorithm::SdeDpmSolverPp && k + 1 < n;
        let noise = if noisy { Some(z(step_key(n - 1 - k, 0))?) } else { None };
        let s = solver.step(&mut state, x, m, noise)?;
        Ok((s.sample, s.pred_x0))
    })
}

/// UniPC over its schedule (deterministic: no noise).
fn unipc_loop<const D: usize>(
    diffusion: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    x: Tensor<D>,
    solver: &UniPc,
    options: &SampleOptions,
) -> Result<SampleOutput<D>> {
    let mut state = UniPcState::default();
    multistep_loop(diffusion, model, x, &solver.timesteps, options, |_, x, m| {
        let s = solver.step(&mut state, x, m)?;
        Ok((s.sample, s.pred_x0))
    })
}

/// Euler / Euler-ancestral / Heun: x̃ = z · init_noise_sigma, then every network call.
fn karras_loop<const D: usize>(
    diffusion: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    x: Tensor<D>,
    z: &dyn Fn(u64) -> Result<Tensor<D>>,
    sampler: &KarrasSampler,
    options: &SampleOptions,
) -> Result<SampleOutput<D>> {
    let mut x = x.mul_scalar(sampler.init_noise_sigma);
    let mut state = KarrasState::default();
    let mut out = SampleOutput { sample: x.clone(), trajectory: Vec::new(), pred_x0: Vec::new() };
    let n = sampler.num_steps();
    while let Some(ev) = sampler.evaluation(&state) {
        let input = sampler.scale_model_input(&state, x.clone())?;
        let m = output_at(diffusion, model, input, ev.t)?;
        let noise = if ev.needs_noise { Some(z(step_key(n - 1 - ev.step, 0))?) } else { None };
        let e = state.evaluations();
        let s = sampler.step(&mut state, x, m, noise)?;
        x = s.sample;
        let done = sampler.evaluation(&state).is_none_or(|next| next.step != ev.step);
        if let Some(every) = options.record_every
            && done
            && (ev.step % every.max(1) == 0 || e + 1 == sampler.num_evaluations())
        {
            // Recorded as x_t (x̃/√(σ² + 1) at the level reached), like the other samplers.
            let next = sampler.sigmas[ev.step + 1];
            out.trajectory.push((level(ev.t), x.clone().div_scalar((next * next + 1.0).sqrt())));
            out.pred_x0.push((level(ev.t), s.pred_x0));
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
