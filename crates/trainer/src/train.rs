//! The training loop (DAO-SPEC steps 1–5 per batch), checkpoints and resume.
//!
//! Per batch: encoder → `H`; the heads' dropout masks sampled once; the weighting strategy's
//! `weigh` (DAO: λ, `L_imb`, `w`, `L_mtl`); one backward; the strategy's own update; AdamW on
//! encoder + heads with the warm-up + cosine learning rate. The device is reseeded before
//! every batch from (seed, batch number), and the batch order is a pure function of
//! (seed, epoch), so a resumed run needs no random-generator state and ends bit-identical to
//! an uninterrupted one on CPU.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};
use data::{BatchOptions, TokenizedSet};
use encoder::{ModelFolder, TextTokenizer};
use serde::{Deserialize, Serialize};

use crate::config::{Finetune, RunConfig};
use crate::inference::{evaluate_set, InferenceOptions};
use crate::model::SentimentModel;
use crate::optimizer::{AdamW, AdamWSettings};
use crate::parallel::DataParallel;
use crate::progress::RowsProgress;
use crate::weighting::RunWeighting;
use crate::{updates_per_run, CosineWithWarmup, EpochRow, RunDir, StepRow, ValidationMetrics};

/// Everything that can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    #[error(transparent)]
    RunDir(#[from] crate::RunDirError),
    #[error(transparent)]
    Encoder(#[from] encoder::EncoderError),
    #[error(transparent)]
    Heads(#[from] heads::HeadsError),
    #[error(transparent)]
    Weighting(#[from] dao::DaoError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Metrics(#[from] crate::MetricsError),
    #[error(transparent)]
    Report(#[from] crate::ReportError),
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    #[error(
        "step {step} (epoch {epoch}): the loss is {loss}, not finite; training stopped \
         ({checkpoint}; a lower train.lr may help)"
    )]
    NonFiniteLoss {
        step: u64,
        epoch: u32,
        loss: f32,
        /// Where the last good checkpoint is, if there is one.
        checkpoint: LastCheckpoint,
    },
    #[error("step {step} (epoch {epoch}): {error}; training stopped ({checkpoint})")]
    Step {
        step: u64,
        epoch: u32,
        error: dao::DaoError,
        checkpoint: LastCheckpoint,
    },
    #[error("{0}")]
    Input(String),
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Whether a stopped run has a checkpoint to resume from (for its error message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastCheckpoint {
    /// `checkpoints/last` holds the last good state.
    Written,
    /// The run stopped before its first checkpoint.
    None,
}

impl LastCheckpoint {
    fn of(run: &Path) -> Self {
        if checkpoint_dir(run, "last").is_dir() {
            Self::Written
        } else {
            Self::None
        }
    }
}

impl std::fmt::Display for LastCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Written => "the last good checkpoint is in checkpoints/last",
            Self::None => "no checkpoint was written before it",
        })
    }
}

impl TrainError {
    pub(crate) fn checkpoint(path: &Path, message: String) -> Self {
        Self::Checkpoint {
            path: path.to_path_buf(),
            message,
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |error| TrainError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// How to run [`train`], besides the configuration.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from `checkpoints/last` of the run folder.
    pub resume: bool,
    /// Show a progress bar (only drawn when stderr is a terminal; plain log lines otherwise).
    pub progress: bool,
    /// Stop (after writing `checkpoints/last`) once this many batches of the run are done:
    /// simulates an interruption, for tests of resume.
    pub stop_after_steps: Option<u64>,
}

/// Where a run stands; `state.json` of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// 0-based epoch in progress (= epochs complete when `batch_in_epoch` is 0).
    pub epoch: u32,
    /// Batches of `epoch` already done.
    pub batch_in_epoch: usize,
    /// Batches of the run already done.
    pub global_step: u64,
    /// Optimizer updates of the run already done.
    pub updates: usize,
    /// Best value of `train.best_metric` so far (f64 bits, exact), and its epoch (1-based).
    pub best_metric_bits: Option<u64>,
    pub best_epoch: Option<u32>,
    pub epochs_without_improvement: usize,
    /// Sum (f64 bits) and count of the training losses of `epoch` so far.
    pub epoch_loss_sum_bits: u64,
    pub epoch_loss_count: u64,
    /// Seconds spent in `epoch` so far.
    pub epoch_seconds: f64,
    /// The run stopped early or ran all its epochs.
    pub finished: bool,
    /// What the run trains and validates on (absent in checkpoints of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataFingerprint>,
    /// The checkpoint's other files as they were written, by name (absent in checkpoints of
    /// older versions, and in a state not read from a checkpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<BTreeMap<String, FileDigest>>,
}

/// A checkpoint file's length and CRC-32 when it was written, kept in `state.json` and
/// checked before the file is read: a file damaged on disk or cut short in a copy is refused
/// by name, where it would otherwise load and train into NaN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub bytes: u64,
    /// Eight hexadecimal digits.
    pub crc32: String,
}

impl FileDigest {
    /// Reads `path` whole, or its first `limit` bytes; `sync`: also has the system write it to
    /// disk first (a checkpoint's files before its folder is renamed into place).
    fn of(path: &Path, sync: bool, limit: u64) -> std::io::Result<Self> {
        let file = if sync {
            // Write access: Windows flushes only handles that have it.
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)?
        } else {
            std::fs::File::open(path)?
        };
        if sync {
            file.sync_all()?;
        }
        let mut file = file.take(limit);
        let mut hasher = crc32fast::Hasher::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let read = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            hasher.update(&buffer[..read]);
            bytes += read as u64;
        }
        Ok(Self {
            bytes,
            crc32: format!("{:08x}", hasher.finalize()),
        })
    }
}

