//! Errors of the lora crate: each says which setting or operation is wrong.

/// Everything that can go wrong configuring, merging or unmerging an adapter.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("invalid LoRA config: {0}")]
    InvalidConfig(String),
    #[error("LoRA weights of the wrong shape: {0}")]
    Shape(String),
    #[error("unsupported PEFT adapter config: {0}")]
    UnsupportedPeft(String),
    #[error("the layer has no LoRA adapter")]
    NoAdapter,
    #[error("the LoRA adapter is already merged into the base weight")]
    AlreadyMerged,
    #[error("the LoRA adapter is not merged, so it cannot be unmerged")]
    NotMerged,
    #[error("refusing to merge: the LoRA update scaling·BA has non-finite values (NaN or ±inf)")]
    NonFiniteUpdate,
}
