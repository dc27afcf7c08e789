//! The run configuration: plain serde structs with defaults, layered with the `config` crate.
//!
//! Precedence, lowest first:
//! 1. the defaults below (the paper's hyperparameters where it gives them);
//! 2. a TOML file (`configs/*.toml`);
//! 3. environment variables `DAO_<SECTION>__<KEY>`, e.g. `DAO_TRAIN__LR=2e-5` or
//!    `DAO_TRAIN__BATCH_SIZE=8`: prefix `DAO_`, then the section, then **two** underscores, then
//!    the key (keys keep their single underscores). Values are parsed as booleans or numbers
//!    where they look like one; `DAO_LORA__TARGETS=query,value` gives a list. Only variables
//!    with a `__` after the prefix are read, so unrelated ones such as `DAO_SHARED_DIR` are left
//!    alone; a misspelt key among them (`DAO_TRAIN__LRR`) is an error;
//! 4. `--set key=value` overrides, e.g. `--set train.lr=2e-5 --set lora.targets=["query"]`:
//!    the value is read as a TOML value (number, boolean, quoted string, array) where it parses
//!    as one and as a plain string otherwise (`--set model.path=models/roberta-large`).
//!
//! Unknown keys and values of the wrong type are errors that name the key and where it came
//! from (the file, the environment or `--set`). The result is validated once, at load.
//! Relative paths are relative to the working directory, not to the config file; a run's
//! `config.toml` holds them made absolute ([`RunConfig::with_absolute_paths`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that override the configuration (`DAO_TRAIN__LR`).
pub const ENV_PREFIX: &str = "DAO";
/// Separator between the section and the key in an environment variable's name.
pub const ENV_SEPARATOR: &str = "__";

/// Everything one fine-tuning run needs to know; serialised as the run folder's `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub lora: LoraConfig,
    #[serde(default)]
    pub weighting: WeightingConfig,
    #[serde(default)]
    pub dao: DaoConfig,
    #[serde(default)]
    pub heads: HeadsConfig,
}

/// `[model]`: the encoder's Hugging Face folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The model folder (`config.json`, `tokenizer.json`, weights). Required.
    pub path: PathBuf,
    /// Texts are truncated to this many tokens, special tokens included.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// A weights file to use instead of the one found in `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<PathBuf>,
}

fn default_max_len() -> usize {
    512
}

/// What the encoder reads from a data row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputMode {
    /// The text alone.
    #[default]
    Text,
    /// The text and the entity the score is about, as a sentence pair.
    #[serde(rename = "text+target")]
    TextTarget,
}

/// What to do with a data row that cannot be read (bad JSON, missing text, score out of range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BadRowPolicy {
    /// Stop with an error naming the file and line.
    #[default]
    Error,
    /// Skip the row (and count it).
    Skip,
}

/// `[data]`: JSON Lines files with `text`, `score` and optionally `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training rows. Required.
    pub train: PathBuf,
    /// Validation rows; when absent, `valid_fraction` of `train` is held out (seeded split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid: Option<PathBuf>,
    /// Share of `train` held out for validation when `valid` is absent (the paper's 9:1).
    #[serde(default = "default_valid_fraction")]
    pub valid_fraction: f64,
    #[serde(default)]
    pub input: InputMode,
    #[serde(default)]
    pub on_bad_row: BadRowPolicy,
    /// Field (JSON Lines) or column (CSV, TSV) names of the text, the score and the target.
    #[serde(default = "default_text_field")]
    pub text_field: String,
    #[serde(default = "default_score_field")]
    pub score_field: String,
    #[serde(default = "default_target_field")]
    pub target_field: String,
    /// The 5-class label's boundaries `[t0, t1, t2, t3]` (DAO-SPEC "Data"): finite and
    /// strictly increasing.
    #[serde(default = "default_thresholds")]
    pub thresholds: [f32; 4],
}

fn default_valid_fraction() -> f64 {
    0.1
}

fn default_text_field() -> String {
    data::DataConfig::default().text_field
}

fn default_score_field() -> String {
    data::DataConfig::default().score_field
}

fn default_target_field() -> String {
    data::DataConfig::default().target_field
}

fn default_thresholds() -> [f32; 4] {
    data::DataConfig::default().thresholds.0
}

/// Which parameters are trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Finetune {
    /// Every encoder parameter (and the heads).
    #[default]
    Full,
    /// LoRA adapters on the `[lora]` targets (and the heads); the encoder is frozen.
    Lora,
}

/// A validation metric, as named in `metrics.csv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    #[default]
    Mse,
    Mae,
    Rmse,
    R2,
    Accuracy,
    Precision,
    Recall,
    F1,
}

impl Metric {
    /// Every metric, in `metrics.csv` column order.
    pub const ALL: [Metric; 8] = [
        Metric::Mse,
        Metric::Mae,
        Metric::Rmse,
        Metric::R2,
        Metric::Accuracy,
        Metric::Precision,
        Metric::Recall,
        Metric::F1,
    ];

