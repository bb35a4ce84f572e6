//! # diffusion-sample
//!
//! Samplers for Gaussian diffusion models, on any burn device and any data rank: ancestral DDPM
//! (fixed or learned variance, full or respaced chains), DDIM with η (deterministic at η = 0),
//! DDIM inversion, annealed Langevin dynamics and predictor-corrector sampling, with classifier
//! guidance as a mean shift (DDPM) or a score shift (DDIM); spherical interpolation of latents.
//! Noise is addressed by `(seed, sample id, step)` ([`NoiseSource`]), so results do not depend on
//! batch size.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use diffusion_core::{BetaSchedule, GaussianDiffusion};
//! use diffusion_sample::{Method, NoiseSource, SampleOptions, sample};
//!
//! let device = Device::flex();
//! let diffusion = GaussianDiffusion::from_schedule(&BetaSchedule::Cosine { num_timesteps: 100 }, Default::default())
//!     .unwrap()
//!     .respace_spec("ddim10")
//!     .unwrap();
//! // A stand-in network that predicts no noise.
//! let model = |x: Tensor<2>, _t: Tensor<1>| x.zeros_like();
//! let ids: Vec<u64> = (0..8).collect();
//! let out = sample(&diffusion, &model, &ids, [1, 2], &NoiseSource::new(0), Method::Ddim { eta: 0.0 },
//!                  &SampleOptions::default(), None, &device);
//! assert_eq!(out.sample.dims(), [8, 2]);
//! ```

pub mod likelihood;
pub mod metrics;
pub mod noise;
pub mod output;
pub mod sampler;

pub use noise::NoiseSource;
pub use sampler::{
    Denoiser, Guidance, Method, SampleOptions, SampleOutput, ddim_reverse_loop, sample, slerp,
};
