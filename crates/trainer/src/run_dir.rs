//! The run folder: `config.toml`, `metrics.csv` (one row per epoch), `steps.csv` (one row per
//! training batch), written so that a crash never leaves a half-written file.
//!
//! Every write goes to a temporary name in the same folder, is flushed to disk, then renamed
//! over the real name: a reader sees either the previous complete file or the new one.
//! Appending therefore rewrites the file; the trainer appends step rows in batches (once per
//! epoch or checkpoint), which keeps that cheap.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, ConfigSources, Metric, RunConfig};
use crate::metrics::ValidationMetrics;

/// One row of `metrics.csv`: an epoch's training loss and validation metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRow {
    /// 1-based epoch number.
    pub epoch: u32,
    /// Mean total training loss over the epoch's batches.
    pub train_loss: f64,
    pub mse: f64,
    pub mae: f64,
    pub rmse: f64,
    pub r2: f64,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Wall-clock seconds of the epoch (training and validation).
    pub seconds: f64,
    /// Peak resident memory of the process so far, if known.
    pub peak_mem_bytes: Option<u64>,
}

impl EpochRow {
    /// Column names, in file order.
    pub const COLUMNS: [&'static str; 12] = [
        "epoch",
        "train_loss",
        "mse",
        "mae",
        "rmse",
        "r2",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "seconds",
        "peak_mem_bytes",
    ];

    pub fn new(
        epoch: u32,
        train_loss: f64,
        metrics: &ValidationMetrics,
        seconds: f64,
        peak_mem_bytes: Option<u64>,
    ) -> Self {
        Self {
            epoch,
            train_loss,
            mse: metrics.mse,
            mae: metrics.mae,
            rmse: metrics.rmse,
            r2: metrics.r2,
            accuracy: metrics.accuracy,
            precision: metrics.precision,
            recall: metrics.recall,
            f1: metrics.f1,
            seconds,
            peak_mem_bytes,
        }
    }

    /// The value of one validation metric.
    pub fn get(&self, metric: Metric) -> f64 {
        match metric {
            Metric::Mse => self.mse,
            Metric::Mae => self.mae,
            Metric::Rmse => self.rmse,
            Metric::R2 => self.r2,
            Metric::Accuracy => self.accuracy,
            Metric::Precision => self.precision,
            Metric::Recall => self.recall,
            Metric::F1 => self.f1,
        }
    }
}

/// One row of `steps.csv`: the losses and task weights of one training batch.
/// Values a weighting strategy does not have (λ without gradient balance, α and β outside
/// DAO, …) are `None` and written as empty fields.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StepRow {
    /// 1-based count of training batches so far in the run (= optimizer updates when
    /// `grad_accum` is 1).
    pub step: u64,
    /// 1-based epoch the batch belongs to.
    pub epoch: u32,
    /// Learning rate used for the batch's update.
    pub lr: f64,
    /// The loss that was back-propagated (`L_mtl` for DAO).
    pub loss_total: f64,
    /// `L_r`.
    pub loss_reg: Option<f64>,
    /// `L_c` (plain mean cross-entropy).
    pub loss_cls: Option<f64>,
    /// `L_imb` (DAO's imbalance-aware loss).
    pub loss_imb: Option<f64>,
    /// `λ_r`, `λ_c` (gradient balance).
    pub lambda_reg: Option<f64>,
    pub lambda_cls: Option<f64>,
    /// `w_r`, `w_c` (task weights).
    pub w_reg: Option<f64>,
    pub w_cls: Option<f64>,
    /// DAO's α and β.
    pub alpha: Option<f64>,
    pub beta: Option<f64>,
}

impl StepRow {
    /// Column names, in file order.
    pub const COLUMNS: [&'static str; 13] = [
        "step",
        "epoch",
        "lr",
        "loss_total",
        "loss_reg",
        "loss_cls",
        "loss_imb",
        "lambda_reg",
        "lambda_cls",
        "w_reg",
        "w_cls",
        "alpha",
        "beta",
    ];
}

