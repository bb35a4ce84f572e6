//! Typed errors of the sampling library.

use std::path::PathBuf;

/// What can go wrong when stepping, sampling or opening a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// A timestep index outside the (respaced) process.
    #[error(
        "timestep {t} is out of range: the process has {num_timesteps} steps (indices 0..{num_timesteps})"
    )]
    TimestepOutOfRange {
        /// The index given.
        t: usize,
        /// Steps of the process.
        num_timesteps: usize,
    },
    /// One timestep per sample was given, but not as many as the batch has samples.
    #[error("{got} timesteps were given for a batch of {batch} samples")]
    TimestepCount {
        /// Timesteps given.
        got: usize,
        /// Batch size.
        batch: usize,
    },
    /// A tensor of the wrong shape.
    #[error("{what} has shape {got:?}, expected {expected:?}")]
    Shape {
        /// Which argument.
        what: &'static str,
        /// Its shape.
        got: Vec<usize>,
        /// The shape it must have.
        expected: Vec<usize>,
    },
    /// A stochastic step was called without noise where it needs some.
    #[error(
        "{step} needs a noise tensor of the sample's shape here (some sample has t > 0 and a non-zero σ)"
    )]
    MissingNoise {
        /// Which step.
        step: &'static str,
    },
    /// An option out of its range.
    #[error("{0}")]
    InvalidOption(String),
    /// The process could not be built (schedule, respacing).
    #[error(transparent)]
    Process(#[from] diffusion_core::Error),
    /// A checkpoint could not be read or does not fit.
    #[error("{}: {reason}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The network layer's error (reading weights, configurations).
    #[error(transparent)]
    Model(#[from] diffusion_models::ModelError),
}

/// `Result` with [`SampleError`].
pub type Result<T> = std::result::Result<T, SampleError>;
