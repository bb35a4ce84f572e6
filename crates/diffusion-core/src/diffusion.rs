//! [`GaussianDiffusion`]: the forward process q, the reverse process p_θ and the variational bound.
//!
//! | code | survey / paper |
//! |---|---|
//! | [`GaussianDiffusion::q_mean_variance`] | q(x_t∣x_0) = 𝒩(√ᾱ_t x_0, (1 − ᾱ_t) I) |
//! | [`GaussianDiffusion::q_sample`] | x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (reparameterisation) |
//! | [`GaussianDiffusion::q_posterior_mean_variance`] | q(x_{t−1}∣x_t, x_0) = 𝒩(μ̃_t(x_t, x_0), β̃_t I) |
//! | [`GaussianDiffusion::predict_x0_from_eps`] | x̂_0 = (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t |
//! | [`GaussianDiffusion::predict_eps_from_x0`] | ε̂ = (x_t/√ᾱ_t − x̂_0)/√(1/ᾱ_t − 1) |
//! | [`GaussianDiffusion::predict_x0_from_xprev`] | x̂_0 = (μ − coef2·x_t)/coef1 |
//! | [`GaussianDiffusion::predict_x0_from_v`] | x̂_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v (Salimans & Ho 2022) |
//! | [`GaussianDiffusion::p_mean_variance`] | p_θ(x_{t−1}∣x_t) = 𝒩(μ_θ, Σ_θ) |
//! | [`GaussianDiffusion::vb_terms_bpd`] | L_{t−1} = KL(q(x_{t−1}∣x_t,x_0) ‖ p_θ(x_{t−1}∣x_t)), L_0 = −log p_θ(x_0∣x_1) |
//! | [`GaussianDiffusion::prior_bpd`] | L_T = KL(q(x_T∣x_0) ‖ 𝒩(0, I)) |
//! | [`GaussianDiffusion::training_losses`] | L_simple, L_hybrid = L_simple + λ L_VLB, L_VLB |
//! | [`GaussianDiffusion::calc_bpd_loop`] | the full bound L_T + Σ L_t + L_0 in bits/dim |
//!
//! Timesteps are 0-based: `t = 0` is the first noising step (x_1 in the papers' 1-based notation).

use std::fmt;

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::likelihood::{discretized_gaussian_log_likelihood, mean_flat, normal_kl, normal_kl_standard};
use crate::respace::space_timesteps;
use crate::schedule::BetaSchedule;
use crate::tables::DiffusionTables;

/// What the network predicts (the mean parameterisation of p_θ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelMean {
    /// The noise ε (Ho et al. 2020, Eq. 11).
    #[default]
    Epsilon,
    /// The clean data x_0.
    StartX,
    /// The posterior mean μ̃_t, i.e. x_{t−1} directly.
    PreviousX,
    /// The velocity v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022) — not in improved-diffusion.
    Velocity,
}

/// How the variance Σ_θ of p_θ(x_{t−1}∣x_t) is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelVariance {
    /// Fixed Σ = β̃_t (the posterior variance, the lower bound on the reverse variance).
    #[default]
    FixedSmall,
    /// Fixed Σ = β_t (with β̃_1 at t = 0, as the reference does, for a better decoder likelihood).
    FixedLarge,
    /// The network outputs log Σ directly in extra channels.
    Learned,
    /// The network outputs v ∈ [−1, 1] in extra channels and
    /// Σ = exp(v' log β_t + (1 − v') log β̃_t) with v' = (v + 1)/2 (Nichol & Dhariwal 2021, Eq. 15).
    LearnedRange,
}

impl ModelVariance {
    /// Whether the network outputs variance channels (so its output has 2C channels).
    pub fn is_learned(self) -> bool {
        matches!(self, Self::Learned | Self::LearnedRange)
    }
}

/// The training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// L_simple: MSE to the target of [`ModelMean`]; plus the raw VLB term when Σ is learned.
    #[default]
    Mse,
    /// L_hybrid: MSE plus the VLB term scaled by T/1000 (λ = 0.001 at T = 1000), with the mean
    /// output detached inside the VLB term (Nichol & Dhariwal 2021, §3.1).
    RescaledMse,
    /// L_VLB: the KL term L_{t−1} (or the decoder NLL at t = 0), in bits/dim.
    Kl,
    /// L_VLB rescaled by T, an estimate of the full bound's sum.
    RescaledKl,
}

impl LossKind {
    /// Whether the loss is the variational bound itself.
    pub fn is_vb(self) -> bool {
        matches!(self, Self::Kl | Self::RescaledKl)
    }
}

/// What the network receives as its timestep input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepScaling {
    /// The index into the original (un-respaced) process, as a float.
    #[default]
    Original,
    /// The original index scaled by 1000/T_original, always in [0, 1000) (`rescale_timesteps`).
    Rescaled1000,
}

/// How p_θ is parameterised and trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct DiffusionConfig {
    /// The mean parameterisation.
    pub mean: ModelMean,
    /// The variance choice.
    pub variance: ModelVariance,
    /// The loss.
    pub loss: LossKind,
    /// The network's timestep input.
    pub timestep_scaling: TimestepScaling,
}

