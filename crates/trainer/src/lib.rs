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
//! The training loop itself lands here once the model crates (heads, dao, lora, data) do.

mod config;
mod metrics;
mod report;
mod run_dir;
mod schedule;

pub use config::{
    BadRowPolicy, ConfigError, ConfigSources, DaoConfig, DataConfig, Finetune, GradNormWrt,
    HeadsConfig, InputMode, LoraConfig, Metric, ModelConfig, RunConfig, TrainConfig,
    WeightingConfig, WeightingStrategy, ENV_PREFIX, ENV_SEPARATOR,
};
pub use metrics::{MetricsError, ValidationAccumulator, ValidationMetrics, NUM_CLASSES};
pub use report::{compare, write_report, Comparison, ComparisonRow, ReportError, ReportFiles};
pub use run_dir::{peak_memory_bytes, write_atomic, EpochRow, RunDir, RunDirError, StepRow};
pub use schedule::{updates_per_run, CosineWithWarmup};