/// The digests of every file of the checkpoint folder `dir` but `state.json`, each file
/// synced to disk.
fn digest_checkpoint_files(dir: &Path) -> Result<BTreeMap<String, FileDigest>, TrainError> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != STATE_FILE && path.is_file() {
            let digest = FileDigest::of(&path, true, u64::MAX).map_err(io_error(&path))?;
            files.insert(name, digest);
        }
    }
    Ok(files)
}

/// Checks the files of the checkpoint folder `dir` (`only` the one named, if given) against
/// the digests its `state.json` recorded (a checkpoint of an older version records none);
/// `advice`: what to do when one differs.
fn verify_checkpoint_files(
    dir: &Path,
    state: &TrainState,
    only: Option<&str>,
    advice: &str,
) -> Result<(), TrainError> {
    let recorded = state.files.iter().flatten();
    for (name, written) in recorded.filter(|(name, _)| only.is_none_or(|only| *name == only)) {
        let path = dir.join(name);
        let damaged = |what: &str| TrainError::checkpoint(&path, format!("{what}; {advice}"));
        // A damaged state.json could name anything: only plain names of this folder are read.
        if Path::new(name).file_name() != Some(std::ffi::OsStr::new(name)) {
            return Err(TrainError::checkpoint(
                &dir.join(STATE_FILE),
                format!(
                    "names {name:?}, not a file of the checkpoint: the file is damaged; {advice}"
                ),
            ));
        }
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Err(damaged("not a regular file, though one was written there")),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(damaged("missing, though written with the checkpoint"))
            }
            Err(error) => return Err(io_error(&path)(error)),
        }
        // One byte past the recorded length tells a longer file without reading all of it.
        let now = FileDigest::of(&path, false, written.bytes.saturating_add(1))
            .map_err(io_error(&path))?;
        if now.bytes > written.bytes {
            return Err(damaged(&format!(
                "longer than the {} bytes written with the checkpoint: the file is damaged (an \
                 edit, another file copied over it)",
                written.bytes
            )));
        }
        if now != *written {
            return Err(damaged(&format!(
                "{} bytes with CRC-32 {}, but {} bytes with CRC-32 {} when the checkpoint was \
                 written: the file is damaged (a disk error, a copy cut short, an edit)",
                now.bytes, now.crc32, written.bytes, written.crc32
            )));
        }
    }
    Ok(())
}

/// The folder of the run's checkpoint `which` (`best` or `last`) to read for inference, its
/// weights checked against its `state.json` (a `state.json` that cannot be read is said, and
/// the weights are read unchecked: they may still be whole).
pub(crate) fn checkpoint_for_inference(run: &Path, which: &str) -> Result<PathBuf, TrainError> {
    let other = CHECKPOINT_NAMES.into_iter().find(|&name| name != which);
    let other_there = other.filter(|&name| checkpoint_to_read(run, name).is_dir());
    let dir = checkpoint_to_read(run, which);
    if !dir.is_dir() {
        let when = if which == "best" {
            // Written at the end of an epoch whose metric is a number.
            "no epoch has ended yet with a value of train.best_metric"
        } else {
            "the run stopped before its first checkpoint"
        };
        return Err(TrainError::checkpoint(
            &checkpoint_dir(run, which),
            match other_there {
                Some(other) => {
                    format!("not there ({when}); --checkpoint {other} reads the other one")
                }
                None => format!("not there ({when}); train the run further (--resume)"),
            },
        ));
    }
    let advice = match other_there {
        Some(other) => format!(
            "restore the run's checkpoints folder from a copy of the run, or read the other \
             checkpoint (--checkpoint {other})"
        ),
        None => "restore the run's checkpoints folder from a copy of the run".to_string(),
    };
    match read_state(&dir) {
        Ok(state) => {
            verify_checkpoint_files(&dir, &state, Some(crate::model::MODEL_FILE), &advice)?
        }
        Err(error) => {
            tracing::warn!("the weights cannot be checked against their checksum: {error}");
        }
    }
    Ok(dir)
}

/// The training and validation rows of a run, in order, as row counts and FNV-1a hashes of
/// their texts, targets and scores: a resumed run must see the rows it started with (only
/// where the files lie may change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFingerprint {
    pub train_rows: usize,
    pub train_hash: String,
    pub valid_rows: usize,
    pub valid_hash: String,
}

impl DataFingerprint {
    fn of(train: &[data::Example], valid: &[data::Example]) -> Self {
        Self {
            train_rows: train.len(),
            train_hash: rows_hash(train),
            valid_rows: valid.len(),
            valid_hash: rows_hash(valid),
        }
    }
}

/// FNV-1a (64 bits) over each row's text, target and score bits: stable across builds and
/// platforms, unlike std's hasher.
fn rows_hash(rows: &[data::Example]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for row in rows {
        feed(row.text.as_bytes());
        feed(&[0xff]);
        match &row.target {
            Some(target) => feed(target.as_bytes()),
            None => feed(&[0xfe]),
        }
        feed(&[0xff]);
        feed(&row.score.to_bits().to_le_bytes());
    }
    format!("{hash:016x}")
}

impl TrainState {
    fn new() -> Self {
        Self {
            epoch: 0,
            batch_in_epoch: 0,
            global_step: 0,
            updates: 0,
            best_metric_bits: None,
            best_epoch: None,
            epochs_without_improvement: 0,
            epoch_loss_sum_bits: 0f64.to_bits(),
            epoch_loss_count: 0,
            epoch_seconds: 0.0,
            finished: false,
            data: None,
            files: None,
        }
    }

