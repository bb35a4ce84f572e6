//! Euler, Euler-ancestral and Heun (Karras et al. 2022, Algorithms 1–2) in the σ
//! parameterisation, as diffusers' `EulerDiscreteScheduler`, `EulerAncestralDiscreteScheduler`
//! and `HeunDiscreteScheduler` run them.
//!
//! The samplers work on x̃ = x_t/√ᾱ_t = x_0 + σ ε (σ = √((1 − ᾱ)/ᾱ), see
//! [`diffusion_core::sigmas`]). The network, trained on x_t, is fed x̃/√(σ² + 1) and the
//! (fractional) timestep of σ; the loop starts from x̃ = z · `init_noise_sigma` and ends at σ = 0,
//! where x̃ is the sample. With x̂_0 from the network output (ε: x̃ − σ ε̂; x_0: the output;
//! v: x̃/(σ² + 1) − σ v̂/√(σ² + 1)) and the derivative d = (x̃ − x̂_0)/σ:
//!
//! | method | one step σ_k → σ_{k+1} | network calls |
//! |---|---|---|
//! | Euler | x̃ + d (σ_{k+1} − σ̂), σ̂ = σ_k (1 + γ); with churn γ = min(s_churn/n, √2 − 1) on s_tmin ≤ σ_k ≤ s_tmax, x̃ first gets s_noise √(σ̂² − σ²) z | n |
//! | Euler-ancestral | x̃ + d (σ_down − σ_k) + σ_up z, σ_up = √(σ_{k+1}² (σ_k² − σ_{k+1}²)/σ_k²), σ_down = √(σ_{k+1}² − σ_up²) | n |
//! | Heun | Euler to x̃' at σ_{k+1}, then x̃ + ½ (d + d') (σ_{k+1} − σ_k) with d' = (x̃' − x̂_0')/σ_{k+1}; the last step (to σ = 0) Euler only | 2n − 1 |
//!
//! Conventions, each diffusers': with churn, the network is evaluated before the churn noise is
//! added, ε's x̂_0 uses σ̂ and v's uses σ; init_noise_sigma is σ_max for the linspace and
//! trailing spacings and √(σ_max² + 1) for leading; scalars are f32. Ours beyond diffusers:
//! Euler-ancestral also takes x_0 predictions, and x̂_0 can be clipped to [−1, 1]
//! (`clip_denoised`, off by default as in diffusers).

use burn::tensor::Tensor;
use diffusion_core::{GaussianDiffusion, ModelMean, SigmaSchedule, TimestepSpacing};

use crate::error::{Result, SampleError};

/// Which σ-space sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KarrasMethod {
    /// Euler (first order; stochastic only with churn).
    Euler,
    /// Euler-ancestral (noise at every step).
    EulerAncestral,
    /// Heun (second order, two network calls per step but the last).
    Heun,
}

/// Karras et al.'s "churn": extra noise raising σ to σ̂ = σ (1 + γ) before an Euler step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Churn {
    /// S_churn (0: none).
    pub s_churn: f64,
    /// Levels below this get no churn.
    pub s_tmin: f64,
    /// Levels above this get no churn.
    pub s_tmax: f64,
    /// The noise's scale S_noise.
    pub s_noise: f64,
}

impl Default for Churn {
    fn default() -> Self {
        Self { s_churn: 0.0, s_tmin: 0.0, s_tmax: f64::INFINITY, s_noise: 1.0 }
    }
}

/// A σ-space sampler over a [`SigmaSchedule`].
#[derive(Debug, Clone, PartialEq)]
pub struct KarrasSampler {
    /// The method.
    pub method: KarrasMethod,
    /// The timesteps (fractional, decreasing) and σ (then 0), in f64.
    pub schedule: SigmaSchedule,
    /// σ in f32, as the steps use them (n + 1 values, the last 0).
    pub sigmas: Vec<f32>,
    /// What the network predicts (ε, x_0 or v).
    pub prediction: ModelMean,
    /// The scale of the initial noise (the loop starts from z · this).
    pub init_noise_sigma: f32,
    /// Churn (Euler only).
    pub churn: Churn,
    /// Clip each x̂_0 to [−1, 1].
    pub clip_denoised: bool,
}

/// What the next network call is: its timestep (a fractional step of the process), σ there, and
/// whether the step after it needs noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// The step of the schedule (0-based).
    pub step: usize,
    /// The fractional process timestep (pass through [`GaussianDiffusion::model_time`]).
    pub t: f64,
    /// σ at this call.
    pub sigma: f32,
    /// Whether [`KarrasSampler::step`] needs noise after this call.
    pub needs_noise: bool,
}

/// The sampler's memory between calls (Heun's first stage).
#[derive(Debug, Clone)]
pub struct KarrasState<const D: usize> {
    evaluation: usize,
    /// Heun after its first stage: (d, dt, x̃ at the step's start).
    first: Option<(Tensor<D>, f32, Tensor<D>)>,
}

