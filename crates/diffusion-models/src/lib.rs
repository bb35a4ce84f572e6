//! # diffusion-models
//!
//! The networks of diffusion-rs — the ADM UNet, its encoder as a noise-aware classifier, and a
//! small MLP denoiser for 2-D data — as burn modules mapping `(x_t, t, optional class) → output`.
//! They know nothing of noise schedules (that is `diffusion-core`).
//!
//! Not implemented yet: this crate is a placeholder in the workspace layout (issue 3).