    pub fn best_metric(&self) -> Option<f64> {
        self.best_metric_bits.map(f64::from_bits)
    }
}

/// The outcome of [`train`].
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    /// Every row of `metrics.csv`.
    pub epochs: Vec<EpochRow>,
    /// The best epoch (1-based) by `train.best_metric`.
    pub best_epoch: Option<u32>,
    /// `false` when stopped by [`TrainOptions::stop_after_steps`].
    pub finished: bool,
    /// The report, when the run finished.
    pub report: Option<PathBuf>,
}

impl TrainSummary {
    /// What a command prints at the end of a run: the metric table, the best epoch by
    /// `best_metric`, the run folder and the report.
    pub fn text(&self, best_metric: crate::Metric) -> String {
        let mut text = metrics_table(&self.epochs);
        if let Some(best) = self.best_epoch {
            text.push_str(&format!("\nbest epoch by {best_metric}: {best}"));
        }
        text.push_str(&format!("\nrun folder: {}", self.run_dir.display()));
        if let Some(report) = &self.report {
            text.push_str(&format!("\nreport: {}", report.display()));
        }
        text
    }
}

const STATE_FILE: &str = "state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// The checkpoints of a run: the epoch that scored best by `train.best_metric`, and where it
/// stopped (each epoch's end, and every `train.checkpoint_every_steps` updates).
pub const CHECKPOINT_NAMES: [&str; 2] = ["best", "last"];

/// The `checkpoints/<name>` folder of a run.
pub fn checkpoint_dir(run: &Path, name: &str) -> PathBuf {
    run.join("checkpoints").join(name)
}

/// A checkpoint's folder and its two siblings of [`Checkpoint::write`]: `.<name>.tmp`, written
/// first, and `.<name>.old`, the previous checkpoint between the two renames.
struct CheckpointPaths {
    target: PathBuf,
    tmp: PathBuf,
    old: PathBuf,
}

impl CheckpointPaths {
    fn of(run: &Path, name: &str) -> Self {
        let target = checkpoint_dir(run, name);
        Self {
            tmp: target.with_file_name(format!(".{name}.tmp")),
            old: target.with_file_name(format!(".{name}.old")),
            target,
        }
    }

    /// A crash between the two renames left the previous checkpoint whole in `.<name>.old`
    /// and `<name>` not yet there.
    fn stranded(&self) -> bool {
        !self.target.is_dir() && self.old.join(STATE_FILE).is_file()
    }
}

/// The reseed value of batch `step` of a run seeded `seed` (SplitMix64 finaliser).
fn step_seed(seed: u64, step: u64) -> u64 {
    let mut z = seed ^ step.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The tokenized training and validation sets of a run, and its tokenizer.
pub struct RunData {
    pub tokenizer: TextTokenizer,
    pub train: TokenizedSet,
    pub valid: TokenizedSet,
    pub fingerprint: DataFingerprint,
}

impl RunData {
    /// The tokenizer of the run's model, truncating to `model.max_len`.
    pub fn tokenizer(config: &RunConfig) -> Result<TextTokenizer, TrainError> {
        let folder = ModelFolder::open(&config.model.path, config.model.weights.as_deref())?;
        let limit = folder.config.max_input_len();
        if !(2..=limit).contains(&config.model.max_len) {
            return Err(TrainError::Input(format!(
                "model.max_len = {}: the model in {} takes 2 to {limit} tokens (its position \
                 table); set model.max_len within that",
                config.model.max_len,
                config.model.path.display()
            )));
        }
        Ok(TextTokenizer::from_file(
            &folder.tokenizer,
            &folder.config,
            config.model.max_len,
        )?)
    }

    /// Loads and tokenizes the data of `config` (rejected rows go to `run`).
    pub fn load(config: &RunConfig, run: Option<&Path>) -> Result<Self, TrainError> {
        let data_config = config.data_config();
        let splits = data::load_splits(&data_config, run)?;
        let tokenizer = Self::tokenizer(config)?;
        let train = TokenizedSet::new(&splits.train, &tokenizer, data_config.input, None)?;
        let valid = TokenizedSet::new(&splits.valid, &tokenizer, data_config.input, None)?;
        if train.is_empty() || valid.is_empty() {
            return Err(TrainError::Input(format!(
                "no rows to train on or validate with ({} training, {} validation)",
                train.len(),
                valid.len()
            )));
        }
        Ok(Self {
            tokenizer,
            train,
            valid,
            fingerprint: DataFingerprint::of(&splits.train.examples, &splits.valid.examples),
        })
    }
}

struct Checkpoint<'a> {
    model: &'a SentimentModel,
    optimizer: &'a AdamW,
    weighting: &'a RunWeighting,
    state: &'a TrainState,
    finetune: Finetune,
}

