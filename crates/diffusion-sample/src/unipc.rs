//! UniPC (Zhao et al. 2023): the unified predictor (UniP) and corrector (UniC) multistep solver,
//! in diffusers' `UniPCMultistepScheduler` form — data (x̂_0) prediction, B(h) of the bh1 or bh2
//! variant, lower orders while warming up and at the end, the final step to σ = 0.
//!
//! In the σ parameterisation of [`crate::dpm_solver`] (α_t = 1/√(σ² + 1), σ'_t = σ α_t,
//! λ = log α − log σ'), a step s_0 → t with h = λ_t − λ_{s_0}, h̃ = −h, φ = e^{h̃} − 1 and
//! B(h) = h̃ (bh1) or e^{h̃} − 1 (bh2):
//!
//! - **UniP** of order p: x_t = (σ'_t/σ'_{s_0}) x − α_t φ m_0 − α_t B(h) Σ_k ρ_k D_k, with
//!   r_k = (λ_{s_k} − λ_{s_0})/h and D_k = (m_k − m_0)/r_k over the p − 1 previous data
//!   predictions m_k; ρ = ½ for p = 2, else R ρ = b on the first p − 1 rows and columns, where
//!   R_{ij} = r_j^{i} (r_p = 1) and b_i = i! g_i / B(h), g_1 = φ/h̃ − 1,
//!   g_{i+1} = g_i/h̃ − 1/(i + 1)!.
//! - **UniC** (after the network call at t, before the next prediction): the same update from the
//!   previous sample with the new data prediction m_t added, D_t = m_t − m_0,
//!   x_t^c = (σ'_t/σ'_{s_0}) x_{s_0} − α_t φ m_0 − α_t B(h) (Σ_k ρ_k D_k + ρ_p D_t), with ρ = ½ for
//!   order 1 and R ρ = b in full otherwise, at the order of the predictor step it corrects.
//!
//! diffusers' conventions, kept: the stored m_t is the data prediction from the *uncorrected*
//! sample (the corrector changes x, not m_t); the corrector runs at every step but the first
//! (and those listed in `disable_corrector`); the order is min(order, steps left, warm-up + 1)
//! (`lower_order_final`); the final step to σ = 0 returns m_0. Scalars are f32.

use burn::tensor::Tensor;
use diffusion_core::{GaussianDiffusion, ModelMean, SigmaSchedule};

use crate::error::{Result, SampleError};

/// B(h) of UniPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UniPcVariant {
    /// B(h) = h (the paper's bh1; for few steps of unconditional sampling).
    Bh1,
    /// B(h) = e^h − 1 (bh2, diffusers' default; guided sampling).
    Bh2,
}

/// A UniPC run over decreasing whole timesteps with σ at each, then σ = 0.
#[derive(Debug, Clone, PartialEq)]
pub struct UniPc {
    /// The model timesteps, one per step, non-increasing.
    pub timesteps: Vec<usize>,
    /// σ at each timestep, then 0, in f32.
    pub sigmas: Vec<f32>,
    /// Solver order (1–3).
    pub order: usize,
    /// bh1 or bh2.
    pub variant: UniPcVariant,
    /// What the network predicts (ε, x_0 or v).
    pub prediction: ModelMean,
    /// Lower orders for the last steps (diffusers' default).
    pub lower_order_final: bool,
    /// Steps whose correction is skipped (the corrector after step k is skipped when k is
    /// listed; diffusers' `disable_corrector`).
    pub disable_corrector: Vec<usize>,
    /// Clip each data prediction to [−1, 1].
    pub clip_denoised: bool,
}

/// The solver's memory between steps.
#[derive(Debug, Clone)]
pub struct UniPcState<const D: usize> {
    /// Data predictions of the last steps, newest last.
    outputs: Vec<Tensor<D>>,
    /// The sample the last prediction started from.
    last_sample: Option<Tensor<D>>,
    /// The order of the last prediction.
    last_order: usize,
    step: usize,
    lower_order_nums: usize,
}

impl<const D: usize> Default for UniPcState<D> {
    fn default() -> Self {
        Self { outputs: Vec::new(), last_sample: None, last_order: 0, step: 0, lower_order_nums: 0 }
    }
}

impl<const D: usize> UniPcState<D> {
    /// Steps taken so far.
    pub fn steps_taken(&self) -> usize {
        self.step
    }
}

/// What [`UniPc::step`] returns.
#[derive(Debug, Clone)]
pub struct UniPcStep<const D: usize> {
    /// The next sample (the prediction at the next timestep).
    pub sample: Tensor<D>,
    /// The data prediction at this step.
    pub pred_x0: Tensor<D>,
    /// The corrected current sample, where the corrector ran.
    pub corrected: Option<Tensor<D>>,
    /// The order of the prediction.
    pub order: usize,
    /// The order of the correction (0: none).
    pub corrector_order: usize,
}