/// Errors of the run folder, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: not a run folder (no such directory)", .0.display())]
    NotADirectory(PathBuf),
    #[error(
        "{}: not a run folder (no config.toml): give the --out folder of a `train` run",
        .0.display()
    )]
    NotARun(PathBuf),
    #[error("{}: {message}", path.display())]
    Csv { path: PathBuf, message: String },
    #[error("{}: columns are `{found}`, expected `{expected}`", path.display())]
    Columns {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RunDirError + '_ {
    move |error| RunDirError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// A run folder on disk.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    pub const CONFIG: &'static str = "config.toml";
    pub const METRICS: &'static str = "metrics.csv";
    pub const STEPS: &'static str = "steps.csv";
    pub const REPORT: &'static str = "report.md";

    /// Creates the folder (and its parents) if needed; an existing run folder is reused.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self, RunDirError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_error(&root))?;
        Ok(Self { root })
    }

    /// Opens an existing folder.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, RunDirError> {
        let root = root.into();
        if !root.is_dir() {
            return Err(RunDirError::NotADirectory(root));
        }
        Ok(Self { root })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// A file of the folder, e.g. `run.file(RunDir::METRICS)`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Writes the resolved configuration as `config.toml`.
    pub fn write_config(&self, config: &RunConfig) -> Result<(), RunDirError> {
        let path = self.file(Self::CONFIG);
        write_atomic(&path, config.to_toml()?.as_bytes()).map_err(io_error(&path))
    }

    /// Reads `config.toml` back (no environment, no overrides).
    pub fn read_config(&self) -> Result<RunConfig, RunDirError> {
        if !self.file(Self::CONFIG).is_file() {
            return Err(RunDirError::NotARun(self.root.clone()));
        }
        Ok(RunConfig::load_from(&ConfigSources::file_only(
            self.file(Self::CONFIG),
        ))?)
    }

    /// Appends epoch rows to `metrics.csv` (created with its header if absent).
    pub fn append_epochs(&self, rows: &[EpochRow]) -> Result<(), RunDirError> {
        append_rows(&self.file(Self::METRICS), &EpochRow::COLUMNS, rows)
    }

    /// Appends step rows to `steps.csv` (created with its header if absent).
    pub fn append_steps(&self, rows: &[StepRow]) -> Result<(), RunDirError> {
        append_rows(&self.file(Self::STEPS), &StepRow::COLUMNS, rows)
    }

    /// The rows of `metrics.csv` (empty if it does not exist yet).
    pub fn read_epochs(&self) -> Result<Vec<EpochRow>, RunDirError> {
        read_rows(&self.file(Self::METRICS), &EpochRow::COLUMNS)
    }

    /// The rows of `steps.csv` (empty if it does not exist yet).
    pub fn read_steps(&self) -> Result<Vec<StepRow>, RunDirError> {
        read_rows(&self.file(Self::STEPS), &StepRow::COLUMNS)
    }

    /// On resume from a checkpoint taken after batch `last_step` with `last_epoch` epochs
    /// complete: drops the rows written after it (steps > `last_step`, epochs > `last_epoch`),
    /// so the resumed run does not log them twice.
    pub fn truncate_to(&self, last_step: u64, last_epoch: u32) -> Result<(), RunDirError> {
        let steps: Vec<StepRow> = self.read_steps()?;
        if steps.iter().any(|r| r.step > last_step) {
            let kept: Vec<_> = steps.into_iter().filter(|r| r.step <= last_step).collect();
            rewrite_rows(&self.file(Self::STEPS), &StepRow::COLUMNS, &kept)?;
        }
        let epochs: Vec<EpochRow> = self.read_epochs()?;
        if epochs.iter().any(|r| r.epoch > last_epoch) {
            let kept: Vec<_> = epochs
                .into_iter()
                .filter(|r| r.epoch <= last_epoch)
                .collect();
            rewrite_rows(&self.file(Self::METRICS), &EpochRow::COLUMNS, &kept)?;
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// crash leaves either the old complete file or the new one ([`replace_file`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_file(
        path,
        |tmp| {
            let mut file = fs::File::create(tmp)?;
            file.write_all(bytes)?;
            file.sync_all()
        },
        |error| error,
    )
}