    /// `true` for R² and the classification scores, `false` for the errors.
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::Mse | Metric::Mae | Metric::Rmse)
    }

    /// Whether `candidate` is strictly better than `incumbent` (NaN is never better).
    pub fn improves(self, candidate: f64, incumbent: f64) -> bool {
        if candidate.is_nan() {
            return false;
        }
        if incumbent.is_nan() {
            return true;
        }
        if self.higher_is_better() {
            candidate > incumbent
        } else {
            candidate < incumbent
        }
    }

    /// The column name in `metrics.csv` (also the config spelling).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Mse => "mse",
            Metric::Mae => "mae",
            Metric::Rmse => "rmse",
            Metric::R2 => "r2",
            Metric::Accuracy => "accuracy",
            Metric::Precision => "precision",
            Metric::Recall => "recall",
            Metric::F1 => "f1",
        }
    }

    /// The label used in reports (`MSE`, `R²`, `F1`, …).
    pub fn label(self) -> &'static str {
        match self {
            Metric::Mse => "MSE",
            Metric::Mae => "MAE",
            Metric::Rmse => "RMSE",
            Metric::R2 => "R²",
            Metric::Accuracy => "accuracy",
            Metric::Precision => "precision",
            Metric::Recall => "recall",
            Metric::F1 => "F1",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `[train]`: the optimisation of the encoder and heads (AdamW, warm-up + cosine schedule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate of AdamW (encoder and heads).
    pub lr: f64,
    /// AdamW's ε.
    pub eps: f64,
    pub weight_decay: f64,
    /// Linear warm-up length in optimizer updates (see `schedule`).
    pub warmup_steps: usize,
    pub seed: u64,
    pub finetune: Finetune,
    /// Batches whose gradients are summed into one optimizer update of the model (the epoch's
    /// last, shorter group too). The loss weighting still works batch by batch: DAO weighs each
    /// batch and its own small network and α, β take their Adam step after every batch, as
    /// DAO-SPEC's per-batch steps say.
    pub grad_accum: usize,
    /// Also checkpoint every this many updates (absent: at the end of each epoch only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_every_steps: Option<usize>,
    /// The validation metric that picks the best epoch (and drives early stopping).
    pub best_metric: Metric,
    /// Stop after this many epochs without improvement of `best_metric` (absent: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_stopping_patience: Option<usize>,
    /// `cpu`, `cuda` or `cuda:N`; several (`cuda:0,cuda:1`) train data-parallel, the first
    /// holding the model between steps.
    pub device: String,
    /// On the CPU, multiply by the encoder's weights in bf16 with f32 sums on AMX tiles
    /// (Intel Sapphire Rapids and later) or AVX-512 BF16 where it outruns f32 FMAs (AMD Zen 4;
    /// f32 elsewhere): ≈ 0.6× the step time on AMX, at bf16's
    /// precision (`encoder::ProductPrecision`; BENCHMARKS.md measures the effect on the
    /// metrics). Master weights, optimizer, heads and attention scores stay f32.
    pub bf16_products: bool,
}

impl Default for TrainConfig {
    /// The paper's hyperparameters (batch 10, lr 1e-5, ε 1e-8, 100 epochs, seed 42, warm-up 100).
    fn default() -> Self {
        Self {
            epochs: 100,
            batch_size: 10,
            lr: 1e-5,
            eps: 1e-8,
            weight_decay: 0.01,
            warmup_steps: 100,
            seed: 42,
            finetune: Finetune::Full,
            grad_accum: 1,
            checkpoint_every_steps: None,
            best_metric: Metric::Mse,
            early_stopping_patience: None,
            device: "cpu".into(),
            bf16_products: false,
        }
    }
}

/// `[lora]`: adapters, used when `train.finetune = "lora"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    /// Scaling numerator (`scaling = alpha / rank`); absent means `alpha = rank` (the paper's
    /// choice), resolved at load so `config.toml` shows the value used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Dropout on the adapter input only.
    pub dropout: f64,
    /// Module names to wrap, PEFT-style suffixes (`dense` matches every dense projection).
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: None,
            dropout: 0.05,
            targets: ["query", "key", "value", "dense"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl LoraConfig {
    /// `alpha`, or `rank` when it was left out.
    pub fn alpha(&self) -> f64 {
        self.alpha.unwrap_or(self.rank as f64)
    }
}

/// How the regression and classification losses are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightingStrategy {
    /// `L = L_r`: the classification head is not trained.
    RegressionOnly,
    /// `L = (1 − w_c) L_r + w_c L_c` with `weighting.constant_w_cls`.
    Constant,
    /// The paper's DAO: gradient balance, imbalance-aware loss and learned task weights.
    #[default]
    Dao,
    /// Kendall et al.'s homoscedastic uncertainty weighting.
    Uncertainty,
    /// Dynamic weight average (Liu et al.).
    Dwa,
    /// GradNorm (Chen et al.).
    #[serde(rename = "gradnorm")]
    GradNorm,
    /// Ablation: DAO with the gradient balance only (plain `L_c`, no weight network).
    DaoGradBalanceOnly,
    /// Ablation: DAO's imbalance-aware loss alone, `L = (1 − w_c) L_r + w_c L_imb` with
    /// `weighting.constant_w_cls` (no gradient balance, no weight network).
    DaoImbalanceOnly,
}

/// `[weighting]`: the multi-task loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WeightingConfig {
    pub strategy: WeightingStrategy,
    /// `w_c` of the `constant` strategy, and the constant weight of `dao-imbalance-only` (the
    /// paper's headline baseline is 0.1).
    pub constant_w_cls: f64,
    /// Temperature of `dwa` (LibMTL's default 2).
    pub dwa_temperature: f64,
    /// Asymmetry α of `gradnorm` (LibMTL's default 1.5).
    pub gradnorm_alpha: f64,
}

impl Default for WeightingConfig {
    fn default() -> Self {
        Self {
            strategy: WeightingStrategy::Dao,
            constant_w_cls: 0.1,
            dwa_temperature: 2.0,
            gradnorm_alpha: 1.5,
        }
    }
}

/// Which gradients DAO's gradient balance measures (DAO-SPEC step 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GradNormWrt {
    /// `∂L/∂H` on a detached copy of the shared representation: almost free.
    #[default]
    Representation,
    /// Every trainable encoder parameter: two extra backward passes.
    SharedParameters,
}

/// `[dao]`: the DAO module (weight network and α, β), trained with its own Adam.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaoConfig {
    /// Adam learning rate of the DAO module (no schedule).
    pub lr: f64,
    /// Hidden width of the weight network (`FC1: 2→hidden`).
    pub hidden: usize,
    pub grad_norm_wrt: GradNormWrt,
    /// Initial α (> 0: α = softplus(a)).
    pub alpha_init: f64,
    /// Initial β (in (0, 1): β = sigmoid(b)).
    pub beta_init: f64,
    /// `false` freezes α and β at their initial values.
    pub learn_alpha_beta: bool,
}

impl Default for DaoConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            hidden: 16,
            grad_norm_wrt: GradNormWrt::Representation,
            alpha_init: 0.1,
            beta_init: 0.5,
            learn_alpha_beta: true,
        }
    }
}

/// `[heads]`: the regression and classification heads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadsConfig {
    pub hidden: usize,
    /// Dropout of the classification head.
    pub dropout: f64,
}

impl Default for HeadsConfig {
    fn default() -> Self {
        Self {
            hidden: 128,
            dropout: 0.1,
        }
    }
}