impl Checkpoint<'_> {
    /// Writes the checkpoint into a temporary folder, then renames it to `checkpoints/<name>`,
    /// so a crash leaves the previous complete checkpoint.
    fn write(&self, run: &Path, name: &str) -> Result<(), TrainError> {
        let CheckpointPaths { target, tmp, old } = CheckpointPaths::of(run, name);
        let parent = target.parent().expect("checkpoint folder has a parent");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_error(&tmp))?;
        }
        if let Err(error) = self.write_files(&tmp) {
            // A full disk must not stay full of a half checkpoint.
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(error);
        }
        if target.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(io_error(&old))?;
            }
            std::fs::rename(&target, &old).map_err(io_error(&target))?;
        }
        std::fs::rename(&tmp, &target).map_err(io_error(&target))?;
        if let Ok(folder) = std::fs::File::open(parent) {
            let _ = folder.sync_all(); // the renames themselves, where the platform allows
        }
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io_error(&old))?;
        }
        Ok(())
    }

    /// The checkpoint's files, in the folder `dir` (created).
    fn write_files(&self, dir: &Path) -> Result<(), TrainError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        self.model.save(dir, self.finetune)?;
        let path = dir.join(OPTIMIZER_FILE);
        self.optimizer
            .save(&path)
            .map_err(|e| TrainError::checkpoint(&path, e.to_string()))?;
        self.weighting.save(dir)?;
        let state = TrainState {
            files: Some(digest_checkpoint_files(dir)?),
            ..self.state.clone()
        };
        let path = dir.join(STATE_FILE);
        let json = serde_json::to_string_pretty(&state).expect("state serialises");
        crate::write_atomic(&path, json.as_bytes()).map_err(io_error(&path))
    }
}

/// Whether `run` already has a run's files (a fresh run there would mix with them, or
/// overwrite its `config.toml` and report).
pub fn holds_run(run: &Path) -> bool {
    [
        RunDir::CONFIG,
        RunDir::METRICS,
        RunDir::STEPS,
        "checkpoints",
        "report.md",
    ]
    .iter()
    .any(|name| run.join(name).exists())
}

/// Keys a resumed run may change: where its files lie now (the model or the data moved) and
/// how it runs, not what it computes.
const CHANGEABLE_ON_RESUME: [&str; 6] = [
    "model.path",
    "model.weights",
    "data.train",
    "data.valid",
    "train.device",
    "train.checkpoint_every_steps",
];

/// A resumed run continues the run its `config.toml` describes: any other change (a learning
/// rate, the number of epochs, LoRA on or off) would make its checkpoints, metrics and report
/// those of no single configuration, so it is refused with the keys named.
fn check_resumable(saved: &RunConfig, config: &RunConfig, run: &Path) -> Result<(), TrainError> {
    let (moved, changed): (Vec<_>, Vec<_>) = saved
        .differences(config)
        .into_iter()
        .partition(|d| CHANGEABLE_ON_RESUME.contains(&d.key.as_str()));
    if !changed.is_empty() {
        let list: Vec<String> = changed.iter().map(ToString::to_string).collect();
        return Err(TrainError::Input(format!(
            "--resume continues the run as {} describes it, but these keys differ: {}; resume \
             without them (--resume --out {} alone), or start a new run with another --out \
             (nothing was changed)",
            run.join(RunDir::CONFIG).display(),
            list.join("; "),
            run.display()
        )));
    }
    for difference in moved {
        tracing::warn!("resuming with {difference}");
    }
    Ok(())
}

/// Puts back a checkpoint a crash left between the two renames of [`Checkpoint::write`]
/// (`.<name>.old` whole, `<name>` not yet there), and removes what a crash or a failed write
/// left over: a half-written `.<name>.tmp`, an `.<name>.old` whose successor is in place.
fn recover_checkpoints(run: &Path) -> Result<(), TrainError> {
    for name in CHECKPOINT_NAMES {
        let paths = CheckpointPaths::of(run, name);
        if paths.stranded() {
            std::fs::rename(&paths.old, &paths.target).map_err(io_error(&paths.target))?;
        }
        for leftover in [paths.tmp, paths.old] {
            if leftover.is_dir() {
                std::fs::remove_dir_all(&leftover).map_err(io_error(&leftover))?;
            }
        }
    }
    Ok(())
}

/// The checkpoint folder to read `name` from: `.<name>.old` where a crash between the two
/// renames of [`Checkpoint::write`] left it and `<name>` is not there yet (the next
/// `train --resume` puts it back).
pub(crate) fn checkpoint_to_read(run: &Path, name: &str) -> PathBuf {
    let paths = CheckpointPaths::of(run, name);
    if paths.stranded() {
        paths.old
    } else {
        paths.target
    }
}

/// A checkpoint's state against the run it is resumed in: the same rows (by their
/// fingerprint), and a position the run's epochs and batches allow (a `state.json` edited by
/// hand or damaged would otherwise train nonsense without a word).
fn check_state(
    saved: &TrainState,
    data: &DataFingerprint,
    config: &RunConfig,
    batches_per_epoch: usize,
    last: &Path,
) -> Result<(), TrainError> {
    if let Some(then) = saved.data.as_ref().filter(|then| *then != data) {
        let changed = |name: &str, rows: (usize, usize)| {
            format!(
                "{name}: {} rows now, {} when the run started",
                rows.0, rows.1
            )
        };
        let mut what = Vec::new();
        if (then.train_rows, &then.train_hash) != (data.train_rows, &data.train_hash) {
            what.push(changed("training", (data.train_rows, then.train_rows)));
        }
        if (then.valid_rows, &then.valid_hash) != (data.valid_rows, &data.valid_hash) {
            what.push(changed("validation", (data.valid_rows, then.valid_rows)));
        }
        return Err(TrainError::Input(format!(
            "--resume: the data differs from what the run was trained on ({}; or the same \
             number of rows with other contents); a resumed run must see the same rows: \
             restore the files (data.train, data.valid may point to where they lie now), or \
             start a new run with another --out (nothing was changed)",
            what.join("; ")
        )));
    }
    let epochs = config.train.epochs;
    let updates_per_epoch = batches_per_epoch.div_ceil(config.train.grad_accum.max(1));
    let epoch = saved.epoch as usize;
    let consistent = epoch <= epochs
        && saved.batch_in_epoch < batches_per_epoch
        && (epoch < epochs || saved.batch_in_epoch == 0)
        && saved.global_step == (epoch * batches_per_epoch + saved.batch_in_epoch) as u64
        && saved.updates
            == epoch * updates_per_epoch + saved.batch_in_epoch / config.train.grad_accum.max(1);
    if !consistent {
        return Err(TrainError::checkpoint(
            &last.join(STATE_FILE),
            format!(
                "epoch {}, batch {}, step {}, update {} is no position of this run ({epochs} \
                 epochs of {batches_per_epoch} batches): the file is damaged; resume from a \
                 copy of the run, or start a new run with another --out",
                saved.epoch, saved.batch_in_epoch, saved.global_step, saved.updates
            ),
        ));
    }
    Ok(())
}

