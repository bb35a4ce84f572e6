//! Typed errors of `diffusion-models`.

use thiserror::Error;

/// What a caller can get wrong: configurations and checkpoint files.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A configuration that cannot build a network.
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    /// A file that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A checkpoint that is not one of ours, truncated, corrupt or for another model.
    #[error("{path}: invalid checkpoint: {reason}")]
    InvalidCheckpoint {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A PyTorch state dict that does not fit the model.
    #[error("{path}: cannot import PyTorch weights: {reason}")]
    Import {
        /// The file.
        path: String,
        /// What did not fit.
        reason: String,
    },
}

/// `Result` with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