/// q(x_t∣x_0): mean √ᾱ_t x_0, variance 1 − ᾱ_t, log-variance log(1 − ᾱ_t).
#[derive(Debug, Clone)]
pub struct QMeanVariance<const D: usize> {
    /// √ᾱ_t x_0.
    pub mean: Tensor<D>,
    /// 1 − ᾱ_t, broadcast to the input's shape.
    pub variance: Tensor<D>,
    /// log(1 − ᾱ_t), broadcast to the input's shape.
    pub log_variance: Tensor<D>,
}

/// The posterior q(x_{t−1}∣x_t, x_0).
#[derive(Debug, Clone)]
pub struct Posterior<const D: usize> {
    /// μ̃_t = coef1 · x_0 + coef2 · x_t.
    pub mean: Tensor<D>,
    /// β̃_t, broadcast to the input's shape.
    pub variance: Tensor<D>,
    /// log β̃_t (clipped at t = 0), broadcast to the input's shape.
    pub log_variance_clipped: Tensor<D>,
}

/// p_θ(x_{t−1}∣x_t) and the x_0 prediction behind it.
#[derive(Debug, Clone)]
pub struct PMeanVariance<const D: usize> {
    /// μ_θ(x_t, t).
    pub mean: Tensor<D>,
    /// Σ_θ(x_t, t), same shape as x_t.
    pub variance: Tensor<D>,
    /// log Σ_θ(x_t, t).
    pub log_variance: Tensor<D>,
    /// x̂_0 (clipped to [−1, 1] when asked).
    pub pred_x0: Tensor<D>,
}

/// One term of the variational bound per sample.
#[derive(Debug, Clone)]
pub struct VbTerms<const D: usize> {
    /// L_{t−1} in bits/dim for t > 0 and the decoder NLL L_0 at t = 0; `[B]`.
    pub output: Tensor<1>,
    /// x̂_0 behind the model's mean.
    pub pred_x0: Tensor<D>,
}

/// Per-sample training losses; `[B]` each.
#[derive(Debug, Clone)]
pub struct TrainingLosses {
    /// The loss to minimise.
    pub loss: Tensor<1>,
    /// The MSE term, for MSE-type losses.
    pub mse: Option<Tensor<1>>,
    /// The VLB term, when it is part of the loss (learned variance or KL losses).
    pub vb: Option<Tensor<1>>,
}

/// The full variational bound of each sample, term by term, in bits/dim.
#[derive(Debug, Clone)]
pub struct BpdBreakdown {
    /// L_T + Σ_{t≥1} L_t + L_0 per sample; `[N]`.
    pub total_bpd: Tensor<1>,
    /// L_T = KL(q(x_T∣x_0) ‖ 𝒩(0, I)); `[N]`.
    pub prior_bpd: Tensor<1>,
    /// Column `t` holds the term at timestep `t`: the decoder NLL L_0 in column 0, the KL
    /// L_t in column t ≥ 1; `[N, T]`. (improved-diffusion stacks the same terms in reverse
    /// order, column 0 = t = T − 1.)
    pub vb: Tensor<2>,
    /// ‖x̂_0 − x_0‖² per timestep (mean over dimensions); `[N, T]`.
    pub x0_mse: Tensor<2>,
    /// ‖ε̂ − ε‖² per timestep (mean over dimensions); `[N, T]`.
    pub eps_mse: Tensor<2>,
}

impl BpdBreakdown {
    /// The decoder term L_0; `[N]`.
    pub fn decoder_bpd(&self) -> Tensor<1> {
        let n = self.vb.dims()[0];
        self.vb.clone().narrow(1, 0, 1).reshape([n])
    }
}

/// A Gaussian diffusion process (Ho et al. 2020; Nichol & Dhariwal 2021), possibly respaced.
///
/// Holds the `f64` tables ([`DiffusionTables`]), the parameterisation ([`DiffusionConfig`]) and, for
/// a respaced process, the map from its steps to the original process's steps. Tensor methods
/// take a per-sample timestep `t: Tensor<1, Int>` of shape `[B]` and work on any device and any
/// rank `D ≥ 1` (images `[B, C, H, W]`, points `[B, 2]`, …); coefficients are gathered on the
/// device from `f32` copies of the tables (cast after lookup, as in the reference), so nothing is
/// read back to the host.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianDiffusion {
    tables: DiffusionTables,
    config: DiffusionConfig,
    timestep_map: Vec<usize>,
    original_num_timesteps: usize,
    uploaded: Uploaded,
}

/// The `f32` tables already uploaded, per device: a coefficient gather reuses them instead of
/// uploading a T-length table for every call. Keyed by the table's values (so computed tables
/// are found too), at most [`Uploaded::CAPACITY`] of them; a clone starts empty.
#[derive(Default)]
struct Uploaded(std::sync::Mutex<Vec<(Device, Vec<f64>, Tensor<1>)>>);