/// Everything wrong with a configuration; each variant names the key and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{origin}: cannot parse: {message}")]
    Parse { origin: String, message: String },
    #[error("unknown key `{key}` in {origin}{hint}")]
    UnknownKey {
        key: String,
        origin: String,
        hint: String,
    },
    #[error("missing key `{key}`")]
    MissingKey { key: String },
    #[error("key `{key}` in {origin}: {message}")]
    WrongValue {
        key: String,
        origin: String,
        message: String,
    },
    #[error("--set `{0}`: expected key=value, e.g. train.lr=2e-5")]
    BadOverride(String),
    /// Each problem names its key and where its value came from.
    #[error("invalid configuration: {}", .problems.join("; "))]
    Invalid { problems: Vec<String> },
    #[error("cannot write the configuration as TOML: {0}")]
    Serialize(String),
}

/// Where a configuration comes from, besides the defaults.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// The TOML file, if any.
    pub file: Option<PathBuf>,
    /// Environment variables (name, value); only `DAO_<SECTION>__<KEY>` ones are used.
    pub env: BTreeMap<String, String>,
    /// `key=value` overrides, applied last, in order.
    pub overrides: Vec<String>,
}

impl ConfigSources {
    /// A file and overrides, with this process's environment.
    pub fn with_process_env(file: Option<PathBuf>, overrides: Vec<String>) -> Self {
        Self {
            file,
            env: std::env::vars().collect(),
            overrides,
        }
    }

    /// A file alone: no environment, no overrides (e.g. re-reading a run folder's config).
    pub fn file_only(file: impl Into<PathBuf>) -> Self {
        Self {
            file: Some(file.into()),
            ..Self::default()
        }
    }
}

impl RunConfig {
    /// Loads `file` (if any) with this process's `DAO_*` environment and the `--set` overrides,
    /// then validates. See the module documentation for the precedence.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Self, ConfigError> {
        Self::load_from(&ConfigSources::with_process_env(
            file.map(Path::to_path_buf),
            overrides.to_vec(),
        ))
    }

    /// Loads from explicit sources (tests pass their own environment), then validates.
    pub fn load_from(sources: &ConfigSources) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = &sources.file {
            // Checked here so a missing file is an I/O error naming it, not "not found".
            std::fs::metadata(path).map_err(|error| ConfigError::Io {
                path: path.clone(),
                error,
            })?;
            builder = builder.add_source(
                config::File::from(path.as_path())
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(environment_source(&sources.env));
        let mut overridden = Vec::new();
        for item in &sources.overrides {
            let (key, value) = parse_override(item)?;
            builder =
                builder
                    .set_override(key.as_str(), value)
                    .map_err(|e| ConfigError::WrongValue {
                        key: key.clone(),
                        origin: "--set".into(),
                        message: e.to_string(),
                    })?;
            overridden.push(key);
        }
        let merged = builder.build().map_err(|e| parse_error(e, sources))?;
        let origins = Origins {
            merged: &merged,
            file: sources.file.as_deref(),
            overridden: &overridden,
        };
        let mut run: RunConfig = merged
            .clone()
            .try_deserialize()
            .map_err(|e| deserialize_error(e, &origins))?;
        check_value_types(&run, &origins)?;
        run.resolve();
        run.validate().map_err(|problems| ConfigError::Invalid {
            // Each problem names its key first; say where that key's value came from.
            problems: problems
                .into_iter()
                .map(|problem| match backticked_after(&problem, "`") {
                    Some(key)
                        if value_origin(&merged, &key).is_some()
                            || overridden.iter().any(|k| k == &key) =>
                    {
                        format!("{problem} (in {})", origins.of(&key, None))
                    }
                    Some(_) => format!("{problem} (the default)"),
                    None => problem,
                })
                .collect(),
        })?;
        Ok(run)
    }

    /// Fills values whose default depends on another key (`lora.alpha` = `lora.rank`).
    fn resolve(&mut self) {
        if self.lora.alpha.is_none() {
            self.lora.alpha = Some(self.lora.rank as f64);
        }
    }

    /// Every range violation, each naming its key; empty when the configuration is usable.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, key: &str, rule: &str, value: &dyn fmt::Display| {
            if !ok {
                problems.push(format!("`{key}` must be {rule}, got {value}"));
            }
        };
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let unit = |x: f64| (0.0..1.0).contains(&x);

        check(
            !self.model.path.as_os_str().is_empty(),
            "model.path",
            "a folder",
            &"\"\"",
        );
        check(
            self.model.max_len >= 2,
            "model.max_len",
            "≥ 2",
            &self.model.max_len,
        );
        check(
            !self.data.train.as_os_str().is_empty(),
            "data.train",
            "a file",
            &"\"\"",
        );
        if let Some(valid) = &self.data.valid {
            check(
                !valid.as_os_str().is_empty(),
                "data.valid",
                "a file (or absent: a split of data.train)",
                &"\"\"",
            );
        }
        let vf = self.data.valid_fraction;
        check(unit(vf), "data.valid_fraction", "in [0, 1)", &vf);
        check(
            self.data.valid.is_some() || vf > 0.0,
            "data.valid_fraction",
            "> 0 when `data.valid` is absent (no validation set otherwise)",
            &vf,
        );
        for (key, name) in [
            ("data.text_field", &self.data.text_field),
            ("data.score_field", &self.data.score_field),
            ("data.target_field", &self.data.target_field),
        ] {
            check(!name.trim().is_empty(), key, "a field name", &"\"\"");
        }
        let th = self.data.thresholds;
        check(
            th.iter().all(|v| v.is_finite()) && th[0] < th[1] && th[1] < th[2] && th[2] < th[3],
            "data.thresholds",
            "four finite, strictly increasing numbers",
            &format!("{th:?}"),
        );

        let t = &self.train;
        check(t.epochs >= 1, "train.epochs", "≥ 1", &t.epochs);
        check(t.batch_size >= 1, "train.batch_size", "≥ 1", &t.batch_size);
        check(positive(t.lr), "train.lr", "> 0", &t.lr);
        check(positive(t.eps), "train.eps", "> 0", &t.eps);
        check(
            t.weight_decay.is_finite() && t.weight_decay >= 0.0,
            "train.weight_decay",
            "≥ 0",
            &t.weight_decay,
        );
        check(t.grad_accum >= 1, "train.grad_accum", "≥ 1", &t.grad_accum);
        if let Some(n) = t.checkpoint_every_steps {
            check(n >= 1, "train.checkpoint_every_steps", "≥ 1", &n);
        }
        if let Some(n) = t.early_stopping_patience {
            check(n >= 1, "train.early_stopping_patience", "≥ 1", &n);
        }
        check(
            t.device.split(',').all(valid_device),
            "train.device",
            "cpu, cuda or cuda:N, or a comma-separated list such as cuda:0,cuda:1",
            &format!("{:?}", t.device),
        );

        let l = &self.lora;
        check(l.rank >= 1, "lora.rank", "≥ 1", &l.rank);
        check(positive(l.alpha()), "lora.alpha", "> 0", &l.alpha());
        check(unit(l.dropout), "lora.dropout", "in [0, 1)", &l.dropout);
        check(
            !l.targets.is_empty() && l.targets.iter().all(|s| !s.trim().is_empty()),
            "lora.targets",
            "a non-empty list of module names",
            &format!("{:?}", l.targets),
        );

        let w = &self.weighting;
        check(
            (0.0..=1.0).contains(&w.constant_w_cls),
            "weighting.constant_w_cls",
            "in [0, 1]",
            &w.constant_w_cls,
        );
        check(
            positive(w.dwa_temperature),
            "weighting.dwa_temperature",
            "> 0",
            &w.dwa_temperature,
        );
        check(
            w.gradnorm_alpha.is_finite() && w.gradnorm_alpha >= 0.0,
            "weighting.gradnorm_alpha",
            "≥ 0",
            &w.gradnorm_alpha,
        );

        let d = &self.dao;
        check(positive(d.lr), "dao.lr", "> 0", &d.lr);
        check(d.hidden >= 1, "dao.hidden", "≥ 1", &d.hidden);
        // α = softplus(a) and β = sigmoid(b) cannot reach the bounds.
        check(
            positive(d.alpha_init),
            "dao.alpha_init",
            "> 0",
            &d.alpha_init,
        );
        check(
            d.beta_init > 0.0 && d.beta_init < 1.0,
            "dao.beta_init",
            "in (0, 1)",
            &d.beta_init,
        );

        let h = &self.heads;
        check(h.hidden >= 1, "heads.hidden", "≥ 1", &h.hidden);
        check(unit(h.dropout), "heads.dropout", "in [0, 1)", &h.dropout);

        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// This configuration with its relative paths made absolute against the working directory
    /// (the model folder, the data files, and a weights file where one is found from here; a
    /// weights file that is not is the model folder's own and stays as it is). A run writes
    /// its `config.toml` so, and `evaluate`, `predict`, `export` and `report --compare` then
    /// open that run folder from any working directory.
    pub fn with_absolute_paths(&self) -> std::io::Result<Self> {
        let absolute = |path: &Path| std::path::absolute(path);
        let mut config = self.clone();
        config.model.path = absolute(&self.model.path)?;
        if let Some(weights) = &self.model.weights {
            if weights.exists() {
                config.model.weights = Some(absolute(weights)?);
            }
        }
        config.data.train = absolute(&self.data.train)?;
        if let Some(valid) = &self.data.valid {
            config.data.valid = Some(absolute(valid)?);
        }
        Ok(config)
    }

    /// This configuration with its model folder at `dir` (made absolute against the working
    /// directory): for a run whose model folder has moved since it was trained (`evaluate`,
    /// `predict` and `export`'s `--model`). A weights file that lay inside the old folder is
    /// looked for at the same place inside the new one.
    pub fn with_model_folder(&self, dir: &Path) -> std::io::Result<Self> {
        let dir = std::path::absolute(dir)?;
        let mut config = self.clone();
        if let Some(weights) = &self.model.weights {
            if let Ok(inside) = weights.strip_prefix(&self.model.path) {
                config.model.weights = Some(dir.join(inside));
            }
        }
        config.model.path = dir;
        Ok(config)
    }

    /// The configuration as TOML (what the run folder's `config.toml` holds); loading it back
    /// gives the same configuration.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError::Serialize(e.to_string()))
    }

    /// The keys whose values differ between `self` and `other`, dotted (`train.lr`), each with
    /// its value here and there (`None`: the key is absent, an optional value unset).
    pub fn differences(&self, other: &RunConfig) -> Vec<ConfigDifference> {
        fn walk(
            prefix: &str,
            ours: Option<&toml::Value>,
            theirs: Option<&toml::Value>,
            out: &mut Vec<ConfigDifference>,
        ) {
            if let (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) = (ours, theirs) {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for key in keys {
                    let dotted = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&dotted, a.get(key), b.get(key), out);
                }
            } else if ours != theirs {
                out.push(ConfigDifference {
                    key: prefix.to_string(),
                    ours: ours.map(ToString::to_string),
                    theirs: theirs.map(ToString::to_string),
                });
            }
        }
        let value = |config: &RunConfig| toml::Value::try_from(config).ok();
        let mut out = Vec::new();
        walk("", value(self).as_ref(), value(other).as_ref(), &mut out);
        out
    }
}