/// Reads `state.json` of a checkpoint folder.
pub fn read_state(dir: &Path) -> Result<TrainState, TrainError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::checkpoint(&path, e.to_string()))
}

/// Trains the model of `config` into the run folder `run` (created; `config.toml` written).
pub fn train(
    config: &RunConfig,
    run: &Path,
    options: &TrainOptions,
) -> Result<TrainSummary, TrainError> {
    if run.exists() && !run.is_dir() {
        return Err(TrainError::Input(format!(
            "--out {} is a file: a run's output is a folder; choose another --out",
            run.display()
        )));
    }
    if !options.resume && holds_run(run) {
        return Err(TrainError::Input(format!(
            "{} already holds a run: pass --resume to continue it, or choose another --out \
             (nothing was changed)",
            run.display()
        )));
    }
    if options.resume && !run.join(RunDir::CONFIG).is_file() {
        return Err(TrainError::Input(format!(
            "--resume: {} is not a run folder (no {}); give the --out of an earlier run, or \
             leave --resume out to start one",
            run.display(),
            RunDir::CONFIG
        )));
    }
    // The run folder's config.toml names its files absolutely, so the run opens from anywhere.
    let config = &config
        .with_absolute_paths()
        .map_err(io_error(&config.model.path))?;
    let run_dir = RunDir::create(run)?;
    let devices = encoder::parse_devices(&config.train.device)?;
    let base_device = devices[0].clone();
    let device = base_device.clone().autodiff();
    let parallel = DataParallel::new(devices.into_iter().map(Device::autodiff).collect());
    let seed = config.train.seed;

    let last = checkpoint_dir(run, "last");
    let resume_state = if options.resume {
        recover_checkpoints(run)?;
        if !last.is_dir() {
            let best = checkpoint_dir(run, "best");
            return Err(TrainError::Input(if best.is_dir() {
                format!(
                    "--resume: {} is missing (removed?), so the run cannot go on; its best \
                     checkpoint ({}) still serves evaluate, predict and export; to train \
                     again, choose another --out",
                    last.display(),
                    best.display()
                )
            } else {
                format!(
                    "--resume: no checkpoint in {} (the run stopped before its first one): \
                     delete {} and train again, or choose another --out",
                    last.display(),
                    run.display()
                )
            }));
        }
        check_resumable(&run_dir.read_config()?, config, run)?;
        let state = read_state(&last)?;
        verify_checkpoint_files(
            &last,
            &state,
            None,
            "the run cannot go on from it: restore checkpoints/last from a copy of the run, or \
             start a new run with another --out",
        )?;
        Some(state)
    } else {
        None
    };

    let data = RunData::load(config, Some(run))?;
    let pad_id = data.tokenizer.pad_id();
    let batch_size = config.train.batch_size;
    let grad_accum = config.train.grad_accum.max(1);
    let batches_per_epoch = data.train.len().div_ceil(batch_size);
    let schedule = CosineWithWarmup::new(
        config.train.lr,
        config.train.warmup_steps,
        updates_per_run(
            data.train.len(),
            batch_size,
            grad_accum,
            config.train.epochs,
        ),
    );

    if let Some(saved) = &resume_state {
        check_state(saved, &data.fingerprint, config, batches_per_epoch, &last)?;
    }

    // Initialisation (heads, adapters, DAO module) depends on the seed only.
    device.seed(seed);
    let mut model = SentimentModel::from_config(config, &device)?;
    if config.train.bf16_products && !encoder::bf16_products_available() {
        tracing::warn!(
            "train.bf16_products: this CPU has neither AMX tiles (or the OS refused them) nor \
             an AVX-512 BF16 faster than its f32 FMAs; the products stay f32"
        );
    }
    let mut weighting = RunWeighting::new(&config.strategy_config(), &device)?;
    if config.train.finetune == Finetune::Lora {
        tracing::info!("LoRA: {}", model.encoder.trainable_parameters());
    }
    tracing::info!(
        "{} training rows, {} validation rows, {batches_per_epoch} batches per epoch, \
         weighting {}",
        data.train.len(),
        data.valid.len(),
        weighting.strategy().name()
    );
    // torch.optim.AdamW (β 0.9, 0.999), fused on the CPU (optimizer.rs).
    let mut optimizer = AdamW::new(AdamWSettings {
        eps: config.train.eps,
        weight_decay: config.train.weight_decay,
        ..AdamWSettings::default()
    });
    let mut state = TrainState {
        data: Some(data.fingerprint.clone()),
        ..TrainState::new()
    };
    if let Some(mut saved) = resume_state {
        // A checkpoint of an older version has no fingerprint: the next ones will.
        saved.data = Some(data.fingerprint.clone());
        saved.files = None; // checked above; each checkpoint records its own
        model.load(&last, config.train.finetune)?;
        let path = last.join(OPTIMIZER_FILE);
        optimizer
            .load(&path, &device)
            .map_err(|e| TrainError::checkpoint(&path, e.to_string()))?;
        weighting.load(&last)?;
        // Only now that the checkpoint has loaded: a failed resume leaves the run as it was.
        run_dir.write_config(config)?;
        run_dir.truncate_to(saved.global_step, saved.epoch)?;
        if saved.finished {
            tracing::warn!(
                "{}: the run is complete ({} of {} epochs; see metrics.csv); nothing to train",
                run.display(),
                saved.epoch,
                config.train.epochs
            );
        }
        tracing::info!(
            "resuming at epoch {}, batch {} (step {})",
            saved.epoch + 1,
            saved.batch_in_epoch,
            saved.global_step
        );
        state = saved;
    }

    let batch_options = BatchOptions {
        batch_size,
        ..BatchOptions::from_config(&config.data_config(), batch_size)
    };
    let progress = Progress::new(
        options.progress,
        (batches_per_epoch * config.train.epochs) as u64,
        state.global_step,
    );
    let mut step_rows: Vec<StepRow> = Vec::new();
    let mut accumulator = GradientsAccumulator::<SentimentModel>::new();
    let mut stopped = false;
    let shared_parameters =
        config.dao.grad_norm_wrt == crate::config::GradNormWrt::SharedParameters;
    if parallel.is_parallel() && (shared_parameters || grad_accum > 1) {
        return Err(TrainError::Input(format!(
            "train.device = {:?}: data-parallel training does not support {} yet; use one \
             device, or a larger train.batch_size",
            config.train.device,
            if shared_parameters {
                "dao.grad_norm_wrt = \"shared-parameters\""
            } else {
                "train.grad_accum > 1"
            }
        )));
    }
    if !options.resume {
        // A fresh run's configuration is on disk before its first step, and only once its
        // data and model have loaded: a run that fails before leaves no run in the folder.
        run_dir.write_config(config)?;
    }

    while !state.finished && (state.epoch as usize) < config.train.epochs {
        let epoch = state.epoch;
        let started = Instant::now() - std::time::Duration::from_secs_f64(state.epoch_seconds);
        let batches = data
            .train
            .epoch(&batch_options, u64::from(epoch), pad_id, &device)
            .resume_at(state.batch_in_epoch);
        for batch in batches {
            let step = state.global_step + 1;
            let batch_seed = step_seed(seed, state.global_step);
            device.seed(batch_seed);
            let lr = schedule.lr(state.updates);
            let n = batch.rows.len();
            let input = batch.input;
            let mut replicas = None;
            // On the CPU the encoder's layers run through their hand-written forward and
            // backward (`encoder::TrainTape`); shared-parameters DAO needs burn's graph of them.
            let mut tape = None;
            let h = if parallel.is_parallel() {
                let forward = parallel.forward(&model.encoder, &input, batch_seed);
                let h = forward.first_token.clone();
                replicas = Some(forward);
                h
            } else if let Some((h, encoder_tape)) = (!shared_parameters)
                .then(|| model.encoder.forward_train(input.clone()))
                .flatten()
            {
                tape = Some(encoder_tape);
                h
            } else {
                model.encoder.first_token(input.clone())
            };
            let h_leaf = h.clone();
            // Sampled once: every evaluation of the heads in this step uses the same masks.
            let masks = model.heads.sample_dropout_masks(n, &device);
            let heads_module = &model.heads;
            let scores = batch.scores;
            let labels = batch.classes;
            let mut task_outputs = |h: Tensor<2>| {
                let out = heads_module.forward_with_masks(h, masks.as_ref());
                let diff = out.scores.reshape([n]) - scores.clone();
                dao::TaskOutputs {
                    regression_loss: (diff.clone() * diff).mean(),
                    logits: out.logits,
                    labels: labels.clone(),
                }
            };
            // A NaN loss can surface inside the strategy first (e.g. DAO's gradient norms).
            // grad_norm_wrt = "shared-parameters": each task gradient needs its own encoder
            // forward; reseeding makes its dropout masks those of the loss's forward.
            let mut trunk = dao::SharedModule {
                module: &model.encoder,
                forward: |encoder: &encoder::Encoder| {
                    device.seed(batch_seed);
                    encoder.first_token(input.clone())
                },
            };
            let shared: Option<&mut dyn dao::SharedParameters> =
                shared_parameters.then_some(&mut trunk);
            let weighted = weighting
                .strategy()
                .weigh_step(dao::StepInput {
                    representation: h,
                    heads: &mut task_outputs,
                    shared,
                })
                .map_err(|error| {
                    progress.finish();
                    TrainError::Step {
                        step,
                        epoch: epoch + 1,
                        error,
                        checkpoint: LastCheckpoint::of(run),
                    }
                })?;
            let d = &weighted.diagnostics;
            if !d.loss.is_finite() {
                progress.finish();
                return Err(TrainError::NonFiniteLoss {
                    step,
                    epoch: epoch + 1,
                    loss: d.loss,
                    checkpoint: LastCheckpoint::of(run),
                });
            }
            step_rows.push(step_row(step, epoch + 1, lr, d));
            let loss = if grad_accum > 1 {
                weighted.loss.div_scalar(grad_accum as f32)
            } else {
                weighted.loss
            };
            let grads = loss.backward();
            weighting.update(&grads);
            let grad_h = tape.as_ref().and_then(|_| h_leaf.grad(&grads));
            let params = |grads, tape: Option<encoder::TrainTape>, grad_h| {
                let mut params = GradientsParams::from_grads(grads, &model);
                if let Some(tape) = tape {
                    tape.backward(grad_h, &mut params);
                }
                params
            };
            state.batch_in_epoch += 1;
            state.global_step = step;
            let sum = f64::from_bits(state.epoch_loss_sum_bits) + f64::from(d.loss);
            state.epoch_loss_sum_bits = sum.to_bits();
            state.epoch_loss_count += 1;
            progress.step(d.loss, d.w_c, epoch + 1);

            let boundary = state.batch_in_epoch.is_multiple_of(grad_accum)
                || state.batch_in_epoch == batches_per_epoch;
            if let Some(forward) = replicas {
                // Several devices (grad_accum is 1 here, checked above).
                let grads = parallel.gradients(grads, &model, forward);
                model = optimizer.step(lr, model, grads);
                state.updates += 1;
            } else if grad_accum > 1 {
                let grads = params(grads, tape, grad_h);
                accumulator.accumulate(&model, grads);
                if boundary {
                    model = optimizer.step(lr, model, accumulator.grads());
                    state.updates += 1;
                }
            } else if let Some(tape) = tape {
                // Each encoder layer is updated as soon as its gradients are made, so only
                // one layer's gradients are alive at a time (the same update as after the
                // whole backward: AdamW is per parameter).
                let mut rest = GradientsParams::from_grads(grads, &model);
                let mut slot = Some(model);
                tape.backward_by_layer(grad_h, &mut rest, |layer| {
                    if let Some(current) = slot.take() {
                        slot = Some(optimizer.step(lr, current, layer));
                    }
                });
                model = slot.expect("the model comes back from every layer's update");
                model = optimizer.step(lr, model, rest);
                state.updates += 1;
            } else {
                let grads = params(grads, None, None);
                model = optimizer.step(lr, model, grads);
                state.updates += 1;
            }
            if !boundary || state.batch_in_epoch == batches_per_epoch {
                continue;
            }
            let every = config.train.checkpoint_every_steps;
            let periodic = every.is_some_and(|k| k > 0 && state.updates.is_multiple_of(k));
            let stop = options.stop_after_steps.is_some_and(|s| step >= s);
            if periodic || stop {
                state.epoch_seconds = started.elapsed().as_secs_f64();
                run_dir.append_steps(&step_rows)?;
                step_rows.clear();
                Checkpoint {
                    model: &model,
                    optimizer: &optimizer,
                    weighting: &weighting,
                    state: &state,
                    finetune: config.train.finetune,
                }
                .write(run, "last")?;
            }
            if stop {
                stopped = true;
                break;
            }
        }
        if stopped {
            break;
        }

        // End of epoch: validation, metrics.csv, best and last checkpoints.
        weighting.end_epoch();
        let valid_model = model.valid();
        let (metrics, _) = evaluate_set(
            &valid_model,
            &data.valid,
            batch_size,
            pad_id,
            &base_device,
            &RowsProgress::hidden(),
        )?;
        let seconds = started.elapsed().as_secs_f64();
        let train_loss =
            f64::from_bits(state.epoch_loss_sum_bits) / state.epoch_loss_count.max(1) as f64;
        let row = EpochRow::new(
            epoch + 1,
            train_loss,
            &metrics,
            seconds,
            crate::peak_memory_bytes(),
        );
        progress.println(&epoch_line(&row));
        run_dir.append_epochs(std::slice::from_ref(&row))?;
        run_dir.append_steps(&step_rows)?;
        step_rows.clear();

        let metric = config.train.best_metric;
        let value = metrics.get(metric);
        let improved = match state.best_metric() {
            None => !value.is_nan(),
            Some(best) => metric.improves(value, best),
        };
        if improved {
            state.best_metric_bits = Some(value.to_bits());
            state.best_epoch = Some(epoch + 1);
            state.epochs_without_improvement = 0;
        } else {
            state.epochs_without_improvement += 1;
        }
        state.epoch += 1;
        state.batch_in_epoch = 0;
        state.epoch_loss_sum_bits = 0f64.to_bits();
        state.epoch_loss_count = 0;
        state.epoch_seconds = 0.0;
        if config
            .train
            .early_stopping_patience
            .is_some_and(|p| state.epochs_without_improvement >= p)
        {
            tracing::info!(
                "early stopping: no improvement of {metric} for {} epochs",
                state.epochs_without_improvement
            );
            state.finished = true;
        }
        if state.epoch as usize >= config.train.epochs {
            state.finished = true;
        }
        let checkpoint = Checkpoint {
            model: &model,
            optimizer: &optimizer,
            weighting: &weighting,
            state: &state,
            finetune: config.train.finetune,
        };
        if improved {
            checkpoint.write(run, "best")?;
        }
        checkpoint.write(run, "last")?;
        if options
            .stop_after_steps
            .is_some_and(|s| state.global_step >= s)
            && !state.finished
        {
            break;
        }
    }
    progress.finish();

    let report = if state.finished {
        Some(crate::write_report(run)?.markdown)
    } else {
        None
    };
    Ok(TrainSummary {
        run_dir: run.to_path_buf(),
        epochs: run_dir.read_epochs()?,
        best_epoch: state.best_epoch,
        finished: state.finished,
        report,
    })
}