/// Solves the small system `a x = b` (Gaussian elimination with partial pivoting, in f64).
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs())).unwrap_or(c);
        a.swap(c, p);
        b.swap(c, p);
        for r in c + 1..n {
            let f = a[r][c] / a[c][c];
            let pivot = a[c].clone();
            for (v, p) in a[r].iter_mut().zip(pivot).skip(c) {
                *v -= f * p;
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r][k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    x
}

impl UniPc {
    /// A solver over `timesteps` (decreasing indices of `diffusion`, not respaced) with their
    /// training σ.
    pub fn new(
        diffusion: &GaussianDiffusion,
        timesteps: Vec<usize>,
        order: usize,
        variant: UniPcVariant,
        prediction: ModelMean,
    ) -> Result<Self> {
        if timesteps.windows(2).any(|w| w[0] <= w[1]) {
            return Err(SampleError::InvalidOption("the timesteps must be strictly decreasing".into()));
        }
        let schedule = SigmaSchedule::multistep(&diffusion.tables().alphas_cumprod, &timesteps, None, false)
            .map_err(SampleError::from)?;
        Self::from_schedule(&schedule, order, variant, prediction)
    }

    /// A solver over a σ schedule (Karras σ, say) with whole, non-increasing timesteps and σ
    /// decreasing to the final 0.
    pub fn from_schedule(
        schedule: &SigmaSchedule,
        order: usize,
        variant: UniPcVariant,
        prediction: ModelMean,
    ) -> Result<Self> {
        let bad = |m: String| Err(SampleError::InvalidOption(m));
        if !(1..=3).contains(&order) {
            return bad(format!("UniPC has orders 1..=3, got {order}"));
        }
        if prediction == ModelMean::PreviousX {
            return bad("UniPC needs an ε, x_0 or v prediction, not x_{t−1}".into());
        }
        let n = schedule.timesteps.len();
        if n == 0 || schedule.sigmas.len() != n + 1 {
            return bad(format!("a schedule of {n} steps needs {} σ, got {}", n + 1, schedule.sigmas.len()));
        }
        if schedule.timesteps.iter().any(|&t| !(t >= 0.0 && t.fract() == 0.0)) {
            return bad("UniPC evaluates the network at whole timesteps".into());
        }
        let s = &schedule.sigmas;
        if s[..n].iter().any(|&v| !(v.is_finite() && v > 0.0))
            || s[n].is_nan()
            || s[n] < 0.0
            || s.windows(2).any(|w| w[1] >= w[0])
        {
            return bad("σ must be finite, positive and decreasing, to a final σ ≥ 0".into());
        }
        if variant == UniPcVariant::Bh1 && s[n] == 0.0 {
            return bad("bh1 cannot step onto σ = 0 (B(h) = h is −∞ there); end at σ_min or use bh2".into());
        }
        Ok(Self {
            timesteps: schedule.timesteps.iter().map(|&t| t as usize).collect(),
            sigmas: s.iter().map(|&v| v as f32).collect(),
            order,
            variant,
            prediction,
            lower_order_final: true,
            disable_corrector: Vec::new(),
            clip_denoised: false,
        })
    }

    /// Steps of the run.
    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    fn alpha_sigma(sigma: f32) -> (f32, f32) {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        (alpha, sigma * alpha)
    }

    fn lambda(&self, k: usize) -> f32 {
        let (a, s) = Self::alpha_sigma(self.sigmas[k]);
        a.ln() - s.ln()
    }

    /// x̂_0 from the network output at step `k`.
    pub fn data_prediction<const D: usize>(
        &self,
        k: usize,
        x: Tensor<D>,
        model_output: Tensor<D>,
    ) -> Tensor<D> {
        let (alpha, sigma) = Self::alpha_sigma(self.sigmas[k]);
        let x0 = match self.prediction {
            ModelMean::Epsilon => (x - model_output.mul_scalar(sigma)).div_scalar(alpha),
            ModelMean::StartX => model_output,
            _ => x.mul_scalar(alpha) - model_output.mul_scalar(sigma),
        };
        if self.clip_denoised { x0.clamp(-1.0, 1.0) } else { x0 }
    }

    /// The common part of UniP and UniC from step `s0` to `t` (σ indices): the ratio
    /// σ'_t/σ'_{s0}, α_t, φ, B(h), and the coefficients b_1 … b_p and r_k for the `p − 1`
    /// previous steps `s0 − 1, s0 − 2, …`.
    fn coefficients(&self, s0: usize, t: usize, p: usize) -> (f32, f32, f32, f32, Vec<f32>, Vec<f32>) {
        let (alpha_t, sig_t) = Self::alpha_sigma(self.sigmas[t]);
        let (_, sig_s0) = Self::alpha_sigma(self.sigmas[s0]);
        let lambda_s0 = self.lambda(s0);
        let h = self.lambda(t) - lambda_s0;
        let rks: Vec<f32> = (1..p).map(|i| (self.lambda(s0 - i) - lambda_s0) / h).collect();
        let hh = -h;
        let phi = hh.exp_m1();
        let b_h = match self.variant {
            UniPcVariant::Bh1 => hh,
            UniPcVariant::Bh2 => hh.exp_m1(),
        };
        let mut g = phi / hh - 1.0;
        let mut factorial = 1.0_f32;
        let mut b = Vec::with_capacity(p);
        for i in 1..=p {
            b.push(g * factorial / b_h);
            factorial *= (i + 1) as f32;
            g = g / hh - 1.0 / factorial;
        }
        (sig_t / sig_s0, alpha_t, phi, b_h, rks, b)
    }

    /// ρ from R ρ = b over the first `m` rows and columns (R_{ij} = r_j^i, the last r being 1).
    fn rhos(rks: &[f32], b: &[f32], m: usize) -> Vec<f32> {
        let mut r: Vec<f64> = rks.iter().map(|&v| f64::from(v)).collect();
        r.push(1.0);
        let a = (0..m).map(|i| (0..m).map(|j| r[j].powi(i as i32)).collect()).collect();
        solve(a, b[..m].iter().map(|&v| f64::from(v)).collect()).into_iter().map(|v| v as f32).collect()
    }

    /// One step at step `state.steps_taken()`: corrects the current sample `x` with this network
    /// output (but at the first step), stores the data prediction, predicts the next sample.
    pub fn step<const D: usize>(
        &self,
        state: &mut UniPcState<D>,
        x: Tensor<D>,
        model_output: Tensor<D>,
    ) -> Result<UniPcStep<D>> {
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
        let m_t = self.data_prediction(k, x.clone(), model_output);
        // UniC: from the last sample (at σ_{k−1}) to σ_k with m_t included.
        let use_corrector =
            k > 0 && !self.disable_corrector.contains(&(k - 1)) && state.last_sample.is_some();
        let (x, corrected, corrector_order) = if use_corrector {
            let p = state.last_order;
            let last = state.last_sample.clone().expect("checked above");
            let (ratio, alpha_t, phi, b_h, rks, b) = self.coefficients(k - 1, k, p);
            let outs = &state.outputs;
            let m0 = outs[outs.len() - 1].clone();
            let rhos = if p == 1 { vec![0.5] } else { Self::rhos(&rks, &b, p) };
            let mut res = (m_t.clone() - m0.clone()).mul_scalar(rhos[p - 1]);
            for (i, &rk) in rks.iter().enumerate() {
                let d = (outs[outs.len() - 2 - i].clone() - m0.clone()).div_scalar(rk);
                res = res + d.mul_scalar(rhos[i]);
            }
            let xc = last.mul_scalar(ratio) - m0.mul_scalar(alpha_t * phi) - res.mul_scalar(alpha_t * b_h);
            (xc.clone(), Some(xc), p)
        } else {
            (x, None, 0)
        };
        state.outputs.push(m_t.clone());
        if state.outputs.len() > self.order {
            state.outputs.remove(0);
        }
        let this_order = if self.lower_order_final { self.order.min(n - k) } else { self.order };
        let p = this_order.min(state.lower_order_nums + 1);
        state.last_order = p;
        state.last_sample = Some(x.clone());
        // UniP: from σ_k to σ_{k+1}.
        let (ratio, alpha_t, phi, b_h, rks, b) = self.coefficients(k, k + 1, p);
        let outs = &state.outputs;
        let m0 = outs[outs.len() - 1].clone();
        let mut sample = x.mul_scalar(ratio) - m0.clone().mul_scalar(alpha_t * phi);
        if p >= 2 {
            let rhos = if p == 2 { vec![0.5] } else { Self::rhos(&rks, &b, p - 1) };
            let mut res: Option<Tensor<D>> = None;
            for (i, &rk) in rks.iter().enumerate() {
                let d = (outs[outs.len() - 2 - i].clone() - m0.clone()).div_scalar(rk).mul_scalar(rhos[i]);
                res = Some(match res {
                    Some(r) => r + d,
                    None => d,
                });
            }
            if let Some(res) = res {
                sample = sample - res.mul_scalar(alpha_t * b_h);
            }
        }
        if state.lower_order_nums < self.order {
            state.lower_order_nums += 1;
        }
        state.step += 1;
        Ok(UniPcStep { sample, pred_x0: m_t, corrected, order: p, corrector_order })
    }
}
