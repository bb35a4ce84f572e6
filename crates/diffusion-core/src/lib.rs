//! # diffusion-core
//!
//! The mathematics of Gaussian diffusion models — variance schedules, the forward process
//! q(x_t∣x_0), the posterior q(x_{t−1}∣x_t, x_0), the reverse process p_θ(x_{t−1}∣x_t) under every
//! mean × variance parameterisation, the variational bound in bits/dim, respacing and timestep
//! samplers — on any burn [`Device`](burn::tensor::Device), knowing nothing of networks: a model
//! is any closure `(x_t, t) → output`.
//!
//! Numbers agree with openai/improved-diffusion (commit 1bc7bbb): the `f64` tables to the last
//! bits, the `f32` tensor operations to float precision.
//!
//! ```
//! use burn::tensor::{Device, Distribution, Int, Tensor};
//! use diffusion_core::{BetaSchedule, DiffusionConfig, GaussianDiffusion, LossKind, ModelVariance};
//!
//! # fn main() -> Result<(), diffusion_core::Error> {
//! let device = Device::flex();
//! let config = DiffusionConfig {
//!     variance: ModelVariance::LearnedRange,
//!     loss: LossKind::RescaledMse, // L_hybrid
//!     ..DiffusionConfig::default()
//! };
//! let diffusion = GaussianDiffusion::from_schedule(&BetaSchedule::Cosine { num_timesteps: 1000 }, config)?;
//!
//! let x0 = Tensor::<4>::random([2, 3, 8, 8], Distribution::Uniform(-1.0, 1.0), &device);
//! let noise = Tensor::<4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
//! let t = Tensor::<1, Int>::from_ints([10, 900], &device);
//! // A stand-in network that outputs zeros for both the ε and the variance channels.
//! let losses = diffusion.training_losses(x0, t, noise, |x_t, _t| {
//!     Tensor::cat(vec![x_t.zeros_like(), x_t.zeros_like()], 1)
//! });
//! assert_eq!(losses.loss.dims(), [2]);
//!
//! // Sample with 50 steps: a respaced process whose betas are recomputed from the kept alpha-bars.
//! let fast = diffusion.respace_spec("ddim50")?;
//! assert_eq!(fast.num_timesteps(), 50);
//! # Ok(())
//! # }
//! ```
//!
//! ## Notation
//!
//! | code | symbol | meaning |
//! |---|---|---|
//! | `t` (0-based) | t (1-based) | timestep; `t = 0` here is the first noising step |
//! | `betas` | β_t | forward-process variance |
//! | `alphas_cumprod` | ᾱ_t | ∏ (1 − β_s) |
//! | `x0` | x_0 | data |
//! | `x_t` | x_t | noised data |
//! | `noise`, `eps` | ε | standard normal noise |
//! | `posterior_variance` | β̃_t | variance of q(x_{t−1}∣x_t, x_0) |
//! | `pred_x0` | x̂_0 | the model's estimate of x_0 |
//! | `vb` | L_t | variational-bound term, bits/dim |
//!
//! Module by module: [`schedule`] (β), [`tables`] (every derived table), [`diffusion`]
//! (the processes and losses), [`likelihood`] (KL and the decoder likelihood), [`respace`]
//! (which steps to keep), [`timestep_sampler`] (uniform and importance sampling of t).

pub mod diffusion;
pub mod error;
pub mod likelihood;
pub mod noise;
pub mod respace;
pub mod schedule;
pub mod sigmas;
pub mod sync;
pub mod tables;
pub mod timestep_sampler;

pub use diffusion::{
    BpdBreakdown, DiffusionConfig, GaussianDiffusion, LossKind, ModelMean, ModelVariance, PMeanVariance,
    Posterior, ProcessRecord, ProcessSpec, QMeanVariance, TimestepScaling, TrainingLosses, VbTerms,
};
pub use error::{Error, Result};
pub use likelihood::{
    approx_standard_normal_cdf, discretized_gaussian_log_likelihood, mean_flat, normal_kl, normal_kl_standard,
};
pub use noise::{NoiseSource, SeedStream};
pub use respace::{TimestepSpacing, space_timesteps, spaced_timesteps};
pub use schedule::{
    BetaSchedule, betas_for_alpha_bar, betas_from_alphas_cumprod, cosine_betas, linear_betas,
    rescale_zero_terminal_snr,
};
pub use sigmas::{
    SigmaSchedule, ZERO_SNR_ALPHA_BAR, continuous_timesteps, interp_sigma, karras_sigmas, sigma_alpha_bar,
    sigma_to_t, training_sigmas,
};
pub use tables::DiffusionTables;
pub use timestep_sampler::{LossSecondMomentSampler, TimestepBatch, TimestepSampler, UniformSampler};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