impl Uploaded {
    const CAPACITY: usize = 64;

    fn get(&self, table: &[f64], device: &Device) -> Tensor<1> {
        let mut cache = self.0.lock().expect("upload cache");
        // burn's device equality ignores autodiff: a table uploaded for the training (autodiff)
        // device must not serve the evaluation (plain) one, nor the other way round.
        let same = |d: &Device| d == device && d.is_autodiff() == device.is_autodiff();
        if let Some((_, _, t)) = cache.iter().find(|(d, v, _)| same(d) && v.as_slice() == table) {
            return t.clone();
        }
        let values: Vec<f32> = table.iter().map(|&v| v as f32).collect();
        let n = values.len();
        let t = Tensor::<1>::from_data(TensorData::new(values, [n]), device);
        if cache.len() == Self::CAPACITY {
            cache.remove(0);
        }
        cache.push((device.clone(), table.to_vec(), t.clone()));
        t
    }
}

impl Clone for Uploaded {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Uploaded {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for Uploaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uploaded({} tables)", self.0.lock().map(|c| c.len()).unwrap_or(0))
    }
}

impl GaussianDiffusion {
    /// A process from β (each in (0, 1], at least 2 of them).
    pub fn new(betas: Vec<f64>, config: DiffusionConfig) -> Result<Self> {
        let tables = DiffusionTables::new(betas)?;
        check_terminal_snr(&tables, config)?;
        let n = tables.num_timesteps();
        Ok(Self {
            tables,
            config,
            timestep_map: (0..n).collect(),
            original_num_timesteps: n,
            uploaded: Uploaded::default(),
        })
    }

    /// A process from a [`BetaSchedule`].
    pub fn from_schedule(schedule: &BetaSchedule, config: DiffusionConfig) -> Result<Self> {
        Self::new(schedule.betas()?, config)
    }

    /// The process that keeps only the steps `kept` (sorted, distinct, indices of *this* process),
    /// with β recomputed so that ᾱ at every kept step is unchanged: β'_i = 1 − ᾱ_{k_i}/ᾱ_{k_{i−1}}.
    pub fn respace(&self, kept: &[usize]) -> Result<Self> {
        let n = self.num_timesteps();
        if kept.is_empty() {
            return Err(Error::InvalidKeptTimesteps("no timestep kept".into()));
        }
        if let Some(w) = kept.windows(2).find(|w| w[0] >= w[1]) {
            return Err(Error::InvalidKeptTimesteps(format!(
                "timesteps must be strictly increasing, found {} then {}",
                w[0], w[1]
            )));
        }
        if let Some(&bad) = kept.iter().find(|&&k| k >= n) {
            return Err(Error::InvalidKeptTimesteps(format!("timestep {bad} is out of range for T = {n}")));
        }
        let mut last = 1.0;
        let betas = kept
            .iter()
            .map(|&k| {
                let a = self.tables.alphas_cumprod[k];
                let beta = 1.0 - a / last;
                last = a;
                beta
            })
            .collect();
        let tables = DiffusionTables::new(betas)?;
        Ok(Self {
            tables,
            config: self.config,
            timestep_map: kept.iter().map(|&k| self.timestep_map[k]).collect(),
            original_num_timesteps: self.original_num_timesteps,
            uploaded: Uploaded::default(),
        })
    }

    /// [`Self::respace`] with the steps chosen by [`space_timesteps`] (`"250"`, `"10,15,20"`,
    /// `"ddim50"`).
    pub fn respace_spec(&self, spec: &str) -> Result<Self> {
        self.respace(&space_timesteps(self.num_timesteps(), spec)?)
    }

    /// The `f64` tables.
    pub fn tables(&self) -> &DiffusionTables {
        &self.tables
    }

    /// The parameterisation.
    pub fn config(&self) -> DiffusionConfig {
        self.config
    }

    /// The same process with another parameterisation (refused, as by [`Self::new`], where ᾱ
    /// reaches 0 and the new mean is not v).
    pub fn with_config(mut self, config: DiffusionConfig) -> Result<Self> {
        check_terminal_snr(&self.tables, config)?;
        self.config = config;
        Ok(self)
    }

    /// Whether ᾱ reaches 0 at the last step (zero terminal SNR, Lin et al. 2023): x_T is then pure
    /// noise, σ_T = ∞, and ε̂ at that step is x_T itself.
    pub fn has_zero_terminal_snr(&self) -> bool {
        self.tables.alphas_cumprod.last().is_some_and(|&a| a == 0.0)
    }

    /// T, the number of steps of this (possibly respaced) process.
    pub fn num_timesteps(&self) -> usize {
        self.tables.num_timesteps()
    }

    /// Steps of the process this one was respaced from (T itself when not respaced).
    pub fn original_num_timesteps(&self) -> usize {
        self.original_num_timesteps
    }

    /// For each step of this process, the step of the original process it stands for.
    pub fn timestep_map(&self) -> &[usize] {
        &self.timestep_map
    }

    /// Whether some original steps were skipped.
    pub fn is_respaced(&self) -> bool {
        self.num_timesteps() != self.original_num_timesteps
    }

