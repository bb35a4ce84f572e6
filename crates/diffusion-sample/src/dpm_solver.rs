//! DPM-Solver++ (Lu et al. 2022): multistep orders 1–3 and the stochastic SDE-DPM-Solver++ 2M,
//! in diffusers' `DPMSolverMultistepScheduler` form — data (x̂_0) prediction, midpoint solver
//! type, lower orders while warming up and at the end.
//!
//! The process in the σ parameterisation: σ_t = √((1−ᾱ_t)/ᾱ_t), α_t = 1/√(σ_t² + 1),
//! σ'_t = σ_t α_t (the VP noise level) and λ_t = log α_t − log σ'_t. With h = λ_t − λ_s and the
//! data predictions m_0 (newest), m_1, m_2 at the last steps:
//!
//! | order | update x_s → x_t |
//! |---|---|
//! | 1 | (σ'_t/σ'_s) x − α_t (e^{−h} − 1) m_0 (DDIM) |
//! | 2 | … − α_t (e^{−h} − 1) D_0 − ½ α_t (e^{−h} − 1) D_1, D_0 = m_0, D_1 = (m_0 − m_1)/r_0, r_0 = h_0/h |
//! | 3 | (σ'_t/σ'_s) x − α_t (e^{−h} − 1) D_0 + α_t ((e^{−h} − 1)/h + 1) D_1 − α_t ((e^{−h} − 1 + h)/h² − ½) D_2, with D_1 = D_1,0 + r_0/(r_0 + r_1) (D_1,0 − D_1,1), D_2 = (D_1,0 − D_1,1)/(r_0 + r_1) |
//!
//! SDE-DPM-Solver++: x_t = (σ'_t/σ'_s) e^{−h} x + α_t (1 − e^{−2h}) (D_0 + ½ D_1) + σ'_t √(1 − e^{−2h}) z.
//! The last step goes to σ = 0 (x̂_0 itself) with order 1. Scalars are computed in f32, as
//! diffusers computes them on its f32 tensors.

use burn::tensor::Tensor;
use diffusion_core::{GaussianDiffusion, ModelMean};

use crate::error::{Result, SampleError};

/// Deterministic DPM-Solver++ or its SDE variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmAlgorithm {
    /// `dpmsolver++`.
    DpmSolverPp,
    /// `sde-dpmsolver++` (orders 1 and 2).
    SdeDpmSolverPp,
}

/// A DPM-Solver++ run: the timesteps (decreasing, indices of the training process), σ at each
/// and 0 after the last, and the solver's choices.
#[derive(Debug, Clone, PartialEq)]
pub struct DpmSolver {
    /// The model timesteps, one per step, decreasing.
    pub timesteps: Vec<usize>,
    /// σ_t at each timestep, then 0 (final σ "zero").
    pub sigmas: Vec<f32>,
    /// Solver order (1, 2 or 3; 2 at most for the SDE variant).
    pub order: usize,
    /// The algorithm.
    pub algorithm: DpmAlgorithm,
    /// What the network predicts (ε, x_0 or v).
    pub prediction: ModelMean,
    /// Lower orders for the last steps when there are fewer than 15 (diffusers' default).
    pub lower_order_final: bool,
    /// Clip each data prediction x̂_0 to [−1, 1] (the reference's `clip_denoised`, for pixel
    /// data; off by default, as diffusers without thresholding — with an imperfect ε-network on a
    /// cosine schedule, x̂_0 at the first steps is ε̂/√ᾱ amplified by up to 2·10⁴).
    pub clip_denoised: bool,
}

/// The solver's memory between steps.
#[derive(Debug, Clone)]
pub struct DpmState<const D: usize> {
    /// Data predictions of the last steps, newest last.
    outputs: Vec<Tensor<D>>,
    /// Steps taken.
    step: usize,
    /// How many lower-order steps have run (diffusers' `lower_order_nums`).
    lower_order_nums: usize,
}

impl<const D: usize> Default for DpmState<D> {
    fn default() -> Self {
        Self { outputs: Vec::new(), step: 0, lower_order_nums: 0 }
    }
}

impl<const D: usize> DpmState<D> {
    /// Steps taken so far.
    pub fn steps_taken(&self) -> usize {
        self.step
    }
}

/// What [`DpmSolver::step`] returns.
#[derive(Debug, Clone)]
pub struct DpmStep<const D: usize> {
    /// The next sample.
    pub sample: Tensor<D>,
    /// The data prediction x̂_0 at this step.
    pub pred_x0: Tensor<D>,
    /// The order used.
    pub order: usize,
}