fn step_row(step: u64, epoch: u32, lr: f64, d: &dao::Diagnostics) -> StepRow {
    let f = |v: Option<f32>| v.map(f64::from);
    StepRow {
        step,
        epoch,
        lr,
        loss_total: f64::from(d.loss),
        loss_reg: Some(f64::from(d.l_r)),
        loss_cls: Some(f64::from(d.l_c)),
        loss_imb: f(d.l_imb),
        lambda_reg: f(d.lambda_r),
        lambda_cls: f(d.lambda_c),
        w_reg: f(d.w_r),
        w_cls: f(d.w_c),
        alpha: f(d.alpha),
        beta: f(d.beta),
    }
}

/// One line per epoch, for logs and the progress bar.
pub fn epoch_line(row: &EpochRow) -> String {
    format!(
        "epoch {:>3}  loss {:.5}  mse {:.5}  mae {:.5}  r2 {:.4}  acc {:.4}  f1 {:.4}  {:.1}s",
        row.epoch, row.train_loss, row.mse, row.mae, row.r2, row.accuracy, row.f1, row.seconds
    )
}

/// The validation metrics as a table (printed at the end of `train` and by `evaluate`).
pub fn metrics_table(rows: &[EpochRow]) -> String {
    let mut out = String::from(
        "epoch | train_loss | mse | mae | rmse | r2 | accuracy | precision | recall | f1 | seconds\n",
    );
    for r in rows {
        out.push_str(&format!(
            "{} | {:.5} | {:.5} | {:.5} | {:.5} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.1}\n",
            r.epoch,
            r.train_loss,
            r.mse,
            r.mae,
            r.rmse,
            r.r2,
            r.accuracy,
            r.precision,
            r.recall,
            r.f1,
            r.seconds
        ));
    }
    out
}