    /// The channel count the network must output for data with `data_channels` channels.
    pub fn model_output_channels(&self, data_channels: usize) -> usize {
        if self.config.variance.is_learned() { 2 * data_channels } else { data_channels }
    }

    /// The timestep values to feed the network for process steps `t`: the original step
    /// (through the respacing map), scaled to [0, 1000) under [`TimestepScaling::Rescaled1000`].
    ///
    /// # Shapes
    /// `[B] → [B]`.
    pub fn model_timesteps(&self, t: Tensor<1, Int>) -> Tensor<1> {
        let map: Vec<f64> = self.timestep_map.iter().map(|&k| k as f64).collect();
        let mapped = self.uploaded.get(&map, &t.device()).select(0, t);
        match self.config.timestep_scaling {
            TimestepScaling::Original => mapped,
            TimestepScaling::Rescaled1000 => mapped.mul_scalar(1000.0 / self.original_num_timesteps as f64),
        }
    }

    /// The network's time for a *fractional* step `t` of this process (σ-space samplers evaluate
    /// the network between training steps): the respacing map interpolated linearly between
    /// ⌊t⌋ and ⌈t⌉ (exactly `t` for a process that is not respaced), ×1000/T when the process
    /// rescales its timesteps — [`Self::model_timesteps`] at integer `t`.
    pub fn model_time(&self, t: f64) -> f64 {
        let map = &self.timestep_map;
        let last = map.len() - 1;
        let t = t.clamp(0.0, last as f64);
        let lo = (t.floor() as usize).min(last);
        let w = t - lo as f64;
        let mapped = if w == 0.0 || lo == last {
            map[lo] as f64
        } else {
            map[lo] as f64 + w * (map[lo + 1] as f64 - map[lo] as f64)
        };
        match self.config.timestep_scaling {
            TimestepScaling::Original => mapped,
            TimestepScaling::Rescaled1000 => mapped * (1000.0 / self.original_num_timesteps as f64),
        }
    }

    /// Gathers `table[t]` per sample as `f32`, shaped `[B, 1, …, 1]` to broadcast against `like`.
    fn extract<const D: usize>(&self, table: &[f64], t: &Tensor<1, Int>, like: [usize; D]) -> Tensor<D> {
        let b = t.dims()[0];
        assert_eq!(like[0], b, "the timestep batch ({b}) must match the data batch ({})", like[0]);
        let gathered = self.uploaded.get(table, &t.device()).select(0, t.clone());
        let mut shape = [1usize; D];
        shape[0] = b;
        gathered.reshape(shape)
    }

    /// q(x_t∣x_0).
    ///
    /// # Shapes
    /// `x0: [B, …]`, `t: [B]`; every output `[B, …]`.
    pub fn q_mean_variance<const D: usize>(&self, x0: Tensor<D>, t: Tensor<1, Int>) -> QMeanVariance<D> {
        let dims = x0.dims();
        let tb = &self.tables;
        let zeros = x0.zeros_like();
        QMeanVariance {
            mean: self.extract(&tb.sqrt_alphas_cumprod, &t, dims) * x0,
            variance: zeros.clone()
                + self.extract(&tb.alphas_cumprod.iter().map(|a| 1.0 - a).collect::<Vec<_>>(), &t, dims),
            log_variance: zeros + self.extract(&tb.log_one_minus_alphas_cumprod, &t, dims),
        }
    }

    /// A draw from q(x_t∣x_0) with the given standard-normal `noise`:
    /// x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε.
    ///
    /// # Shapes
    /// `x0, noise: [B, …]`, `t: [B]` → `[B, …]`.
    pub fn q_sample<const D: usize>(&self, x0: Tensor<D>, t: Tensor<1, Int>, noise: Tensor<D>) -> Tensor<D> {
        let dims = x0.dims();
        assert_eq!(dims, noise.dims(), "q_sample: noise must have the shape of x0");
        self.extract(&self.tables.sqrt_alphas_cumprod, &t, dims) * x0
            + self.extract(&self.tables.sqrt_one_minus_alphas_cumprod, &t, dims) * noise
    }

    /// The posterior q(x_{t−1}∣x_t, x_0) (Ho et al. 2020, Eqs. 6–7).
    ///
    /// # Shapes
    /// `x0, x_t: [B, …]`, `t: [B]`; every output `[B, …]`.
    pub fn q_posterior_mean_variance<const D: usize>(
        &self,
        x0: Tensor<D>,
        x_t: Tensor<D>,
        t: Tensor<1, Int>,
    ) -> Posterior<D> {
        let dims = x_t.dims();
        assert_eq!(x0.dims(), dims, "q_posterior_mean_variance: x0 and x_t must share a shape");
        let tb = &self.tables;
        let zeros = x_t.zeros_like();
        Posterior {
            mean: self.extract(&tb.posterior_mean_coef1, &t, dims) * x0
                + self.extract(&tb.posterior_mean_coef2, &t, dims) * x_t,
            variance: zeros.clone() + self.extract(&tb.posterior_variance, &t, dims),
            log_variance_clipped: zeros + self.extract(&tb.posterior_log_variance_clipped, &t, dims),
        }
    }