/// The timesteps diffusers' `DPMSolverMultistepScheduler.set_timesteps(n)` picks from a
/// `num_timesteps`-step process (n < T), decreasing. Linspace and leading are DDIM's rules
/// ([`diffusion_core::spaced_timesteps`]) over n + 1 points without the smallest; trailing is
/// DDIM's:
/// - `Linspace`: round(linspace(0, T − 1, n + 1)) reversed, without its last (0);
/// - `Leading { steps_offset }`: k ⌊T/(n + 1)⌋ for k = n … 1, plus the offset;
/// - `Trailing`: round(T − k T/n) − 1 for k = 0 … n − 1.
///
/// Rounding is half to even, like numpy's.
pub fn dpm_timesteps(
    num_timesteps: usize,
    n: usize,
    spacing: diffusion_core::TimestepSpacing,
) -> Result<Vec<usize>> {
    use diffusion_core::{TimestepSpacing, spaced_timesteps};
    let mut steps = match spacing {
        TimestepSpacing::Trailing => spaced_timesteps(num_timesteps, n, spacing)?,
        // DDIM's rule over n + 1 points, without its first (0, or the steps offset).
        _ => spaced_timesteps(num_timesteps, n + 1, spacing)?.split_off(1),
    };
    steps.reverse();
    Ok(steps)
}

