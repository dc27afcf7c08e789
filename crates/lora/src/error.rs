//! Errors of the lora crate: each says which setting or operation is wrong.

/// Everything that can go wrong configuring, merging or unmerging an adapter.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// A setting out of its domain (rank 0, α not positive and finite, dropout outside
    /// `[0, 1)`, no target module), named in the message.
    #[error("invalid LoRA config: {0}")]
    InvalidConfig(String),
    /// Adapter factors whose shapes do not fit the base layer or each other.
    #[error("LoRA weights of the wrong shape: {0}")]
    Shape(String),
    /// A PEFT `adapter_config.json` asking for what this crate does not compute (DoRA,
    /// per-module ranks, trained biases, `fan_in_fan_out`): refused rather than loaded as
    /// another function.
    #[error("unsupported PEFT adapter config: {0}")]
    UnsupportedPeft(String),
    /// Merging or unmerging a layer that has no adapter.
    #[error("the layer has no LoRA adapter")]
    NoAdapter,
    /// Merging (or adapting again) a layer whose adapter is already in its base weight.
    #[error("the LoRA adapter is already merged into the base weight")]
    AlreadyMerged,
    /// Unmerging a layer whose adapter is not merged.
    #[error("the LoRA adapter is not merged, so it cannot be unmerged")]
    NotMerged,
    /// A merge whose update `scaling · B A` has NaN or infinite values: the base weight is
    /// left as it was.
    #[error("refusing to merge: the LoRA update scaling·BA has non-finite values (NaN or ±inf)")]
    NonFiniteUpdate,
}
