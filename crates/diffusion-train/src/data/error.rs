//! One error type for every way data can be wrong; each names the file and the problem.

use std::path::PathBuf;

use thiserror::Error;

/// Bad data, bad files, bad specs.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DataError {
    /// A `--data` spec that is not understood.
    #[error("invalid data spec {spec:?}: {reason}")]
    InvalidSpec {
        /// The spec.
        spec: String,
        /// Why.
        reason: String,
    },
    /// A file that cannot be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A required file that is not there.
    #[error("{}: missing ({what})", path.display())]
    Missing {
        /// Where it was expected.
        path: PathBuf,
        /// What it should hold.
        what: String,
    },
    /// A file whose contents are wrong (magic number, size, label, format).
    #[error("{}: {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A folder with no usable images.
    #[error("{}: no images found (expected .png, .jpg or .jpeg files)", path.display())]
    Empty {
        /// The folder.
        path: PathBuf,
    },
}

impl DataError {
    pub(crate) fn invalid(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Self::Invalid { path: path.into(), problem: problem.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