impl DpmSolver {
    /// A solver over `timesteps` (decreasing indices of `diffusion`, which must not be respaced)
    /// with σ from its ᾱ in f32, as diffusers computes them.
    pub fn new(
        diffusion: &GaussianDiffusion,
        timesteps: Vec<usize>,
        order: usize,
        algorithm: DpmAlgorithm,
        prediction: ModelMean,
    ) -> Result<Self> {
        let bad = |m: String| Err(SampleError::InvalidOption(m));
        let mut solver = Self::new_unchecked(order, algorithm, prediction)?;
        if timesteps.is_empty() || timesteps.windows(2).any(|w| w[0] <= w[1]) {
            return bad("the timesteps must be non-empty and strictly decreasing".into());
        }
        let ab = &diffusion.tables().alphas_cumprod;
        if let Some(&t) = timesteps.iter().find(|&&t| t >= ab.len()) {
            return Err(SampleError::TimestepOutOfRange { t, num_timesteps: ab.len() });
        }
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| {
                // ᾱ = 0 (zero terminal SNR) is read as 2⁻²⁴, as diffusers does.
                let a = diffusion_core::sigma_alpha_bar(ab[t]) as f32;
                ((1.0 - a) / a).sqrt()
            })
            .collect();
        sigmas.push(0.0);
        solver.timesteps = timesteps;
        solver.sigmas = sigmas;
        Ok(solver)
    }

    /// A solver over a σ schedule (Karras σ, say): its timesteps must be whole (those of
    /// [`diffusion_core::SigmaSchedule::multistep`] are) and non-increasing, its σ decreasing to
    /// the final 0.
    pub fn from_schedule(
        schedule: &diffusion_core::SigmaSchedule,
        order: usize,
        algorithm: DpmAlgorithm,
        prediction: ModelMean,
    ) -> Result<Self> {
        let bad = |m: String| Err(SampleError::InvalidOption(m));
        let n = schedule.timesteps.len();
        if n == 0 || schedule.sigmas.len() != n + 1 {
            return bad(format!("a schedule of {n} steps needs {} σ, got {}", n + 1, schedule.sigmas.len()));
        }
        if schedule.timesteps.iter().any(|&t| !(t >= 0.0 && t.fract() == 0.0)) {
            return bad("DPM-Solver++ evaluates the network at whole timesteps".into());
        }
        let s = &schedule.sigmas;
        if s[..n].iter().any(|&v| !(v.is_finite() && v > 0.0)) || s.windows(2).any(|w| w[1] >= w[0]) {
            return bad("σ must be finite, positive and decreasing to the final 0".into());
        }
        let mut solver = Self::new_unchecked(order, algorithm, prediction)?;
        solver.timesteps = schedule.timesteps.iter().map(|&t| t as usize).collect();
        solver.sigmas = s.iter().map(|&v| v as f32).collect();
        Ok(solver)
    }

    fn new_unchecked(order: usize, algorithm: DpmAlgorithm, prediction: ModelMean) -> Result<Self> {
        let bad = |m: String| Err(SampleError::InvalidOption(m));
        let max_order = if algorithm == DpmAlgorithm::SdeDpmSolverPp { 2 } else { 3 };
        if !(1..=max_order).contains(&order) {
            return bad(format!("{algorithm:?} has orders 1..={max_order}, got {order}"));
        }
        if prediction == ModelMean::PreviousX {
            return bad("DPM-Solver++ needs an ε, x_0 or v prediction, not x_{t−1}".into());
        }
        Ok(Self {
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            order,
            algorithm,
            prediction,
            lower_order_final: true,
            clip_denoised: false,
        })
    }

    /// Steps of the run.
    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// (α_t, σ'_t) from σ.
    fn alpha_sigma(sigma: f32) -> (f32, f32) {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        (alpha, sigma * alpha)
    }

    fn lambda(sigma: f32) -> f32 {
        let (a, s) = Self::alpha_sigma(sigma);
        a.ln() - s.ln()
    }

    /// x̂_0 from the network output at step `k` (diffusers' `convert_model_output`).
    pub fn data_prediction<const D: usize>(
        &self,
        k: usize,
        x: Tensor<D>,
        model_output: Tensor<D>,
    ) -> Tensor<D> {
        let (alpha, sigma) = Self::alpha_sigma(self.sigmas[k]);
        match self.prediction {
            ModelMean::Epsilon => (x - model_output.mul_scalar(sigma)).div_scalar(alpha),
            ModelMean::StartX => model_output,
            _ => x.mul_scalar(alpha) - model_output.mul_scalar(sigma),
        }
    }

    /// One step from `x` at step `state.steps_taken()` given the network output there; `noise`
    /// is needed by the SDE variant (except at the last step).
    pub fn step<const D: usize>(
        &self,
        state: &mut DpmState<D>,
        x: Tensor<D>,
        model_output: Tensor<D>,
        noise: Option<Tensor<D>>,
    ) -> Result<DpmStep<D>> {
        let k = state.step;
        let n = self.num_steps();
        if k >= n {
            return Err(SampleError::InvalidOption(format!("the solver's {n} steps are all taken")));
        }
        if model_output.dims() != x.dims() {
            return Err(SampleError::Shape {
                what: "the model output",
                got: model_output.dims().to_vec(),
                expected: x.dims().to_vec(),
            });
        }
        let m0 = self.data_prediction(k, x.clone(), model_output);
        let m0 = if self.clip_denoised { m0.clamp(-1.0, 1.0) } else { m0 };
        state.outputs.push(m0.clone());
        if state.outputs.len() > self.order {
            state.outputs.remove(0);
        }
        // diffusers: the final step (to σ = 0) is first order; below 15 steps the one before it
        // at most second order.
        let final_first = k == n - 1;
        let second_last = k + 2 == n && self.lower_order_final && n < 15;
        let order = if self.order == 1 || state.lower_order_nums < 1 || final_first {
            1
        } else if self.order == 2 || state.lower_order_nums < 2 || second_last {
            2
        } else {
            3
        };
        let (sigma_t, sigma_s0) = (self.sigmas[k + 1], self.sigmas[k]);
        let (alpha_t, sig_t) = Self::alpha_sigma(sigma_t);
        let (_, sig_s0) = Self::alpha_sigma(sigma_s0);
        let (lambda_t, lambda_s0) = (Self::lambda(sigma_t), Self::lambda(sigma_s0));
        let h = lambda_t - lambda_s0;
        let outs = &state.outputs;
        let m = |back: usize| outs[outs.len() - 1 - back].clone();
        let sde = self.algorithm == DpmAlgorithm::SdeDpmSolverPp;
        let z = if sde && sig_t > 0.0 {
            let z = noise.ok_or(SampleError::MissingNoise { step: "sde-dpmsolver++" })?;
            if z.dims() != x.dims() {
                return Err(SampleError::Shape {
                    what: "the noise",
                    got: z.dims().to_vec(),
                    expected: x.dims().to_vec(),
                });
            }
            Some(z)
        } else {
            None
        };
        let em1 = (-h).exp() - 1.0; // e^{−h} − 1
        // The second-order difference D_1 = (m_0 − m_1)/r_0, r_0 = h_0/h.
        let d1_second = || {
            let r0 = (lambda_s0 - Self::lambda(self.sigmas[k - 1])) / h;
            (m(0) - m(1)).mul_scalar(1.0 / r0)
        };
        let sample = if sde {
            let e2 = 1.0 - (-2.0 * h).exp(); // 1 − e^{−2h}
            let mut det = x.mul_scalar(sig_t / sig_s0 * (-h).exp()) + m0.clone().mul_scalar(alpha_t * e2);
            if order == 2 {
                det = det + d1_second().mul_scalar(0.5 * alpha_t * e2);
            }
            match z {
                Some(z) => det + z.mul_scalar(sig_t * e2.sqrt()),
                None => det,
            }
        } else {
            let first = x.mul_scalar(sig_t / sig_s0) - m0.clone().mul_scalar(alpha_t * em1);
            match order {
                1 => first,
                2 => first - d1_second().mul_scalar(0.5 * alpha_t * em1),
                _ => {
                    let (lambda_s1, lambda_s2) =
                        (Self::lambda(self.sigmas[k - 1]), Self::lambda(self.sigmas[k - 2]));
                    let (r0, r1) = ((lambda_s0 - lambda_s1) / h, (lambda_s1 - lambda_s2) / h);
                    let d1_0 = (m(0) - m(1)).mul_scalar(1.0 / r0);
                    let d1_1 = (m(1) - m(2)).mul_scalar(1.0 / r1);
                    let d1 = d1_0.clone() + (d1_0.clone() - d1_1.clone()).mul_scalar(r0 / (r0 + r1));
                    let d2 = (d1_0 - d1_1).mul_scalar(1.0 / (r0 + r1));
                    first + d1.mul_scalar(alpha_t * (em1 / h + 1.0))
                        - d2.mul_scalar(alpha_t * ((em1 + h) / (h * h) - 0.5))
                }
            }
        };
        if state.lower_order_nums < self.order {
            state.lower_order_nums += 1;
        }
        state.step += 1;
        Ok(DpmStep { sample, pred_x0: m0, order })
    }
}