/// Has `write` make the new contents of `path` under a temporary name in the same folder
/// (`.<name>.tmp`), then renames it over `path`: a crash or a failed write leaves the old
/// file, if any, whole, and no temporary file behind. `io` turns an I/O error of the rename
/// (or a `path` without a file name) into the caller's error.
pub fn replace_file<E>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
    io: impl Fn(std::io::Error) -> E,
) -> Result<(), E> {
    let name = path
        .file_name()
        .ok_or_else(|| io(std::io::Error::other("path has no file name")))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let written = write(&tmp).and_then(|()| fs::rename(&tmp, path).map_err(&io));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
        return written;
    }
    // Persist the rename itself; not every platform can open a directory, hence best effort.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// Whether `a` and `b` name the same existing file or folder (links and `..` resolved).
pub fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn header(columns: &[&str]) -> String {
    columns.join(",")
}

fn csv_error(path: &Path) -> impl Fn(csv::Error) -> RunDirError + '_ {
    move |e| RunDirError::Csv {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn serialize_rows<T: Serialize>(
    path: &Path,
    out: &mut Vec<u8>,
    rows: &[T],
) -> Result<(), RunDirError> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(out);
    for row in rows {
        writer.serialize(row).map_err(csv_error(path))?;
    }
    writer.flush().map_err(io_error(path))
}

fn append_rows<T: Serialize>(path: &Path, columns: &[&str], rows: &[T]) -> Result<(), RunDirError> {
    let mut content = match fs::read(path) {
        Ok(existing) => {
            check_header(path, columns, &existing)?;
            existing
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            format!("{}\n", header(columns)).into_bytes()
        }
        Err(e) => return Err(io_error(path)(e)),
    };
    if !content.ends_with(b"\n") {
        content.push(b'\n');
    }
    serialize_rows(path, &mut content, rows)?;
    write_atomic(path, &content).map_err(io_error(path))
}

fn rewrite_rows<T: Serialize>(
    path: &Path,
    columns: &[&str],
    rows: &[T],
) -> Result<(), RunDirError> {
    let mut content = format!("{}\n", header(columns)).into_bytes();
    serialize_rows(path, &mut content, rows)?;
    write_atomic(path, &content).map_err(io_error(path))
}