/// One key of [`RunConfig::differences`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDifference {
    /// Dotted key, `section.name`.
    pub key: String,
    /// Its value (TOML) in the first configuration, and in the second.
    pub ours: Option<String>,
    pub theirs: Option<String>,
}

impl fmt::Display for ConfigDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".into());
        write!(
            f,
            "{} = {} → {}",
            self.key,
            show(&self.ours),
            show(&self.theirs)
        )
    }
}

fn valid_device(spec: &str) -> bool {
    let spec = spec.trim().to_ascii_lowercase();
    match spec.strip_prefix("cuda") {
        _ if spec == "cpu" => true,
        Some("") => true,
        Some(rest) => rest
            .strip_prefix(':')
            .is_some_and(|n| !n.is_empty() && n.parse::<usize>().is_ok()),
        None => false,
    }
}

/// The `DAO_<SECTION>__<KEY>` variables of `env` as a `config` source.
fn environment_source(env: &BTreeMap<String, String>) -> config::Environment {
    let prefix = format!("{ENV_PREFIX}_");
    let selected: config::Map<String, String> = env
        .iter()
        .filter(|(name, _)| {
            name.to_ascii_uppercase()
                .strip_prefix(&prefix)
                .is_some_and(|rest| rest.contains(ENV_SEPARATOR))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // `separator("__")` alone would make the prefix separator `__` too (`DAO__TRAIN__LR`).
    config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("_")
        .separator(ENV_SEPARATOR)
        .try_parsing(true)
        .list_separator(",")
        .with_list_parse_key("lora.targets")
        .with_list_parse_key("data.thresholds")
        .source(Some(selected))
}

/// Splits `a.b=value` and reads the value as TOML where it parses, as a string otherwise.
fn parse_override(item: &str) -> Result<(String, config::Value), ConfigError> {
    let (key, raw) = item
        .split_once('=')
        .ok_or_else(|| ConfigError::BadOverride(item.into()))?;
    let key = key.trim();
    let key_ok = !key.is_empty()
        && key.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if !key_ok {
        return Err(ConfigError::BadOverride(item.into()));
    }
    let raw = raw.trim();
    let origin = "--set".to_string();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut table) => table
            .remove("v")
            .map(|v| toml_to_config(v, &origin))
            .unwrap_or_else(|| config::Value::new(Some(&origin), raw)),
        Err(_) => config::Value::new(Some(&origin), raw),
    };
    Ok((key.to_string(), value))
}

