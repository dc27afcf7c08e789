//! Errors of the heads crate: each names the file or tensor involved.

use std::path::PathBuf;

/// Everything that can go wrong building, loading or saving the heads.
#[derive(Debug, thiserror::Error)]
pub enum HeadsError {
    #[error("invalid heads config: {0}")]
    InvalidConfig(String),
    #[error("{}: cannot read or write heads: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    #[error("{}: tensor `{tensor}` is missing from the heads file", path.display())]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{}: tensor `{tensor}` has shape {found:?}, the heads expect {expected:?}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
}
