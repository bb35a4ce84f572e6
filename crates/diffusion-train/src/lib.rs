//! # diffusion-train
//!
//! Training diffusion models with burn. So far: the datasets ([`data`]) — built-in 2-D point sets
//! and procedural labelled images generated from a seed, and loaders for MNIST IDX, CIFAR-10
//! binary batches and image folders, each failing with an error that names the file and the
//! problem — and the EMA of weights ([`ema`]). The Learner glue, objectives and resume are the rest
//! of issue 4.
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

pub mod data;
pub mod ema;
