//! # diffusion-sample
//!
//! Sampling and evaluation: ancestral DDPM, DDIM, Langevin and predictor-corrector samplers,
//! classifier guidance, likelihood in bits/dim, image output.
//!
//! Not implemented yet: this crate is a placeholder in the workspace layout (issue 5).
