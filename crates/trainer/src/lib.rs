//! The fine-tuning run around the model: its configuration, learning-rate schedule,
//! validation metrics, run folder and reports.
//!
//! - [`RunConfig`]: every setting of a run, layered defaults < TOML file < `DAO_*` environment
//!   < `--set key=value`, validated at load and written back as the run folder's `config.toml`.
//! - [`CosineWithWarmup`]: transformers' `get_cosine_schedule_with_warmup`.
//! - [`ValidationMetrics`]: MSE, MAE, RMSE, R², accuracy, weighted precision/recall/F1, confusion.
//! - [`RunDir`]: the run folder (`config.toml`, `metrics.csv`, `steps.csv`), written crash-safe.
//! - [`write_report`] and [`compare`]: `report.md` and SVG plots of one run, the paper-style
//!   comparison of several.
//!
//! - [`train`]: the training loop ([`SentimentModel`], any `dao` weighting strategy, AdamW,
//!   checkpoints in `checkpoints/{last,best}`, bit-exact resume on CPU); [`evaluate_run`],
//!   [`predict_file`] and [`export_run`] use a finished run ([`RowsProgress`] shows how far
//!   they are); [`DataParallel`] spreads the encoder over several devices.
//! - [`keep_freed_memory`] and [`join_the_thread_pool`]: the allocator and thread settings the
//!   binaries train with.

mod allocator;
mod config;
mod crate_configs;
mod export;
mod inference;
mod metrics;
mod model;
mod optimizer;
mod parallel;
mod progress;
mod report;
mod run_dir;
mod schedule;
mod threads;
mod train;
mod weighting;

pub use allocator::keep_freed_memory;
pub use config::{
    BadRowPolicy, ConfigDifference, ConfigError, ConfigSources, DaoConfig, DataConfig, Finetune,
    GradNormWrt, HeadsConfig, InputMode, LoraConfig, Metric, ModelConfig, RunConfig, TrainConfig,
    WeightingConfig, WeightingStrategy, ENV_PREFIX, ENV_SEPARATOR,
};
pub use export::{export_run, HEADS_FILE};
pub use inference::{
    evaluate_set, in_length_order, output_file, predict_file, InferenceOptions, Prediction,
    Predictions,
};
pub use metrics::{MetricsError, ValidationAccumulator, ValidationMetrics, NUM_CLASSES};
pub use model::{SentimentModel, MODEL_FILE};
pub use optimizer::{AdamW, AdamWSettings, OptimizerStateError};
pub use parallel::{DataParallel, ParallelForward};
pub use progress::RowsProgress;
pub use report::{compare, write_report, Comparison, ComparisonRow, ReportError, ReportFiles};
pub use run_dir::{
    peak_memory_bytes, replace_file, same_path, write_atomic, EpochRow, RunDir, RunDirError,
    StepRow,
};
pub use schedule::{updates_per_run, CosineWithWarmup};
pub use threads::join_the_thread_pool;
pub use train::{
    checkpoint_dir, epoch_line, evaluate_run, holds_run, metrics_table, read_state, train,
    DataFingerprint, FileDigest, LastCheckpoint, RunData, TrainError, TrainOptions, TrainState,
    TrainSummary, CHECKPOINT_NAMES,
};
pub use weighting::RunWeighting;