    /// x̂_0 = x_t/√ᾱ_t − √(1/ᾱ_t − 1) ε̂ (Ho et al. 2020, Eq. 4 solved for x_0).
    ///
    /// # Shapes
    /// `x_t, eps: [B, …]`, `t: [B]` → `[B, …]`.
    pub fn predict_x0_from_eps<const D: usize>(
        &self,
        x_t: Tensor<D>,
        t: Tensor<1, Int>,
        eps: Tensor<D>,
    ) -> Tensor<D> {
        let dims = x_t.dims();
        assert_eq!(eps.dims(), dims, "predict_x0_from_eps: eps must have the shape of x_t");
        self.extract(&self.tables.sqrt_recip_alphas_cumprod, &t, dims) * x_t
            - self.extract(&self.tables.sqrt_recipm1_alphas_cumprod, &t, dims) * eps
    }

    /// ε̂ = (x_t/√ᾱ_t − x̂_0)/√(1/ᾱ_t − 1), the inverse of [`Self::predict_x0_from_eps`].
    ///
    /// # Shapes
    /// `x_t, x0: [B, …]`, `t: [B]` → `[B, …]`.
    pub fn predict_eps_from_x0<const D: usize>(
        &self,
        x_t: Tensor<D>,
        t: Tensor<1, Int>,
        x0: Tensor<D>,
    ) -> Tensor<D> {
        let dims = x_t.dims();
        assert_eq!(x0.dims(), dims, "predict_eps_from_x0: x0 must have the shape of x_t");
        let tb = &self.tables;
        if !self.has_zero_terminal_snr() {
            return (self.extract(&tb.sqrt_recip_alphas_cumprod, &t, dims) * x_t - x0)
                / self.extract(&tb.sqrt_recipm1_alphas_cumprod, &t, dims);
        }
        // Where ᾱ = 0 both coefficients are infinite and the limit is ε̂ = x_t (x_t = ε there):
        // ε̂ = m (a x_t − x̂_0)/b + (1 − m) x_t with m = 0, a = 0, b = 1 at those steps; the same
        // numbers as above elsewhere.
        let pick = |table: &[f64], zero: f64| -> Vec<f64> {
            table.iter().zip(&tb.alphas_cumprod).map(|(&v, &a)| if a == 0.0 { zero } else { v }).collect()
        };
        let a = pick(&tb.sqrt_recip_alphas_cumprod, 0.0);
        let b = pick(&tb.sqrt_recipm1_alphas_cumprod, 1.0);
        let keep: Vec<f64> = tb.alphas_cumprod.iter().map(|&a| if a == 0.0 { 0.0 } else { 1.0 }).collect();
        let noise: Vec<f64> = keep.iter().map(|k| 1.0 - k).collect();
        (self.extract(&a, &t, dims) * x_t.clone() - x0) / self.extract(&b, &t, dims)
            * self.extract(&keep, &t, dims)
            + self.extract(&noise, &t, dims) * x_t
    }

    /// x̂_0 = (x_{t−1} − coef2 · x_t)/coef1, inverting the posterior mean.
    ///
    /// # Shapes
    /// `x_t, x_prev: [B, …]`, `t: [B]` → `[B, …]`.
    pub fn predict_x0_from_xprev<const D: usize>(
        &self,
        x_t: Tensor<D>,
        t: Tensor<1, Int>,
        x_prev: Tensor<D>,
    ) -> Tensor<D> {
        let dims = x_t.dims();
        assert_eq!(x_prev.dims(), dims, "predict_x0_from_xprev: x_prev must have the shape of x_t");
        let tb = &self.tables;
        let recip: Vec<f64> = tb.posterior_mean_coef1.iter().map(|c| 1.0 / c).collect();
        let ratio: Vec<f64> =
            tb.posterior_mean_coef2.iter().zip(&tb.posterior_mean_coef1).map(|(c2, c1)| c2 / c1).collect();
        self.extract(&recip, &t, dims) * x_prev - self.extract(&ratio, &t, dims) * x_t
    }

    /// x̂_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v̂ (Salimans & Ho 2022).
    ///
    /// # Shapes
    /// `x_t, v: [B, …]`, `t: [B]` → `[B, …]`.
    pub fn predict_x0_from_v<const D: usize>(
        &self,
        x_t: Tensor<D>,
        t: Tensor<1, Int>,
        v: Tensor<D>,
    ) -> Tensor<D> {
        let dims = x_t.dims();
        assert_eq!(v.dims(), dims, "predict_x0_from_v: v must have the shape of x_t");
        self.extract(&self.tables.sqrt_alphas_cumprod, &t, dims) * x_t
            - self.extract(&self.tables.sqrt_one_minus_alphas_cumprod, &t, dims) * v
    }