fn check_header(path: &Path, columns: &[&str], content: &[u8]) -> Result<(), RunDirError> {
    let first = content.split(|&b| b == b'\n').next().unwrap_or_default();
    let found = String::from_utf8_lossy(first).trim_end().to_string();
    let expected = header(columns);
    if found != expected {
        return Err(RunDirError::Columns {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    Ok(())
}

fn read_rows<T: for<'de> Deserialize<'de>>(
    path: &Path,
    columns: &[&str],
) -> Result<Vec<T>, RunDirError> {
    let content = match fs::read(path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(path)(e)),
    };
    check_header(path, columns, &content)?;
    let mut reader = csv::Reader::from_reader(content.as_slice());
    reader
        .deserialize()
        .collect::<Result<Vec<T>, _>>()
        .map_err(csv_error(path))
}

/// Peak resident memory of this process in bytes (`VmHWM` of `/proc/self/status`); `None`
/// where that file does not exist (not Linux) or cannot be read.
pub fn peak_memory_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut parts = line["VmHWM:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => Some(value * 1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(e: u32, mse: f64) -> EpochRow {
        EpochRow {
            epoch: e,
            train_loss: 0.5 / f64::from(e),
            mse,
            mae: 0.1,
            rmse: 0.2,
            r2: 0.3,
            accuracy: 0.7,
            precision: 0.71,
            recall: 0.7,
            f1: 0.69,
            seconds: 12.5,
            peak_mem_bytes: if e == 1 { None } else { Some(1 << 30) },
        }
    }

    fn step(s: u64, e: u32) -> StepRow {
        StepRow {
            step: s,
            epoch: e,
            lr: 1e-5 * s as f64,
            loss_total: 0.25,
            loss_reg: Some(0.1),
            w_cls: (s > 1).then_some(0.4),
            ..StepRow::default()
        }
    }

    #[test]
    fn csv_columns_are_the_documented_ones_and_options_are_empty() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path().join("run")).unwrap();
        run.append_epochs(&[epoch(1, 0.04)]).unwrap();
        run.append_steps(&[step(1, 1)]).unwrap();
        let metrics = fs::read_to_string(run.file(RunDir::METRICS)).unwrap();
        let mut lines = metrics.lines();
        assert_eq!(
            lines.next().unwrap(),
            "epoch,train_loss,mse,mae,rmse,r2,accuracy,precision,recall,f1,seconds,peak_mem_bytes"
        );
        assert_eq!(
            lines.next().unwrap(),
            "1,0.5,0.04,0.1,0.2,0.3,0.7,0.71,0.7,0.69,12.5,"
        );
        let steps = fs::read_to_string(run.file(RunDir::STEPS)).unwrap();
        let mut lines = steps.lines();
        assert_eq!(
            lines.next().unwrap(),
            "step,epoch,lr,loss_total,loss_reg,loss_cls,loss_imb,lambda_reg,lambda_cls,w_reg,w_cls,alpha,beta"
        );
        assert_eq!(lines.next().unwrap(), "1,1,0.00001,0.25,0.1,,,,,,,,");
    }

    #[test]
    fn append_read_back_and_truncate_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        run.append_steps(&[step(1, 1), step(2, 1)]).unwrap();
        run.append_steps(&[step(3, 2), step(4, 2)]).unwrap();
        run.append_epochs(&[epoch(1, 0.04)]).unwrap();
        run.append_epochs(&[epoch(2, 0.03)]).unwrap();
        assert_eq!(
            run.read_steps().unwrap(),
            vec![step(1, 1), step(2, 1), step(3, 2), step(4, 2)]
        );
        assert_eq!(
            run.read_epochs().unwrap(),
            vec![epoch(1, 0.04), epoch(2, 0.03)]
        );

        // The checkpoint was taken after batch 3, with 1 epoch complete.
        run.truncate_to(3, 1).unwrap();
        assert_eq!(
            run.read_steps().unwrap(),
            vec![step(1, 1), step(2, 1), step(3, 2)]
        );
        assert_eq!(run.read_epochs().unwrap(), vec![epoch(1, 0.04)]);
        run.append_steps(&[step(4, 2)]).unwrap();
        assert_eq!(run.read_steps().unwrap().len(), 4);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn a_foreign_csv_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        fs::write(run.file(RunDir::METRICS), "epoch,loss\n1,2\n").unwrap();
        let err = run.append_epochs(&[epoch(1, 0.1)]).unwrap_err().to_string();
        assert!(
            err.contains("metrics.csv") && err.contains("epoch,loss"),
            "{err}"
        );
        // A corrupt row is an error naming the file, not a panic.
        fs::write(
            run.file(RunDir::STEPS),
            format!("{}\n1,1,x,0.1,,,,,,,,,\n", StepRow::COLUMNS.join(",")),
        )
        .unwrap();
        let err = run.read_steps().unwrap_err().to_string();
        assert!(err.contains("steps.csv"), "{err}");
    }

    #[test]
    fn config_round_trips_through_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("in.toml");
        fs::write(
            &src_path,
            "[model]\npath = \"models/m\"\n[data]\ntrain = \"t.jsonl\"\n[train]\nlr = 3e-5\n",
        )
        .unwrap();
        let config = RunConfig::load_from(&ConfigSources::file_only(&src_path)).unwrap();
        let run = RunDir::create(dir.path().join("out")).unwrap();
        run.write_config(&config).unwrap();
        assert_eq!(run.read_config().unwrap(), config);
        assert!(RunDir::open(dir.path().join("missing")).is_err());
    }

    #[test]
    fn write_atomic_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.txt");
        write_atomic(&path, b"first, long content").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "second");
    }

    #[test]
    fn vm_hwm_is_parsed_in_bytes() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(1234 * 1024));
        assert_eq!(parse_vm_hwm("VmRSS: 1 kB\n"), None);
        if cfg!(target_os = "linux") {
            assert!(peak_memory_bytes().is_some_and(|b| b > 1 << 20));
        }
    }
}