impl<const D: usize> Default for KarrasState<D> {
    fn default() -> Self {
        Self { evaluation: 0, first: None }
    }
}

impl<const D: usize> KarrasState<D> {
    /// Network calls consumed so far.
    pub fn evaluations(&self) -> usize {
        self.evaluation
    }
}

/// What [`KarrasSampler::step`] returns.
#[derive(Debug, Clone)]
pub struct KarrasStep<const D: usize> {
    /// The next x̃ (after Heun's first stage: the Euler estimate at σ_{k+1}, to evaluate next).
    pub sample: Tensor<D>,
    /// x̂_0 at this call.
    pub pred_x0: Tensor<D>,
}

impl KarrasSampler {
    /// The sampler diffusers builds for `n` steps of `diffusion` (its own steps, which must not
    /// be respaced for diffusers' numbers) with `spacing`, and Karras σ (ρ = 7) when `karras`.
    pub fn new(
        diffusion: &GaussianDiffusion,
        method: KarrasMethod,
        n: usize,
        spacing: TimestepSpacing,
        karras: bool,
        prediction: ModelMean,
    ) -> Result<Self> {
        Self::from_alphas_cumprod(&diffusion.tables().alphas_cumprod, method, n, spacing, karras, prediction)
    }

    /// [`Self::new`] from a table of ᾱ (diffusers' f32 `alphas_cumprod`, say) instead of a process.
    pub fn from_alphas_cumprod(
        alphas_cumprod: &[f64],
        method: KarrasMethod,
        n: usize,
        spacing: TimestepSpacing,
        karras: bool,
        prediction: ModelMean,
    ) -> Result<Self> {
        let schedule = SigmaSchedule::continuous(alphas_cumprod, n, spacing, karras.then_some(7.0))?;
        let max = schedule.sigmas.iter().copied().fold(0.0_f32, |m, s| m.max(s as f32));
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading { .. } => (max * max + 1.0).sqrt(),
        };
        Self::from_schedule(method, schedule, prediction, init_noise_sigma)
    }

    /// A sampler over any schedule (σ positive and decreasing, then 0).
    pub fn from_schedule(
        method: KarrasMethod,
        schedule: SigmaSchedule,
        prediction: ModelMean,
        init_noise_sigma: f32,
    ) -> Result<Self> {
        let bad = |m: String| Err(SampleError::InvalidOption(m));
        if prediction == ModelMean::PreviousX {
            return bad(format!("{method:?} needs an ε, x_0 or v prediction, not x_{{t−1}}"));
        }
        let n = schedule.timesteps.len();
        if n == 0 || schedule.sigmas.len() != n + 1 {
            return bad(format!(
                "a σ schedule needs at least one step and one σ more than steps (got {n} steps, {} σ)",
                schedule.sigmas.len()
            ));
        }
        let s = &schedule.sigmas;
        if s[..n].iter().any(|&v| !(v.is_finite() && v > 0.0)) || s.windows(2).any(|w| w[1] > w[0]) {
            return bad("σ must be finite, positive and non-increasing before the final σ".into());
        }
        let sigmas = s.iter().map(|&v| v as f32).collect();
        Ok(Self {
            method,
            schedule,
            sigmas,
            prediction,
            init_noise_sigma,
            churn: Churn::default(),
            clip_denoised: false,
        })
    }

    /// Steps of the schedule.
    pub fn num_steps(&self) -> usize {
        self.schedule.timesteps.len()
    }

    /// Network calls of a whole run: n, or 2n − 1 for Heun.
    pub fn num_evaluations(&self) -> usize {
        match self.method {
            KarrasMethod::Heun => 2 * self.num_steps() - 1,
            _ => self.num_steps(),
        }
    }

    /// γ of the churn at step `k`.
    fn gamma(&self, k: usize) -> f32 {
        let sigma = f64::from(self.sigmas[k]);
        let c = self.churn;
        if self.method == KarrasMethod::Euler && c.s_churn > 0.0 && c.s_tmin <= sigma && sigma <= c.s_tmax {
            (c.s_churn / self.num_steps() as f64).min(2f64.sqrt() - 1.0) as f32
        } else {
            0.0
        }
    }

    /// The next network call, or `None` when the run is complete.
    pub fn evaluation<const D: usize>(&self, state: &KarrasState<D>) -> Option<Evaluation> {
        let e = state.evaluation;
        if e >= self.num_evaluations() {
            return None;
        }
        let (step, at) = match self.method {
            // Heun: call 2k is step k's first stage (at σ_k), call 2k + 1 its second (at σ_{k+1}).
            KarrasMethod::Heun => (e / 2, e / 2 + e % 2),
            _ => (e, e),
        };
        let needs_noise = match self.method {
            KarrasMethod::Euler => self.gamma(step) > 0.0,
            KarrasMethod::EulerAncestral => self.sigmas[step + 1] > 0.0,
            KarrasMethod::Heun => false,
        };
        Some(Evaluation { step, t: self.schedule.timesteps[at], sigma: self.sigmas[at], needs_noise })
    }

    /// The network's input at the next call: x̃/√(σ² + 1).
    pub fn scale_model_input<const D: usize>(
        &self,
        state: &KarrasState<D>,
        x: Tensor<D>,
    ) -> Result<Tensor<D>> {
        let ev = self.evaluation(state).ok_or_else(|| self.finished())?;
        Ok(x.div_scalar((ev.sigma * ev.sigma + 1.0).sqrt()))
    }

    fn finished(&self) -> SampleError {
        SampleError::InvalidOption(format!(
            "the sampler's {} network calls are all taken",
            self.num_evaluations()
        ))
    }

    /// x̂_0 from the network output at σ (`sigma_eps`: the σ ε's formula uses, σ̂ under churn).
    fn pred_x0<const D: usize>(&self, x: Tensor<D>, out: Tensor<D>, sigma: f32, sigma_eps: f32) -> Tensor<D> {
        let x0 = match self.prediction {
            ModelMean::StartX => out,
            ModelMean::Velocity => {
                let s2 = sigma * sigma + 1.0;
                out.mul_scalar(-sigma / s2.sqrt()) + x.div_scalar(s2)
            }
            _ => x - out.mul_scalar(sigma_eps),
        };
        if self.clip_denoised { x0.clamp(-1.0, 1.0) } else { x0 }
    }

    /// Consumes the network output at the current call (`x`: the x̃ the call was made at, before
    /// [`Self::scale_model_input`]); `noise` where [`Evaluation::needs_noise`] says so.
    pub fn step<const D: usize>(
        &self,
        state: &mut KarrasState<D>,
        x: Tensor<D>,
        model_output: Tensor<D>,
        noise: Option<Tensor<D>>,
    ) -> Result<KarrasStep<D>> {
        let ev = self.evaluation(state).ok_or_else(|| self.finished())?;
        if model_output.dims() != x.dims() {
            return Err(SampleError::Shape {
                what: "the model output",
                got: model_output.dims().to_vec(),
                expected: x.dims().to_vec(),
            });
        }
        let noise = match noise {
            Some(z) if z.dims() != x.dims() => {
                return Err(SampleError::Shape {
                    what: "the noise",
                    got: z.dims().to_vec(),
                    expected: x.dims().to_vec(),
                });
            }
            Some(z) => Some(z),
            None if ev.needs_noise => {
                return Err(SampleError::MissingNoise { step: "euler churn / euler-ancestral" });
            }
            None => None,
        };
        let k = ev.step;
        let (sigma, next) = (self.sigmas[k], self.sigmas[k + 1]);
        let out = match self.method {
            KarrasMethod::Euler => {
                let gamma = self.gamma(k);
                let sigma_hat = sigma * (gamma + 1.0);
                let x = match noise {
                    Some(z) if gamma > 0.0 => {
                        let scale = (sigma_hat * sigma_hat - sigma * sigma).sqrt();
                        x + z.mul_scalar(self.churn.s_noise as f32 * scale)
                    }
                    _ => x,
                };
                let x0 = self.pred_x0(x.clone(), model_output, sigma, sigma_hat);
                let d = (x.clone() - x0.clone()).div_scalar(sigma_hat);
                KarrasStep { sample: x + d.mul_scalar(next - sigma_hat), pred_x0: x0 }
            }
            KarrasMethod::EulerAncestral => {
                let x0 = self.pred_x0(x.clone(), model_output, sigma, sigma);
                let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt();
                let down = (next * next - up * up).sqrt();
                let d = (x.clone() - x0.clone()).div_scalar(sigma);
                let sample = x + d.mul_scalar(down - sigma);
                let sample = match noise {
                    Some(z) if up > 0.0 => sample + z.mul_scalar(up),
                    _ => sample,
                };
                KarrasStep { sample, pred_x0: x0 }
            }
            KarrasMethod::Heun => match state.first.take() {
                None => {
                    let x0 = self.pred_x0(x.clone(), model_output, sigma, sigma);
                    let d = (x.clone() - x0.clone()).div_scalar(sigma);
                    let dt = next - sigma;
                    let sample = x.clone() + d.clone().mul_scalar(dt);
                    if next > 0.0 {
                        state.first = Some((d, dt, x));
                    }
                    KarrasStep { sample, pred_x0: x0 }
                }
                Some((d, dt, start)) => {
                    // The second call is at σ_{k+1} (ev.sigma).
                    let x0 = self.pred_x0(x.clone(), model_output, ev.sigma, ev.sigma);
                    let d2 = (x - x0.clone()).div_scalar(ev.sigma);
                    let d = (d + d2).div_scalar(2.0);
                    KarrasStep { sample: start + d.mul_scalar(dt), pred_x0: x0 }
                }
            },
        };
        state.evaluation += 1;
        Ok(out)
    }
}
