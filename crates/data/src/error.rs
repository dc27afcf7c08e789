//! Errors of the data crate: each names the file, and for a bad row the line.

use std::path::PathBuf;

/// What is wrong with one input row (the file and line are in [`DataError::Row`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowProblem {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("invalid UTF-8")]
    InvalidUtf8,
    #[error("blank line")]
    BlankLine,
    #[error("missing field `{0}`")]
    MissingField(String),
    #[error("the header has no column `{name}` (columns: {columns})")]
    MissingColumn { name: String, columns: String },
    #[error("field `{field}` must be {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
    #[error("score `{0}` is not a finite number")]
    ScoreNotFinite(String),
    #[error("score {0} is outside [-1, 1]")]
    ScoreOutOfRange(f64),
    #[error("empty text")]
    EmptyText,
    #[error("empty `{0}` (input = \"text+target\" needs a target on every row)")]
    EmptyTarget(String),
    #[error(
        "too few fields: {found}, the header has {expected}{}",
        if *.open_quote { " (a quoted field runs over several lines here: if a quote opened here is never closed, it takes the lines below)" } else { "" }
    )]
    TooFewFields {
        found: usize,
        expected: usize,
        open_quote: bool,
    },
    #[error("malformed CSV: {0}")]
    Csv(String),
}

/// Everything that can go wrong loading, splitting or tokenizing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    // `cause`, not `source`: the message already includes it, and `{:#}` would repeat it.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: line {line}: {problem}", path.display())]
    Row {
        path: PathBuf,
        line: u64,
        problem: RowProblem,
    },
    #[error("{}: {message}", path.display())]
    Header { path: PathBuf, message: String },
    #[error("{}: no rows{detail}", path.display())]
    Empty { path: PathBuf, detail: String },
    #[error("{}: unknown data format (expected .jsonl, .ndjson, .json, .csv or .tsv)", path.display())]
    UnknownFormat { path: PathBuf },
    #[error("invalid data config: {0}")]
    Config(String),
    #[error("cannot split: {0}")]
    Split(String),
    #[error("{}: line {line}: {cause}", path.display())]
    Tokenize {
        path: PathBuf,
        line: u64,
        cause: Box<encoder::EncoderError>,
    },
    /// Boxed: encoder errors are large and every `Result` of this crate would carry their size.
    #[error(transparent)]
    Encoder(Box<encoder::EncoderError>),
}

impl From<encoder::EncoderError> for DataError {
    fn from(error: encoder::EncoderError) -> Self {
        Self::Encoder(Box::new(error))
    }
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            cause,
        }
    }
}