fn toml_to_config(value: toml::Value, origin: &String) -> config::Value {
    use config::ValueKind;
    let kind = match value {
        toml::Value::String(s) => ValueKind::String(s),
        toml::Value::Integer(i) => ValueKind::I64(i),
        toml::Value::Float(f) => ValueKind::Float(f),
        toml::Value::Boolean(b) => ValueKind::Boolean(b),
        toml::Value::Datetime(d) => ValueKind::String(d.to_string()),
        toml::Value::Array(items) => ValueKind::Array(
            items
                .into_iter()
                .map(|v| toml_to_config(v, origin))
                .collect(),
        ),
        toml::Value::Table(t) => ValueKind::Table(
            t.into_iter()
                .map(|(k, v)| (k, toml_to_config(v, origin)))
                .collect(),
        ),
    };
    config::Value::new(Some(origin), kind)
}

/// An error while reading the sources (TOML syntax, unreadable file).
fn parse_error(error: config::ConfigError, sources: &ConfigSources) -> ConfigError {
    match error {
        // Named as the caller gave it (`config` makes it relative to the working directory).
        config::ConfigError::FileParse { uri, cause } => ConfigError::Parse {
            origin: sources
                .file
                .as_ref()
                .map(|p| p.display().to_string())
                .or(uri)
                .unwrap_or_else(|| "configuration".into()),
            message: cause.to_string(),
        },
        other => ConfigError::Parse {
            origin: sources
                .file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "configuration".into()),
            message: other.to_string(),
        },
    }
}

/// Where each value came from, to name it in errors.
struct Origins<'a> {
    merged: &'a config::Config,
    file: Option<&'a Path>,
    overridden: &'a [String],
}

impl Origins<'_> {
    /// The file, `the environment` or `--set` for the value at `key`.
    fn of(&self, key: &str, given: Option<String>) -> String {
        let recorded = given.or_else(|| value_origin(self.merged, key));
        match recorded {
            Some(o) if o == ENV_ORIGIN || o.starts_with("--set") => o,
            // `config` records files relative to the working directory (`../../tmp/x.toml`):
            // name the file as the caller did instead.
            // An unknown `--set a.b.c`: the error names `a` or `a.b`, a prefix of the key set.
            _ if self.overridden.iter().any(|k| {
                k == key
                    || k.strip_prefix(key)
                        .is_some_and(|rest| rest.starts_with('.'))
            }) =>
            {
                "--set".into()
            }
            Some(o) => self.file.map(|f| f.display().to_string()).unwrap_or(o),
            None => self
                .file
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| "the configuration".into()),
        }
    }
}

/// The origin `config` gives environment variables.
const ENV_ORIGIN: &str = "the environment";

/// The allowed spellings of the keys that take a choice, for error messages.
fn choices(key: &str) -> Option<&'static str> {
    Some(match key {
        "data.input" => "text, text+target",
        "data.on_bad_row" => "error, skip",
        "train.finetune" => "full, lora",
        "train.best_metric" => "mse, mae, rmse, r2, accuracy, precision, recall, f1",
        "weighting.strategy" => {
            "regression-only, constant, dao, uncertainty, dwa, gradnorm, \
             dao-grad-balance-only, dao-imbalance-only"
        }
        "dao.grad_norm_wrt" => "representation, shared-parameters",
        _ => return None,
    })
}

/// Turns `config`'s deserialisation error into one that names the full key and its origin.
fn deserialize_error(error: config::ConfigError, origins: &Origins<'_>) -> ConfigError {
    let join = |prefix: Option<&str>, field: &str| match prefix {
        Some(p) if !p.is_empty() => format!("{p}.{field}"),
        _ => field.to_string(),
    };
    let (inner, key, origin) = match error {
        config::ConfigError::Type {
            origin,
            unexpected,
            expected,
            key,
        } => {
            let key = key.unwrap_or_default();
            return ConfigError::WrongValue {
                origin: origins.of(&key, origin),
                message: format!("expected {expected}, found {unexpected}"),
                key,
            };
        }
        config::ConfigError::NotFound(key) => return ConfigError::MissingKey { key },
        config::ConfigError::At { error, origin, key } => (*error, key, origin),
        other => (other, None, None),
    };
    let message = inner.to_string();
    if let Some(field) = backticked_after(&message, "unknown field `") {
        let key = join(key.as_deref(), &field);
        let hint = message
            .split_once(", expected")
            .map(|(_, rest)| format!(" (expected{rest})"))
            .unwrap_or_default();
        return ConfigError::UnknownKey {
            origin: origins.of(&key, origin),
            key,
            hint,
        };
    }
    if let Some(field) = backticked_after(&message, "missing field `") {
        return ConfigError::MissingKey {
            key: join(key.as_deref(), &field),
        };
    }
    let key = key.unwrap_or_else(|| "(top level)".into());
    let message = match choices(&key) {
        Some(allowed) => format!("expected one of {allowed} ({message})"),
        None => message,
    };
    ConfigError::WrongValue {
        origin: origins.of(&key, origin),
        key,
        message,
    }
}

/// `config` converts between scalar types while deserialising (`2.5` → 3 for an integer,
/// `"10"` → 10); this rejects what a TOML file would not allow: each value must have its
/// key's type. Strings may come as numbers from the environment and `--set`, where quoting
/// is awkward (`--set model.path=2024`).
fn check_value_types(run: &RunConfig, origins: &Origins<'_>) -> Result<(), ConfigError> {
    let resolved = toml::Value::try_from(run).map_err(|e| ConfigError::Serialize(e.to_string()))?;
    let given = config::Source::collect(origins.merged).map_err(|e| ConfigError::Parse {
        origin: "the configuration".into(),
        message: e.to_string(),
    })?;
    let toml::Value::Table(resolved) = resolved else {
        return Ok(());
    };
    for (name, value) in &given {
        if let Some(expected) = resolved.get(name) {
            check_value_type(name, value, expected, origins)?;
        }
    }
    Ok(())
}

