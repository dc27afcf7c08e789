//! What can go wrong when a weighting strategy is configured or handed a step.

use thiserror::Error;

/// Errors of the `dao` crate. Bad input never panics: each variant names what is wrong.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DaoError {
    /// A strategy name that [`crate::StrategyConfig::from_name`] does not know.
    #[error(
        "unknown weighting strategy `{0}` (expected one of: regression-only, constant, dao, \
         uncertainty, dwa, gradnorm, dao-grad-balance-only, dao-imbalance-only)"
    )]
    UnknownStrategy(String),
    /// A configuration value out of its domain.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A tensor handed in with the wrong rank or size.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A class label outside `0..num_classes`.
    #[error("label {label} at batch position {index} is outside 0..{num_classes}")]
    LabelOutOfRange {
        /// The offending label.
        label: i64,
        /// Its position in the batch.
        index: usize,
        /// The number of classes (the logits' last dimension).
        num_classes: usize,
    },
    /// A gradient norm that is negative, NaN or infinite.
    #[error(
        "gradient norm of task {task} ({}) is {value}: norms must be finite and >= 0 (a \
         non-finite loss, head output or representation gives one)",
        if *.task == 0 { "regression" } else { "classification" }
    )]
    InvalidNorm {
        /// The task's index (0 = regression, 1 = classification).
        task: usize,
        /// The value received.
        value: f32,
    },
    /// Neither task's loss from the heads closure reaches the H the closure was handed, though
    /// one needs a gradient: the heads were computed from a tensor captured outside the
    /// closure (or both heads stop the gradient, so the trunk could never learn from them).
    #[error(
        "neither task's loss depends on the H handed to the heads closure: compute the heads \
         from the closure's argument (a representation captured from outside the closure is \
         part of the model's graph, which measuring the tasks' gradients has now consumed)"
    )]
    RepresentationUnused,
    /// The shared representation is not on an autodiff device, so no gradient can be taken.
    #[error(
        "the shared representation is not an autodiff tensor: build the model on \
         `device.autodiff()` for training"
    )]
    NotAutodiff,
    /// A strategy with parameters of its own built on a device without autodiff: they could
    /// never learn.
    #[error(
        "weighting strategy `{0}` learns parameters of its own: build it on the training \
         device, `device.autodiff()`"
    )]
    NotAutodiffDevice(&'static str),
    /// `grad_norm_wrt = "shared-parameters"` was configured but the step gave no
    /// [`crate::SharedParameters`].
    #[error(
        "grad_norm_wrt = \"shared-parameters\" needs `StepInput::shared` (a fresh forward of the \
         shared trunk and its parameters); none was given"
    )]
    MissingSharedParameters,
    /// A saved state that cannot be written or read back.
    #[error("weighting state {path}: {reason}")]
    State {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor could not be read back to the host.
    #[error("cannot read {what} back from the device: {reason}")]
    Readback {
        /// Which value.
        what: &'static str,
        /// burn's error message.
        reason: String,
    },
}
