//! The errors of a training run.

use std::path::PathBuf;

use thiserror::Error;

use crate::data::DataError;

/// Why a run could not start, continue or finish.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TrainError {
    /// An invalid configuration (names the field and the problem).
    #[error("invalid training config: {0}")]
    Config(String),
    /// Bad data.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A checkpoint that cannot be written or read back.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `--resume` that cannot be honoured.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// A file of the run directory.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The loss became NaN or infinite; the last good checkpoint is untouched.
    #[error(
        "non-finite loss at step {step} (microbatch {micro}): {detail}; the run stopped and the \
         last checkpoint (step {last_checkpoint}) is intact"
    )]
    NonFinite {
        /// Optimiser step.
        step: u64,
        /// Microbatch within the step.
        micro: usize,
        /// Which term and which timesteps.
        detail: String,
        /// The step of the newest checkpoint on disk (0: none).
        last_checkpoint: u64,
    },
    /// The training loop failed (burn's learner reported an error).
    #[error("training failed: {0}")]
    Learner(String),
    /// A model error (building the network, writing weights).
    #[error(transparent)]
    Model(#[from] diffusion_models::ModelError),
}

/// Shorthand.
pub type Result<T> = std::result::Result<T, TrainError>;
