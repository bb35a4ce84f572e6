//! # diffusion-train
//!
//! Training diffusion models with burn's `Learner`: every objective of `diffusion-core`
//! (L_simple for ε / x_0 / v, L_hybrid with learned-range Σ, L_VLB) with uniform or
//! importance-sampled timesteps, AdamW with warm-up / anneal / global-norm clipping, gradient
//! accumulation, EMA copies, checkpoints every N steps that a resumed run continues bit for bit,
//! and the datasets ([`data`]): 2-D point sets and procedural shapes generated from a seed, MNIST
//! IDX, CIFAR-10 binary batches and image folders.
//!
//! ```
//! use diffusion_train::data::{DataSpec, load};
//!
//! let spec: DataSpec = "shapes".parse().unwrap();
//! let data = load(&spec, 32, 7).unwrap();
//! let images = data.as_images().unwrap();
//! assert_eq!((images.channels, images.size), (3, 32));
//! assert!(images.num_classes >= 4);
//! ```
//!
//! A run: [`TrainConfig::preset`] (or a JSON/TOML file), [`train`] with [`RunOptions`].

pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod data;
pub mod ema;
pub mod error;
pub mod loader;
pub mod log;
pub mod lr;
pub mod run;
pub mod stepper;
pub mod trainer;

pub use classifier::{ClassifierConfig, ClassifierSummary, train_classifier};
pub use config::{EmaWarmup, OptimConfig, SampleConfig, TimestepSamplerKind, TrainConfig};
pub use error::{Result, TrainError};
pub use run::{ProgressStyle, Resume, RunOptions, RunSummary, TrainedNets, train};
pub use trainer::{DiffusionTrainer, Net, SamplerState};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
