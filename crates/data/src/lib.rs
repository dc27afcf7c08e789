//! Training data for the sentiment model: rows of (text, optional target, score `y ∈ [-1, 1]`)
//! read from JSON Lines, CSV or TSV and validated row by row, the 5-class label `z` derived from
//! `y` (DAO-SPEC.md, Data), the seeded train/validation split by unique text, tokenization
//! once per run, and deterministic, resumable batches as burn tensors; and texts to score,
//! from the same formats ([`load_texts`]).
//!
//! ```no_run
//! use data::{load_splits, BatchOptions, DataConfig, TokenizedSet};
//! use encoder::{parse_device, ModelFolder, TextTokenizer};
//! # fn main() -> Result<(), data::DataError> {
//! let config = DataConfig { train: "data/finsent/train.jsonl".into(), ..Default::default() };
//! let splits = load_splits(&config, Some("runs/1".as_ref()))?;
//! let folder = ModelFolder::open("models/tiny".as_ref(), None)?;
//! let tokenizer = TextTokenizer::from_file(&folder.tokenizer, &folder.config, config.max_len)?;
//! let train = TokenizedSet::new(&splits.train, &tokenizer, config.input, None)?;
//! let device = parse_device("cpu")?;
//! let options = BatchOptions::from_config(&config, 10);
//! for batch in train.epoch(&options, 0, tokenizer.pad_id(), &device) {
//!     let _ = (batch.input, batch.scores, batch.classes);
//! }
//! # Ok(()) }
//! ```

mod batch;
mod config;
mod error;
mod labels;
mod load;
mod rng;
mod split;
mod stats;
mod tokenize;

use std::path::Path;

pub use batch::{epoch_plan, Batch, BatchOptions, EpochBatches};
pub use config::{BadRowPolicy, ClassThresholds, DataConfig, InputMode};
pub use error::{DataError, RowProblem};
pub use labels::{class_counts, score_class, CLASS_NAMES, NUM_CLASSES};
pub use load::{
    load, load_texts, rejected_path, Dataset, Example, FileFormat, LoadOptions, TextRow,
};
pub use rng::SplitMix64;
pub use split::{split_by_text, text_key};
pub use stats::{DatasetStats, LengthStats};
pub use tokenize::{encode_example, TokenCache, TokenizedSet};

/// The training and validation data of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Splits {
    pub train: Dataset,
    pub valid: Dataset,
    /// `valid` was split off `train` (no validation file given).
    pub split_from_train: bool,
}

/// The options that load `valid`, a validation file beside the training file `train`: the
/// same as `options`, but where the two would share a rejected file (inputs named alike,
/// `a/x.jsonl` and `b/x.jsonl`) the validation file's rejected lines go to
/// `<stem>.valid.rejected.<ext>`, so neither overwrites (or, loading clean, removes) the other's.
pub fn validation_options(options: &LoadOptions, valid: &Path, train: &Path) -> LoadOptions {
    let rejected = |input| rejected_path(input, options.rejected_dir.as_deref());
    if rejected(valid) != rejected(train) {
        return options.clone();
    }
    let path = rejected(valid);
    let text = |part: Option<&std::ffi::OsStr>| {
        part.map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let name = format!(
        "{}.valid.rejected.{}",
        text(valid.file_stem()),
        text(path.extension())
    );
    LoadOptions {
        rejected_file: Some(path.with_file_name(name)),
        ..options.clone()
    }
}

/// Loads the data of `config`: the validation file when given, else a seeded split of the
/// training file by unique text. Rejected rows (policy `skip`) go to `rejected_dir` (the run's
/// output folder) or, when `None`, beside each input.
pub fn load_splits(config: &DataConfig, rejected_dir: Option<&Path>) -> Result<Splits, DataError> {
    config.validate()?;
    let options = LoadOptions {
        rejected_dir: rejected_dir.map(Path::to_path_buf),
        ..config.load_options()
    };
    let mut train = load(&config.train, &options)?;
    match &config.valid {
        Some(valid) => Ok(Splits {
            train,
            valid: load(valid, &validation_options(&options, valid, &config.train))?,
            split_from_train: false,
        }),
        None => {
            let examples = std::mem::take(&mut train.examples);
            let (train_rows, valid_rows) =
                split_by_text(examples, config.valid_fraction, config.seed)?;
            let valid = Dataset {
                path: train.path.clone(),
                examples: valid_rows,
                rejected: 0,
                rejected_file: None,
            };
            train.examples = train_rows;
            Ok(Splits {
                train,
                valid,
                split_from_train: true,
            })
        }
    }
}