    /// The velocity target v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022).
    ///
    /// # Shapes
    /// `x0, noise: [B, …]`, `t: [B]` → `[B, …]`.
    pub fn velocity<const D: usize>(&self, x0: Tensor<D>, t: Tensor<1, Int>, noise: Tensor<D>) -> Tensor<D> {
        let dims = x0.dims();
        assert_eq!(noise.dims(), dims, "velocity: noise must have the shape of x0");
        self.extract(&self.tables.sqrt_alphas_cumprod, &t, dims) * noise
            - self.extract(&self.tables.sqrt_one_minus_alphas_cumprod, &t, dims) * x0
    }

    /// Splits a network output into its mean part and, for a learned variance, its variance part
    /// (along dimension 1).
    ///
    /// # Shapes
    /// `[B, C, …]` (fixed variance) or `[B, 2C, …]` (learned) → `([B, C, …], Option<[B, C, …]>)`.
    pub fn split_model_output<const D: usize>(
        &self,
        model_output: Tensor<D>,
    ) -> (Tensor<D>, Option<Tensor<D>>) {
        if self.config.variance.is_learned() {
            let c2 = model_output.dims()[1];
            assert!(c2.is_multiple_of(2), "a learned-variance model must output 2C channels, got {c2}");
            let mut parts = model_output.chunk(2, 1);
            let var = parts.pop().expect("two chunks");
            let mean = parts.pop().expect("two chunks");
            (mean, Some(var))
        } else {
            (model_output, None)
        }
    }

    /// p_θ(x_{t−1}∣x_t) from the network output at (x_t, t), for every [`ModelMean`] ×
    /// [`ModelVariance`]; x̂_0 is clipped to [−1, 1] before forming the mean when `clip_denoised`.
    ///
    /// # Shapes
    /// `model_output: [B, C, …]` (or `[B, 2C, …]` for a learned variance), `x_t: [B, C, …]`,
    /// `t: [B]`; every output `[B, C, …]`.
    pub fn p_mean_variance<const D: usize>(
        &self,
        model_output: Tensor<D>,
        x_t: Tensor<D>,
        t: Tensor<1, Int>,
        clip_denoised: bool,
    ) -> PMeanVariance<D> {
        let dims = x_t.dims();
        let expected = self.model_output_channels(dims[1]);
        assert_eq!(
            model_output.dims()[1],
            expected,
            "p_mean_variance: the model output has {} channels, {:?} variance needs {expected}",
            model_output.dims()[1],
            self.config.variance
        );
        let tb = &self.tables;
        let (mean_out, var_out) = self.split_model_output(model_output);
        assert_eq!(mean_out.dims(), dims, "p_mean_variance: model output must match x_t in shape");
        let (variance, log_variance) = match (self.config.variance, var_out) {
            (ModelVariance::Learned, Some(v)) => (v.clone().exp(), v),
            (ModelVariance::LearnedRange, Some(v)) => {
                let min_log = self.extract(&tb.posterior_log_variance_clipped, &t, dims);
                let max_log = self.extract(&tb.log_betas, &t, dims);
                let frac = v.add_scalar(1.0).div_scalar(2.0);
                let log_variance = frac.clone() * max_log + frac.neg().add_scalar(1.0) * min_log;
                (log_variance.clone().exp(), log_variance)
            }
            (ModelVariance::FixedLarge, None) => {
                let zeros = x_t.zeros_like();
                (
                    zeros.clone() + self.extract(&tb.fixed_large_variance, &t, dims),
                    zeros + self.extract(&tb.fixed_large_log_variance, &t, dims),
                )
            }
            (ModelVariance::FixedSmall, None) => {
                let zeros = x_t.zeros_like();
                (
                    zeros.clone() + self.extract(&tb.posterior_variance, &t, dims),
                    zeros + self.extract(&tb.posterior_log_variance_clipped, &t, dims),
                )
            }
            _ => unreachable!("split_model_output returns variance channels exactly for learned variances"),
        };
        let process = |x: Tensor<D>| if clip_denoised { x.clamp(-1.0, 1.0) } else { x };
        let (mean, pred_x0) = match self.config.mean {
            ModelMean::PreviousX => {
                let pred_x0 = process(self.predict_x0_from_xprev(x_t, t, mean_out.clone()));
                (mean_out, pred_x0)
            }
            ModelMean::StartX | ModelMean::Epsilon | ModelMean::Velocity => {
                let pred_x0 = process(match self.config.mean {
                    ModelMean::StartX => mean_out,
                    ModelMean::Epsilon => self.predict_x0_from_eps(x_t.clone(), t.clone(), mean_out),
                    _ => self.predict_x0_from_v(x_t.clone(), t.clone(), mean_out),
                });
                let mean = self.q_posterior_mean_variance(pred_x0.clone(), x_t, t).mean;
                (mean, pred_x0)
            }
        };
        PMeanVariance { mean, variance, log_variance, pred_x0 }
    }

