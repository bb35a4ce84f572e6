//! # diffusion-sample
//!
//! Samplers for Gaussian diffusion models, on any burn device and any data rank: ancestral DDPM
//! (fixed or learned variance, full or respaced chains), DDIM with η (deterministic at η = 0),
//! DDIM inversion, annealed Langevin dynamics and predictor-corrector sampling, with classifier
//! guidance as a mean shift (DDPM) or a score shift (DDIM); spherical interpolation of latents;
//! the variational bound per image; checkpoints opened with their process.
//!
//! Two levels, one formula each:
//! - [`step`]: single steps from your own `x_t`, index `t`, network output and **noise tensor**
//!   (diffusers' `scheduler.step(model_output, t, sample)` idiom), returning named structs
//!   (sample, x̂_0, …), plus guided-diffusion's `condition_mean` / `condition_score`;
//! - [`sampler`]: whole chains built from those steps, with noise addressed by
//!   `(seed, sample id, step)` ([`NoiseSource`]) so results do not depend on batch size.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use diffusion_core::{BetaSchedule, GaussianDiffusion};
//! use diffusion_sample::{Method, NoiseSource, SampleOptions, sample};
//!
//! let device = Device::flex();
//! let diffusion = GaussianDiffusion::from_schedule(&BetaSchedule::Cosine { num_timesteps: 100 }, Default::default())?
//!     .respace_spec("ddim10")?;
//! // A stand-in network that predicts no noise.
//! let model = |x: Tensor<2>, _t: Tensor<1>| x.zeros_like();
//! let ids: Vec<u64> = (0..8).collect();
//! let out = sample(&diffusion, &model, &ids, [1, 2], &NoiseSource::new(0), Method::Ddim { eta: 0.0 },
//!                  &SampleOptions::default(), None, &device)?;
//! assert_eq!(out.sample.dims(), [8, 2]);
//! # Ok::<(), diffusion_sample::SampleError>(())
//! ```
//!
//! Opening a trained checkpoint and stepping it by hand: see [`checkpoint`] and the
//! `examples/` of this crate.

pub mod cfg;
pub mod checkpoint;
pub mod dpm_solver;
pub mod error;
pub mod generate;
pub mod guidance;
pub mod karras;
pub mod likelihood;
pub mod metrics;
pub mod noise;
pub mod output;
pub mod sampler;
pub mod step;
pub mod unipc;

pub use cfg::{ClassifierFree, GuidedUnet};
pub use checkpoint::{
    DenoiserCheckpoint, DenoiserNetwork, open_classifier, open_denoiser, open_denoiser_as, open_denoiser_with,
};
pub use error::{Result, SampleError};
pub use guidance::{ClassifierGuidance, class_labels};
pub use noise::NoiseSource;
pub use sampler::{
    KeyedNoise, LoopNoise, Method, SampleOptions, SampleOutput, StepSchedule, ddim_reverse_loop, sample,
    sample_from, sample_with, slerp,
};
pub use step::{Denoiser, Guidance, Predictor, StepOptions, Timesteps};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
