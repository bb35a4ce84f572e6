//! # diffusion-models
//!
//! The networks of diffusion-rs as burn modules — the ADM UNet ([`UNet`]), its encoder as a
//! noise-aware classifier ([`EncoderUNet`]) and a small MLP for 2-D data ([`Mlp`]) — mapping
//! `(x_t, t, optional class) → output`. They know nothing of noise schedules (that is
//! `diffusion-core`).
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use diffusion_models::UNetConfig;
//!
//! let device = Device::flex();
//! let config = UNetConfig::tiny();
//! let unet = config.init(&device);
//! let x = Tensor::<4>::zeros([2, 3, 32, 32], &device);
//! let t = Tensor::<1>::from_floats([10.0, 500.0], &device);
//! let out = unet.forward(x, t, None);
//! assert_eq!(out.dims(), [2, 6, 32, 32]); // ε and the variance interpolation
//! ```
//!
//! Structures follow openai/guided-diffusion's `unet.py` module for module, so parameter counts
//! are equal (the `cifar10_iddpm` preset has 52,546,438) and PyTorch checkpoints import by a fixed
//! set of key renames ([`checkpoint::import_pytorch_unet`]).

pub mod blocks;
pub mod checkpoint;
pub mod classifier;
pub mod config_json;
pub mod embedding;
pub mod error;
pub mod mlp;
pub mod openai;
pub mod ops;
pub mod summary;
pub mod unet;

pub use blocks::{AttentionOrder, Resample};
pub use classifier::{EncoderUNet, EncoderUNetConfig, Pool};
pub use embedding::timestep_embedding;
pub use error::{ModelError, Result};
pub use mlp::{Mlp, MlpConfig};
pub use unet::{UNet, UNetConfig};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