fn check_value_type(
    key: &str,
    given: &config::Value,
    expected: &toml::Value,
    origins: &Origins<'_>,
) -> Result<(), ConfigError> {
    use config::ValueKind as K;
    let integer = |k: &K| matches!(k, K::I64(_) | K::I128(_) | K::U64(_) | K::U128(_));
    let origin = given.origin().unwrap_or_default();
    let lenient = origin == ENV_ORIGIN || origin.starts_with("--set");
    let (ok, wanted) = match (expected, &given.kind) {
        (toml::Value::Table(fields), K::Table(values)) => {
            for (name, value) in values {
                if let Some(expected) = fields.get(name) {
                    check_value_type(&format!("{key}.{name}"), value, expected, origins)?;
                }
            }
            return Ok(());
        }
        (toml::Value::Array(items), K::Array(values)) => {
            if let Some(first) = items.first() {
                for (i, value) in values.iter().enumerate() {
                    let item = format!("{key}[{i}]");
                    // A list split from an environment variable holds its items as text.
                    let env_number = origin == ENV_ORIGIN
                        && matches!(first, toml::Value::Float(_))
                        && matches!(&value.kind, K::String(text) if text.trim().parse::<f64>().is_ok());
                    if !env_number {
                        check_value_type(&item, value, first, origins)?;
                    }
                }
            }
            return Ok(());
        }
        (toml::Value::Integer(_), k) => (integer(k), "an integer"),
        (toml::Value::Float(_), k) => (integer(k) || matches!(k, K::Float(_)), "a number"),
        (toml::Value::Boolean(_), k) => (matches!(k, K::Boolean(_)), "a boolean"),
        (toml::Value::String(_), k) => (
            matches!(k, K::String(_))
                || lenient && (integer(k) || matches!(k, K::Float(_) | K::Boolean(_))),
            "a string",
        ),
        (toml::Value::Array(_), _) => (false, "an array"),
        (toml::Value::Table(_), _) => (false, "a table"),
        (toml::Value::Datetime(_), _) => (true, "a date"),
    };
    if ok {
        return Ok(());
    }
    let found = match &given.kind {
        K::Nil => "nothing".to_string(),
        K::Boolean(b) => format!("boolean `{b}`"),
        K::I64(i) => format!("integer `{i}`"),
        K::I128(i) => format!("integer `{i}`"),
        K::U64(i) => format!("integer `{i}`"),
        K::U128(i) => format!("integer `{i}`"),
        K::Float(f) => format!("number `{f}`"),
        K::String(s) => format!("string {s:?}"),
        K::Table(_) => "a table".into(),
        K::Array(_) => "an array".into(),
    };
    Err(ConfigError::WrongValue {
        key: key.to_string(),
        origin: origins.of(key, given.origin().map(str::to_string)),
        message: format!("expected {wanted}, found {found}"),
    })
}

/// The origin recorded with the value at `key` (`Config::get` would deserialise the value and
/// lose it, so the parent table is read instead).
fn value_origin(merged: &config::Config, key: &str) -> Option<String> {
    let (table, last) = match key.rsplit_once('.') {
        Some((parent, last)) => (merged.get_table(parent).ok()?, last),
        None => (config::Source::collect(merged).ok()?, key),
    };
    table.get(last)?.origin().map(str::to_string)
}