    /// The variational-bound term at `t` for the given network output, in bits/dim:
    /// KL(q(x_{t−1}∣x_t, x_0) ‖ p_θ(x_{t−1}∣x_t)) for t > 0, the discretised decoder NLL at t = 0.
    ///
    /// # Shapes
    /// `model_output`: as in [`Self::p_mean_variance`]; `x0, x_t: [B, C, …]`, `t: [B]`;
    /// `output: [B]`.
    pub fn vb_terms_bpd<const D: usize>(
        &self,
        model_output: Tensor<D>,
        x0: Tensor<D>,
        x_t: Tensor<D>,
        t: Tensor<1, Int>,
        clip_denoised: bool,
    ) -> VbTerms<D> {
        let true_post = self.q_posterior_mean_variance(x0.clone(), x_t.clone(), t.clone());
        let out = self.p_mean_variance(model_output, x_t, t.clone(), clip_denoised);
        let kl = normal_kl(
            true_post.mean,
            true_post.log_variance_clipped,
            out.mean.clone(),
            out.log_variance.clone(),
        );
        let kl = mean_flat(kl).div_scalar(std::f64::consts::LN_2);
        let decoder_nll =
            discretized_gaussian_log_likelihood(x0, out.mean, out.log_variance.mul_scalar(0.5)).neg();
        let decoder_nll = mean_flat(decoder_nll).div_scalar(std::f64::consts::LN_2);
        let output = kl.mask_where(t.equal_elem(0), decoder_nll);
        VbTerms { output, pred_x0: out.pred_x0 }
    }

    /// The prior term L_T = KL(q(x_T∣x_0) ‖ 𝒩(0, I)) in bits/dim. It has no parameters to learn.
    ///
    /// # Shapes
    /// `x0: [B, …]` → `[B]`.
    pub fn prior_bpd<const D: usize>(&self, x0: Tensor<D>) -> Tensor<1> {
        let b = x0.dims()[0];
        let t = Tensor::<1, Int>::full([b], (self.num_timesteps() - 1) as i64, &x0.device());
        let q = self.q_mean_variance(x0, t);
        mean_flat(normal_kl_standard(q.mean, q.log_variance)).div_scalar(std::f64::consts::LN_2)
    }

    /// Per-sample training losses at timesteps `t` with noise ε, calling `model(x_t, model_t)` once
    /// (`model_t` from [`Self::model_timesteps`]).
    ///
    /// - [`LossKind::Mse`] / [`LossKind::RescaledMse`]: `mse` = mean (target − output)², the target
    ///   being ε, x_0, μ̃_t or v by [`ModelMean`]. With a learned variance, `vb` is the bound's
    ///   term computed from the output with its mean channels **detached** (only Σ learns from it),
    ///   scaled by T/1000 for `RescaledMse` (λ = 0.001 at T = 1000); `loss = mse + vb`.
    /// - [`LossKind::Kl`] / [`LossKind::RescaledKl`]: `loss` = the bound's term (× T when rescaled).
    ///
    /// # Shapes
    /// `x0, noise: [B, C, …]`, `t: [B]`; the model maps `([B, C, …], [B])` to `[B, C, …]` (or
    /// `[B, 2C, …]` for a learned variance); every loss `[B]`.
    pub fn training_losses<const D: usize>(
        &self,
        x0: Tensor<D>,
        t: Tensor<1, Int>,
        noise: Tensor<D>,
        model: impl FnOnce(Tensor<D>, Tensor<1>) -> Tensor<D>,
    ) -> TrainingLosses {
        let x_t = self.q_sample(x0.clone(), t.clone(), noise.clone());
        let model_output = model(x_t.clone(), self.model_timesteps(t.clone()));
        let num_t = self.num_timesteps() as f64;
        match self.config.loss {
            LossKind::Kl | LossKind::RescaledKl => {
                let mut loss = self.vb_terms_bpd(model_output, x0, x_t, t, false).output;
                if self.config.loss == LossKind::RescaledKl {
                    loss = loss.mul_scalar(num_t);
                }
                TrainingLosses { loss: loss.clone(), mse: None, vb: Some(loss) }
            }
            LossKind::Mse | LossKind::RescaledMse => {
                let (mean_out, var_out) = self.split_model_output(model_output);
                let vb = var_out.map(|var_out| {
                    // Stop-gradient: the bound trains the variance only, never the mean.
                    let frozen = Tensor::cat(vec![mean_out.clone().detach(), var_out], 1);
                    let vb = self.vb_terms_bpd(frozen, x0.clone(), x_t.clone(), t.clone(), false).output;
                    if self.config.loss == LossKind::RescaledMse { vb.mul_scalar(num_t / 1000.0) } else { vb }
                });
                let target = match self.config.mean {
                    ModelMean::PreviousX => self.q_posterior_mean_variance(x0, x_t, t).mean,
                    ModelMean::StartX => x0,
                    ModelMean::Epsilon => noise,
                    ModelMean::Velocity => self.velocity(x0, t, noise),
                };
                assert_eq!(
                    target.dims(),
                    mean_out.dims(),
                    "training_losses: model output must match x0 in shape"
                );
                let diff = target - mean_out;
                let mse = mean_flat(diff.clone() * diff);
                let loss = match &vb {
                    Some(vb) => mse.clone() + vb.clone(),
                    None => mse.clone(),
                };
                TrainingLosses { loss, mse: Some(mse), vb }
            }
        }
    }

