//! Reproducible noise keyed by (seed, sample id, step): [`NoiseSource`] lives in
//! `diffusion-core` so that training and sampling share it; re-exported here.

pub use diffusion_core::noise::{INITIAL_STEP, NoiseSource, SeedStream};
