//! # diffusion-train
//!
//! Training diffusion models with burn-train's Learner: objectives, importance-sampled timesteps,
//! EMA weights, exact resume, datasets.
//!
//! Not implemented yet: this crate is a placeholder in the workspace layout (issue 4).