/// The text between `start` and the next backtick, if `message` contains `start`.
fn backticked_after(message: &str, start: &str) -> Option<String> {
    let rest = &message[message.find(start)? + start.len()..];
    Some(rest[..rest.find('`')?].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml_sources(text: &str) -> (tempfile::TempDir, ConfigSources) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, text).unwrap();
        (dir, ConfigSources::file_only(path))
    }

    const MINIMAL: &str = "[model]\npath = \"models/m\"\n[data]\ntrain = \"d.jsonl\"\n";

    #[test]
    fn absolute_paths_are_the_working_directorys_joined() {
        let (_dir, src) = toml_sources(
            "[model]\npath = \"models/m\"\nweights = \"w.bpk\"\n\
             [data]\ntrain = \"d.jsonl\"\nvalid = \"/data/v.jsonl\"\n",
        );
        let run = RunConfig::load_from(&src).unwrap();
        let absolute = run.with_absolute_paths().unwrap();
        let here = std::env::current_dir().unwrap();
        assert_eq!(absolute.model.path, here.join("models/m"));
        assert_eq!(absolute.data.train, here.join("d.jsonl"));
        // Already absolute: as it was.
        assert_eq!(absolute.data.valid, Some(PathBuf::from("/data/v.jsonl")));
        // Not found from here: the model folder's own file, left for the loader to find there.
        assert_eq!(absolute.model.weights, Some(PathBuf::from("w.bpk")));
        // A weights file found from here is made absolute as well (tests run in the crate's
        // folder, which holds Cargo.toml).
        let mut found = run.clone();
        found.model.weights = Some(PathBuf::from("Cargo.toml"));
        assert_eq!(
            found.with_absolute_paths().unwrap().model.weights,
            Some(here.join("Cargo.toml"))
        );
        // Everything else is untouched, and a second pass changes nothing.
        assert_eq!(absolute.train, run.train);
        assert_eq!(absolute.with_absolute_paths().unwrap(), absolute);
    }

    #[test]
    fn a_moved_model_folder_takes_its_weights_file_along() {
        let (_dir, src) = toml_sources(
            "[model]\npath = \"/old/m\"\nweights = \"/old/m/sub/w.bin\"\n[data]\ntrain = \"d.jsonl\"\n",
        );
        let run = RunConfig::load_from(&src).unwrap();
        let moved = run.with_model_folder(Path::new("new/m")).unwrap();
        let here = std::env::current_dir().unwrap();
        assert_eq!(moved.model.path, here.join("new/m"));
        assert_eq!(moved.model.weights, Some(here.join("new/m/sub/w.bin")));
        // A weights file outside the old folder, or one of the folder's own by name, stays.
        for weights in ["/elsewhere/w.bin", "w.bin"] {
            let mut other = run.clone();
            other.model.weights = Some(PathBuf::from(weights));
            let moved = other.with_model_folder(Path::new("/new/m")).unwrap();
            assert_eq!(moved.model.weights, Some(PathBuf::from(weights)));
            assert_eq!(moved.model.path, PathBuf::from("/new/m"));
        }
        // Nothing else moves.
        assert_eq!(moved.data, run.data);
        assert_eq!(moved.train, run.train);
    }

    #[test]
    fn defaults_are_the_papers_hyperparameters() {
        let (_dir, src) = toml_sources(MINIMAL);
        let run = RunConfig::load_from(&src).unwrap();
        assert_eq!(run.train.batch_size, 10);
        assert_eq!(run.train.lr, 1e-5);
        assert_eq!(run.train.eps, 1e-8);
        assert_eq!(run.train.epochs, 100);
        assert_eq!(run.train.seed, 42);
        assert_eq!(run.train.warmup_steps, 100);
        assert_eq!(run.model.max_len, 512);
        assert_eq!(run.heads.hidden, 128);
        assert_eq!(run.heads.dropout, 0.1);
        assert_eq!(run.dao.hidden, 16);
        assert_eq!(run.weighting.strategy, WeightingStrategy::Dao);
        // alpha defaults to the rank and is written out resolved.
        assert_eq!(run.lora.alpha, Some(8.0));
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let (_dir, src) = toml_sources(&format!("{MINIMAL}[train]\nlrr = 1e-5\n"));
        let err = RunConfig::load_from(&src).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("`train.lrr`"), "{text}");
        assert!(text.contains("run.toml"), "{text}");
        assert!(
            text.contains("`lr`"),
            "the hint lists the valid keys: {text}"
        );
    }

    #[test]
    fn unknown_section_is_an_error() {
        let (_dir, src) = toml_sources(&format!("{MINIMAL}[trian]\nlr = 1e-5\n"));
        let text = RunConfig::load_from(&src).unwrap_err().to_string();
        assert!(text.contains("unknown key `trian`"), "{text}");
    }

    #[test]
    fn wrong_type_names_key_and_file() {
        let (_dir, src) = toml_sources(&format!("{MINIMAL}[train]\nepochs = \"ten\"\n"));
        let err = RunConfig::load_from(&src).unwrap_err();
        assert!(matches!(err, ConfigError::WrongValue { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("`train.epochs`"), "{text}");
        assert!(text.contains("run.toml"), "{text}");
        assert!(text.contains("ten"), "{text}");
    }

    #[test]
    fn scalars_are_not_silently_converted() {
        for (line, key, found) in [
            ("[train]\nepochs = 2.5\n", "train.epochs", "number `2.5`"),
            ("[train]\nlr = \"1e-5\"\n", "train.lr", "string \"1e-5\""),
            (
                "[dao]\nlearn_alpha_beta = \"yes\"\n",
                "dao.learn_alpha_beta",
                "string",
            ),
            (
                "[lora]\ntargets = [\"query\", 3]\n",
                "lora.targets[1]",
                "integer `3`",
            ),
        ] {
            let (_dir, src) = toml_sources(&format!("{MINIMAL}{line}"));
            let text = RunConfig::load_from(&src).unwrap_err().to_string();
            assert!(text.contains(&format!("`{key}`")), "{text}");
            assert!(text.contains(found), "{text}");
            assert!(text.contains("run.toml"), "{text}");
        }
        // From --set and the environment a path may look like a number.
        let (_dir, mut src) = toml_sources(MINIMAL);
        src.overrides = vec!["model.path=2024".into()];
        src.env.insert("DAO_DATA__TRAIN".into(), "7".into());
        let run = RunConfig::load_from(&src).unwrap();
        assert_eq!(run.model.path, PathBuf::from("2024"));
        assert_eq!(run.data.train, PathBuf::from("7"));
    }

    #[test]
    fn unknown_choice_names_key() {
        let (_dir, src) = toml_sources(&format!("{MINIMAL}[train]\nfinetune = \"lorx\"\n"));
        let text = RunConfig::load_from(&src).unwrap_err().to_string();
        assert!(text.contains("`train.finetune`"), "{text}");
        assert!(text.contains("lorx"), "{text}");
        assert!(text.contains("full, lora"), "{text}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let (_dir, src) = toml_sources("[model]\npath = \"m\"\n[data]\nvalid = \"v\"\n");
        let text = RunConfig::load_from(&src).unwrap_err().to_string();
        assert!(text.contains("`data.train`"), "{text}");
    }

    #[test]
    fn missing_file_and_bad_syntax_name_the_file() {
        let src = ConfigSources::file_only("/nonexistent/run.toml");
        let text = RunConfig::load_from(&src).unwrap_err().to_string();
        assert!(text.contains("/nonexistent/run.toml"), "{text}");
        let (_dir, src) = toml_sources("[model\npath = 1");
        let text = RunConfig::load_from(&src).unwrap_err().to_string();
        assert!(text.contains("run.toml"), "{text}");
    }

    #[test]
    fn ranges_are_validated_with_every_violation_named() {
        let (_dir, src) = toml_sources(
            "[model]\npath = \"m\"\n[data]\ntrain = \"t\"\nvalid = \"\"\nvalid_fraction = 1.0\n\
             [train]\nlr = -1.0\nbatch_size = 0\ndevice = \"tpu\"\n[lora]\nrank = 0\n\
             [dao]\nbeta_init = 1.0\n",
        );
        let err = RunConfig::load_from(&src).unwrap_err();
        let ConfigError::Invalid { problems } = &err else {
            panic!("expected Invalid, got {err:?}");
        };
        let keys = [
            "data.valid",
            "data.valid_fraction",
            "train.lr",
            "train.batch_size",
            "train.device",
            "lora.rank",
            "dao.beta_init",
        ];
        for key in keys {
            assert!(
                problems.iter().any(|p| p.contains(&format!("`{key}`"))),
                "{key} not in {problems:?}"
            );
        }
    }

    #[test]
    fn precedence_defaults_file_env_set() {
        let (_dir, mut src) = toml_sources(&format!(
            "{MINIMAL}[train]\nlr = 3e-5\nepochs = 7\nseed = 1\n"
        ));
        // File beats default.
        let run = RunConfig::load_from(&src).unwrap();
        assert_eq!(
            (run.train.lr, run.train.epochs, run.train.seed),
            (3e-5, 7, 1)
        );
        assert_eq!(run.train.batch_size, 10);
        // Environment beats file; unrelated DAO_ variables are ignored.
        src.env.insert("DAO_TRAIN__LR".into(), "2e-5".into());
        src.env.insert("DAO_TRAIN__BATCH_SIZE".into(), "4".into());
        src.env
            .insert("DAO_LORA__TARGETS".into(), "query,value".into());
        src.env.insert("DAO_SHARED_DIR".into(), "/somewhere".into());
        src.env
            .insert("DAO_DATA__THRESHOLDS".into(), "-0.6,-0.1,0.1,0.6".into());
        src.env.insert("PATH".into(), "/bin".into());
        let run = RunConfig::load_from(&src).unwrap();
        assert_eq!(run.train.lr, 2e-5);
        assert_eq!(run.train.batch_size, 4);
        assert_eq!(run.train.epochs, 7);
        assert_eq!(run.lora.targets, ["query", "value"]);
        assert_eq!(run.data.thresholds, [-0.6, -0.1, 0.1, 0.6]);
        // --set beats environment, in order; values are TOML or plain strings.
        src.overrides = vec![
            "train.lr=1e-4".into(),
            "train.epochs=3".into(),
            "train.epochs=4".into(),
            "model.path=models/roberta-large".into(),
            "lora.targets=[\"query\"]".into(),
            "weighting.strategy=constant".into(),
            "train.early_stopping_patience=5".into(),
        ];
        let run = RunConfig::load_from(&src).unwrap();
        assert_eq!(run.train.lr, 1e-4);
        assert_eq!(run.train.epochs, 4);
        assert_eq!(run.train.batch_size, 4);
        assert_eq!(run.model.path, PathBuf::from("models/roberta-large"));
        assert_eq!(run.lora.targets, ["query"]);
        assert_eq!(run.weighting.strategy, WeightingStrategy::Constant);
        assert_eq!(run.train.early_stopping_patience, Some(5));
    }

    #[test]
    fn bad_env_and_set_values_name_their_origin() {
        let (_dir, mut src) = toml_sources(MINIMAL);
        src.env.insert("DAO_TRAIN__LRR".into(), "1".into());
        let text = RunConfig::load_from(&src).unwrap_err().to_string();
        assert!(text.contains("`train.lrr`"), "{text}");
        assert!(text.contains("environment"), "{text}");

        let (_dir, mut src) = toml_sources(MINIMAL);
        src.overrides = vec!["train.epochs=ten".into()];
        let text = RunConfig::load_from(&src).unwrap_err().to_string();
        assert!(text.contains("`train.epochs`"), "{text}");
        assert!(text.contains("--set"), "{text}");

        src.overrides = vec!["train.lr".into()];
        let err = RunConfig::load_from(&src).unwrap_err();
        assert!(matches!(err, ConfigError::BadOverride(_)), "{err:?}");

        // An unknown or mistyped key given deeper than it goes, and a value out of range:
        // each blamed on --set, not on the file.
        for (set, expected) in [
            ("foo.bar=1", "unknown key `foo` in --set"),
            ("train.lr.x=3", "key `train.lr` in --set"),
            (
                "train.epochs=0",
                "`train.epochs` must be ≥ 1, got 0 (in --set)",
            ),
        ] {
            src.overrides = vec![set.into()];
            let text = RunConfig::load_from(&src).unwrap_err().to_string();
            assert!(text.contains(expected), "{set}: {text}");
        }
        // A range violation in the file names the file.
        let (_dir, src) = toml_sources(&format!("{MINIMAL}[train]\nepochs = 0\n"));
        let text = RunConfig::load_from(&src).unwrap_err().to_string();
        assert!(
            text.contains("got 0 (in ") && text.contains("run.toml)"),
            "{text}"
        );
    }

    #[test]
    fn differences_name_each_changed_key_with_both_values() {
        let (_dir, mut src) = toml_sources(MINIMAL);
        let base = RunConfig::load_from(&src).unwrap();
        assert!(base.differences(&base).is_empty());
        src.overrides = vec![
            "train.lr=3e-5".into(),
            "data.valid=v.jsonl".into(),
            "lora.targets=[\"query\"]".into(),
        ];
        let other = RunConfig::load_from(&src).unwrap();
        let shown: Vec<String> = base
            .differences(&other)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(
            shown.contains(&"data.valid = (unset) → \"v.jsonl\"".to_string()),
            "{shown:?}"
        );
        assert!(
            shown.contains(&"train.lr = 0.00001 → 0.00003".to_string()),
            "{shown:?}"
        );
        assert!(
            shown.iter().any(|d| d.starts_with("lora.targets = [")),
            "{shown:?}"
        );
    }

    #[test]
    fn field_names_and_class_thresholds_reach_the_data_config() {
        let (_dir, mut src) = toml_sources(&format!(
            "{MINIMAL}text_field = \"sentence\"\nthresholds = [-0.6, -0.1, 0.1, 0.6]\n"
        ));
        let run = RunConfig::load_from(&src).unwrap();
        let data = run.data_config();
        assert_eq!(
            (data.text_field.as_str(), data.score_field.as_str()),
            ("sentence", "score")
        );
        assert_eq!(data.thresholds.0, [-0.6, -0.1, 0.1, 0.6]);
        src.overrides = vec!["data.thresholds=[0.5, 0.1, 0.2, 0.3]".into()];
        let text = RunConfig::load_from(&src).unwrap_err().to_string();
        assert!(text.contains("`data.thresholds` must be"), "{text}");
    }

    #[test]
    fn resolved_config_round_trips_through_toml() {
        let (_dir, mut src) = toml_sources(MINIMAL);
        src.overrides = vec![
            "data.input=text+target".into(),
            "train.checkpoint_every_steps=50".into(),
            "dao.grad_norm_wrt=shared-parameters".into(),
            "weighting.strategy=gradnorm".into(),
            "train.best_metric=f1".into(),
        ];
        let run = RunConfig::load_from(&src).unwrap();
        let text = run.to_toml().unwrap();
        assert!(text.contains("input = \"text+target\""), "{text}");
        assert!(
            text.contains("grad_norm_wrt = \"shared-parameters\""),
            "{text}"
        );
        assert!(text.contains("strategy = \"gradnorm\""), "{text}");
        let (_dir2, again) = toml_sources(&text);
        assert_eq!(RunConfig::load_from(&again).unwrap(), run);
    }

    #[test]
    fn metric_direction() {
        assert!(Metric::Mse.improves(0.1, 0.2));
        assert!(!Metric::Mse.improves(0.2, 0.1));
        assert!(Metric::F1.improves(0.8, 0.7));
        assert!(!Metric::R2.improves(f64::NAN, 0.1));
        assert!(Metric::Accuracy.improves(0.1, f64::NAN));
    }
}