/// A progress bar with ETA, live loss and `w_c` on a terminal; plain lines on stderr
/// otherwise (about 50 per run, and one per epoch); nothing but tracing logs when not wanted.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    total: u64,
    every: u64,
    done: std::cell::Cell<u64>,
    started: Instant,
}

impl Progress {
    fn new(wanted: bool, total: u64, done: u64) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (wanted && terminal).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
                )
                .expect("valid template"),
            );
            bar.set_position(done);
            bar
        });
        Self {
            bar,
            plain: wanted && !terminal,
            total,
            every: (total / 50).max(1),
            done: std::cell::Cell::new(done),
            started: Instant::now(),
        }
    }

    fn step(&self, loss: f32, w_c: Option<f32>, epoch: u32) {
        let w = w_c.map(|w| format!("  w_c {w:.3}")).unwrap_or_default();
        let done = self.done.get() + 1;
        self.done.set(done);
        if let Some(bar) = &self.bar {
            bar.set_message(format!("epoch {epoch}  loss {loss:.4}{w}"));
            bar.inc(1);
        } else if self.plain && done.is_multiple_of(self.every) {
            eprintln!(
                "step {done}/{}  epoch {epoch}  loss {loss:.5}{w}  {:.0}s",
                self.total,
                self.started.elapsed().as_secs_f64()
            );
        } else {
            tracing::debug!("step {done} epoch {epoch} loss {loss:.5}{w}");
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None if self.plain => eprintln!("{line}"),
            None => tracing::info!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Validation metrics of a run's own validation rows, or of `data_file`'s, with the model in
/// `checkpoints/<which>`. The rows are read and checked before the model is loaded.
pub fn evaluate_run(
    run: &Path,
    which: &str,
    data_file: Option<&Path>,
    device: &Device,
    options: &InferenceOptions,
) -> Result<ValidationMetrics, TrainError> {
    let config = crate::model::run_config(run, options.model_folder.as_deref())?;
    // A file of its own, or the run's validation file, needs none of the others (which may not
    // be here); a split of the training file needs that file, but only its validation rows are
    // tokenized.
    let data_config = config.data_config();
    if data_file.is_none() {
        let (key, file) = match &config.data.valid {
            Some(valid) => ("data.valid", valid),
            None => ("data.train", &config.data.train),
        };
        if !file.exists() {
            return Err(TrainError::Input(format!(
                "{}: the run's {key} is not there any more; give --data FILE (JSON Lines, CSV \
                 or TSV with scores) to evaluate on",
                file.display()
            )));
        }
    }
    let rows = match data_file.or(config.data.valid.as_deref()) {
        None => data::load_splits(&data_config, Some(run))?.valid,
        Some(file) => {
            let options = data::LoadOptions {
                rejected_dir: Some(run.to_path_buf()),
                ..data_config.load_options()
            };
            let own = config
                .data
                .valid
                .as_deref()
                .is_some_and(|valid| crate::same_path(valid, file));
            let options = if own {
                // Named as training named it: never over the training file's rejected lines.
                data::validation_options(&options, file, &config.data.train)
            } else {
                // Another file's rejected lines never replace the ones training kept.
                let kept = data::rejected_path(file, Some(run));
                let part = |p: Option<&std::ffi::OsStr>| {
                    p.unwrap_or_default().to_string_lossy().into_owned()
                };
                let name = format!(
                    "{}.evaluate.rejected.{}",
                    part(file.file_stem()),
                    part(kept.extension())
                );
                data::LoadOptions {
                    rejected_file: Some(kept.with_file_name(name)),
                    ..options
                }
            };
            data::load(file, &options)?
        }
    };
    let tokenizer = RunData::tokenizer(&config)?;
    let set = TokenizedSet::new(&rows, &tokenizer, data_config.input, None)?;
    let mut model = SentimentModel::from_checkpoint(&config, run, which, device)?;
    model.encoder.set_product_precision(options.products);
    let (metrics, _) = evaluate_set(
        &model,
        &set,
        options.batch_size(&config),
        tokenizer.pad_id(),
        device,
        &RowsProgress::new(options.progress, set.len(), "evaluate"),
    )?;
    Ok(metrics)
}