    /// The whole variational bound of each sample, in bits/dim, term by term: for every t from
    /// T − 1 down to 0, draws x_t ~ q(x_t∣x_0) with `noise(t)`, calls `model(x_t, model_t)` and
    /// evaluates [`Self::vb_terms_bpd`]; then adds the prior [`Self::prior_bpd`].
    ///
    /// The caller decides where the model runs (e.g. on a device without autodiff).
    ///
    /// # Shapes
    /// `x0: [N, C, …]`; `noise(t)` returns `[N, C, …]`; see [`BpdBreakdown`] for the outputs.
    pub fn calc_bpd_loop<const D: usize>(
        &self,
        x0: Tensor<D>,
        clip_denoised: bool,
        mut model: impl FnMut(Tensor<D>, Tensor<1>) -> Tensor<D>,
        mut noise: impl FnMut(usize) -> Tensor<D>,
    ) -> BpdBreakdown {
        let n = x0.dims()[0];
        let device = x0.device();
        let num_t = self.num_timesteps();
        let mut vb = Vec::with_capacity(num_t);
        let mut x0_mse = Vec::with_capacity(num_t);
        let mut eps_mse = Vec::with_capacity(num_t);
        for step in (0..num_t).rev() {
            let t = Tensor::<1, Int>::full([n], step as i64, &device);
            let eps = noise(step);
            let x_t = self.q_sample(x0.clone(), t.clone(), eps.clone());
            let out = model(x_t.clone(), self.model_timesteps(t.clone()));
            let terms = self.vb_terms_bpd(out, x0.clone(), x_t.clone(), t.clone(), clip_denoised);
            let d0 = terms.pred_x0.clone() - x0.clone();
            x0_mse.push(mean_flat(d0.clone() * d0));
            let eps_hat = self.predict_eps_from_x0(x_t, t, terms.pred_x0);
            let de = eps_hat - eps;
            eps_mse.push(mean_flat(de.clone() * de));
            vb.push(terms.output);
        }
        vb.reverse();
        x0_mse.reverse();
        eps_mse.reverse();
        let vb: Tensor<2> = Tensor::stack(vb, 1);
        let prior_bpd = self.prior_bpd(x0);
        let total_bpd = vb.clone().sum_dim(1).reshape([n]) + prior_bpd.clone();
        BpdBreakdown {
            total_bpd,
            prior_bpd,
            vb,
            x0_mse: Tensor::stack(x0_mse, 1),
            eps_mse: Tensor::stack(eps_mse, 1),
        }
    }
}

/// Refuses a zero-terminal-SNR table (ᾱ = 0 at the last step) for any mean but v.
fn check_terminal_snr(tables: &DiffusionTables, config: DiffusionConfig) -> Result<()> {
    if tables.alphas_cumprod.last().is_some_and(|&a| a <= 0.0) && config.mean != ModelMean::Velocity {
        let mean = match config.mean {
            ModelMean::Epsilon => "epsilon",
            ModelMean::StartX => "start_x",
            ModelMean::PreviousX => "previous_x",
            ModelMean::Velocity => "velocity",
        };
        return Err(Error::ZeroTerminalSnr { mean: mean.into() });
    }
    Ok(())
}

/// A process as data: the schedule and the parameterisation (what a checkpoint records so that
/// sampling needs no flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// The β schedule.
    pub schedule: BetaSchedule,
    /// Mean, variance, loss and timestep-input choices.
    #[serde(default)]
    pub config: DiffusionConfig,
    /// Rescale the schedule's β to zero terminal SNR (Lin et al. 2023, Algorithm 1;
    /// [`crate::rescale_zero_terminal_snr`]): ᾱ_T = 0, so x_T is pure noise as sampling assumes.
    /// Needs `config.mean` = v.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zero_terminal_snr: bool,
}

/// The diffusion layer's part of a checkpoint header: the process the network was trained for.
///
/// A diffusion-rs checkpoint's header holds an `extra` JSON object to which each layer adds its
/// own typed fields (this struct's, the trainer's training state beside them); readers parse
/// the object into the struct of the layer they need. `diffusion` is `None` for a network saved
/// without a process (e.g. imported PyTorch weights): a reader must then be told the process,
/// never guess it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// The process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diffusion: Option<ProcessSpec>,
}

impl ProcessSpec {
    /// The process of `schedule` as it is (no zero-terminal-SNR rescaling) with `config`.
    pub fn new(schedule: BetaSchedule, config: DiffusionConfig) -> Self {
        Self { schedule, config, zero_terminal_snr: false }
    }

    /// Builds the process.
    pub fn build(&self) -> Result<GaussianDiffusion> {
        let betas = self.schedule.betas()?;
        let betas = if self.zero_terminal_snr { crate::rescale_zero_terminal_snr(&betas) } else { betas };
        GaussianDiffusion::new(betas, self.config)
    }
}
