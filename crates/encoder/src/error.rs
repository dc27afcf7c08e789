//! Errors of the encoder crate: each names the file or tensor involved.

use std::path::PathBuf;

/// Everything that can go wrong loading a model folder or encoding text.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: invalid model config: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("{}: no weights file (expected one of {expected}); pass --weights FILE to pick one", folder.display())]
    NoWeights { folder: PathBuf, expected: String },
    #[error("{}: several weights files ({found}); pass --weights FILE to pick one", folder.display())]
    AmbiguousWeights { folder: PathBuf, found: String },
    #[error("{}: cannot read checkpoint: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    #[error("{}: cannot write: {message}", path.display())]
    Write { path: PathBuf, message: String },
    #[error("{}: tensor `{tensor}` is missing from the checkpoint{hint}", path.display())]
    MissingTensor {
        path: PathBuf,
        tensor: String,
        hint: String,
    },
    #[error("{}: tensor `{tensor}` has shape {found:?}, the model expects {expected:?}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{}: tokenizer: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    #[error("input: {0}")]
    Input(String),
    #[error("device: {0}")]
    Device(String),
}
