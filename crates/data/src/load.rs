//! Reading (text, target, score) rows from JSON Lines, CSV or TSV, validating every row; and
//! texts to score (no score needed) from the same formats ([`load_texts`]).
//!
//! Files are streamed: memory holds the kept rows only. A bad row either stops the load with
//! an error naming the file and line, or (policy `skip`) is written unchanged to the rejected
//! file and counted, never dropped silently.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::{BadRowPolicy, ClassThresholds};
use crate::error::{DataError, RowProblem};
use crate::labels::score_class;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One validated row.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text: String,
    /// The entity the score is about, when the file has one for this row.
    pub target: Option<String>,
    /// Polarity `y ∈ [-1, 1]`.
    pub score: f32,
    /// The 5-class label `z` of `score`.
    pub class: u8,
    /// 1-based line of the row in its file (where a CSV record starts).
    pub line: u64,
}

/// A text to score, as [`load_texts`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct TextRow {
    pub text: String,
    /// The entity to score the text about, when the file has one for this row.
    pub target: Option<String>,
    /// 1-based line of the row in its file (where a CSV record starts).
    pub line: u64,
}

/// The kept rows of one file and what was rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub path: PathBuf,
    pub examples: Vec<Example>,
    /// Rows rejected under policy `skip`.
    pub rejected: usize,
    /// Where the rejected lines were written (`None` when nothing was rejected).
    pub rejected_file: Option<PathBuf>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }
}

/// How to read a file: field names, what a row needs, what to do with a bad one.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    pub text_field: String,
    pub score_field: String,
    pub target_field: String,
    /// Every row must have a non-empty target (input `text+target`).
    pub require_target: bool,
    pub on_bad_row: BadRowPolicy,
    pub thresholds: ClassThresholds,
    /// Folder of the rejected file (the run's output folder); `None` = beside the input.
    pub rejected_dir: Option<PathBuf>,
    /// The rejected file itself, where [`rejected_path`]'s name would be taken already (a
    /// validation file named like the training file); `None` = that name.
    pub rejected_file: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        crate::DataConfig::default().load_options()
    }
}

/// The file formats we read, from the extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    JsonLines,
    Csv,
    Tsv,
}

impl FileFormat {
    /// `.jsonl`, `.ndjson`, `.json` (one object per line), `.csv`, `.tsv`.
    pub fn of(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" | "json" => Some(Self::JsonLines),
            "csv" => Some(Self::Csv),
            "tsv" | "tab" => Some(Self::Tsv),
            _ => None,
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Self::JsonLines => "jsonl",
            Self::Csv => "csv",
            Self::Tsv => "tsv",
        }
    }
}

/// Where the rejected lines of `input` go: `<dir>/<input stem>.rejected.<jsonl|csv|tsv>`,
/// `dir` being `rejected_dir` or the input's folder.
pub fn rejected_path(input: &Path, rejected_dir: Option<&Path>) -> PathBuf {
    let format = FileFormat::of(input).unwrap_or(FileFormat::JsonLines);
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let dir = match rejected_dir {
        Some(d) => d.to_path_buf(),
        None => input.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    dir.join(format!("{stem}.rejected.{}", format.extension()))
}

/// Loads and validates every row of `path` (format from its extension).
pub fn load(path: &Path, options: &LoadOptions) -> Result<Dataset, DataError> {
    let format = FileFormat::of(path).ok_or_else(|| DataError::UnknownFormat {
        path: path.to_path_buf(),
    })?;
    let mut sink = Rejects::new(path, options);
    let rows = Rows {
        options,
        scored: true,
        make: example,
    };
    let examples = read_rows(path, format, &rows, &mut sink)?;
    let (rejected, rejected_file) = sink.finish()?;
    if examples.is_empty() {
        let detail = match &rejected_file {
            Some(f) => format!(" ({rejected} rejected, see {})", f.display()),
            None => String::new(),
        };
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            detail,
        });
    }
    if rejected > 0 {
        tracing::warn!(
            "{}: {rejected} bad rows skipped, written to {}",
            path.display(),
            rejected_file.as_deref().unwrap_or(Path::new("?")).display()
        );
    }
    Ok(Dataset {
        path: path.to_path_buf(),
        examples,
        rejected,
        rejected_file,
    })
}

/// The texts of `path` to score (`predict`, `embed`): each row's text, and its target where the
/// file has one (required under `options.require_target`), in the formats and with the field
/// names of [`load`]; a score, where there is one, is not read. Blank lines are passed over.
/// Any bad row is an error naming its line, whatever `options.on_bad_row` says: each row
/// stands for one line of output, so none may go missing. A file with no rows is an error too.
pub fn load_texts(path: &Path, options: &LoadOptions) -> Result<Vec<TextRow>, DataError> {
    let format = FileFormat::of(path).ok_or_else(|| DataError::UnknownFormat {
        path: path.to_path_buf(),
    })?;
    let options = LoadOptions {
        on_bad_row: BadRowPolicy::Error,
        ..options.clone()
    };
    let mut errors_only = Rejects::new(path, &options);
    let rows = Rows {
        options: &options,
        scored: false,
        make: text_row,
    };
    let texts = read_rows(path, format, &rows, &mut errors_only)?;
    if texts.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            detail: String::new(),
        });
    }
    Ok(texts)
}

/// What a reader makes of each row.
struct Rows<'o, R> {
    options: &'o LoadOptions,
    /// Whether rows carry a score: the score column is required and a blank JSON line is a bad
    /// row. Texts to score need no score, and their blank lines are passed over.
    scored: bool,
    /// The row from its text, score and target fields, validated.
    make: fn(Field, Field, Field, u64, &LoadOptions) -> Result<R, RowProblem>,
}

fn read_rows<R>(
    path: &Path,
    format: FileFormat,
    rows: &Rows<R>,
    rejects: &mut Rejects,
) -> Result<Vec<R>, DataError> {
    match format {
        FileFormat::JsonLines => read_json_lines(path, rows, rejects),
        FileFormat::Csv => read_delimited(path, b',', true, rows, rejects),
        FileFormat::Tsv => read_delimited(path, b'\t', false, rows, rejects),
    }
}

/// The rejected-lines file, created on the first rejection.
struct Rejects<'a> {
    input: &'a Path,
    policy: BadRowPolicy,
    path: PathBuf,
    out: Option<BufWriter<File>>,
    /// Written first (the CSV header), so the rejected file reads like the input.
    preamble: Vec<u8>,
    count: usize,
}

impl<'a> Rejects<'a> {
    fn new(input: &'a Path, options: &LoadOptions) -> Self {
        Self {
            input,
            policy: options.on_bad_row,
            path: options
                .rejected_file
                .clone()
                .unwrap_or_else(|| rejected_path(input, options.rejected_dir.as_deref())),
            out: None,
            preamble: Vec::new(),
            count: 0,
        }
    }

    /// Under `error`, the row's error; under `skip`, the raw line written unchanged.
    fn reject(&mut self, line: u64, problem: RowProblem, raw: &[u8]) -> Result<(), DataError> {
        if self.policy == BadRowPolicy::Error {
            return Err(DataError::Row {
                path: self.input.to_path_buf(),
                line,
                problem,
            });
        }
        tracing::debug!("{}: line {line}: {problem} (skipped)", self.input.display());
        let io = |e| DataError::io(&self.path, e);
        if self.out.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
            }
            let mut out = BufWriter::new(File::create(&self.path).map_err(io)?);
            out.write_all(&self.preamble).map_err(io)?;
            self.out = Some(out);
        }
        let out = self.out.as_mut().expect("created above");
        out.write_all(raw).map_err(io)?;
        if !raw.ends_with(b"\n") {
            out.write_all(b"\n").map_err(io)?;
        }
        self.count += 1;
        Ok(())
    }

    fn finish(self) -> Result<(usize, Option<PathBuf>), DataError> {
        match self.out {
            Some(mut out) => {
                out.flush().map_err(|e| DataError::io(&self.path, e))?;
                Ok((self.count, Some(self.path)))
            }
            None => {
                // A stale file from an earlier run would contradict "0 rejected".
                if self.policy == BadRowPolicy::Skip && self.path.is_file() {
                    std::fs::remove_file(&self.path).map_err(|e| DataError::io(&self.path, e))?;
                }
                Ok((0, None))
            }
        }
    }
}

/// A field as found in a row, before validation.
enum Field<'a> {
    Missing,
    Text(&'a str),
    Number(f64),
    Other,
}

impl<'a> Field<'a> {
    fn of_json(value: Option<&'a Value>) -> Self {
        match value {
            None | Some(Value::Null) => Self::Missing,
            Some(Value::String(s)) => Self::Text(s),
            Some(Value::Number(n)) => n.as_f64().map_or(Self::Other, Self::Number),
            Some(_) => Self::Other,
        }
    }

    fn of_cell(cell: Option<&'a str>) -> Self {
        cell.map_or(Self::Missing, Self::Text)
    }
}

fn wrong_type(field: &str, expected: &'static str) -> RowProblem {
    RowProblem::WrongType {
        field: field.to_string(),
        expected,
    }
}

/// A row's text: a string with something in it.
fn text_of(text: Field, options: &LoadOptions) -> Result<String, RowProblem> {
    match text {
        Field::Missing => Err(RowProblem::MissingField(options.text_field.clone())),
        Field::Text(t) if t.trim().is_empty() => Err(RowProblem::EmptyText),
        Field::Text(t) => Ok(t.to_string()),
        _ => Err(wrong_type(&options.text_field, "a string")),
    }
}

/// A row's target: a string, or none (empty counts as none); required under `require_target`.
fn target_of(target: Field, options: &LoadOptions) -> Result<Option<String>, RowProblem> {
    let (target, empty) = match target {
        Field::Missing => (None, false),
        Field::Text(t) if t.trim().is_empty() => (None, true),
        Field::Text(t) => (Some(t.to_string()), false),
        _ => return Err(wrong_type(&options.target_field, "a string or null")),
    };
    if options.require_target && target.is_none() {
        return Err(if empty {
            RowProblem::EmptyTarget(options.target_field.clone())
        } else {
            RowProblem::MissingField(options.target_field.clone())
        });
    }
    Ok(target)
}

/// A text to score: its text and target validated, its score (if any) not read.
fn text_row(
    text: Field,
    _score: Field,
    target: Field,
    line: u64,
    options: &LoadOptions,
) -> Result<TextRow, RowProblem> {
    Ok(TextRow {
        text: text_of(text, options)?,
        target: target_of(target, options)?,
        line,
    })
}

/// Validates the three fields of a row and derives its class.
fn example(
    text: Field,
    score: Field,
    target: Field,
    line: u64,
    options: &LoadOptions,
) -> Result<Example, RowProblem> {
    let text = text_of(text, options)?;
    let score = match score {
        Field::Missing => return Err(RowProblem::MissingField(options.score_field.clone())),
        Field::Number(y) => y,
        Field::Text(s) if s.trim().is_empty() => {
            return Err(RowProblem::MissingField(options.score_field.clone()))
        }
        // Numbers given as strings (as in the FiQA release) are accepted.
        Field::Text(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| RowProblem::ScoreNotFinite(s.to_string()))?,
        Field::Other => return Err(wrong_type(&options.score_field, "a number")),
    };
    if !score.is_finite() {
        return Err(RowProblem::ScoreNotFinite(score.to_string()));
    }
    if !(-1.0..=1.0).contains(&score) {
        return Err(RowProblem::ScoreOutOfRange(score));
    }
    let target = target_of(target, options)?;
    // Labels are compared in f32, the type the model trains on (DAO-SPEC.md, Data).
    let score = score as f32;
    Ok(Example {
        class: score_class(score, &options.thresholds),
        text,
        target,
        score,
        line,
    })
}

fn read_json_lines<R>(
    path: &Path,
    rows: &Rows<R>,
    rejects: &mut Rejects,
) -> Result<Vec<R>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut kept = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        line += 1;
        let raw: &[u8] = if line == 1 {
            buf.strip_prefix(BOM).unwrap_or(&buf)
        } else {
            &buf
        };
        if !rows.scored && raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match json_row(raw, line, rows) {
            Ok(row) => kept.push(row),
            Err(problem) => rejects.reject(line, problem, raw)?,
        }
    }
    Ok(kept)
}

fn json_row<R>(raw: &[u8], line: u64, rows: &Rows<R>) -> Result<R, RowProblem> {
    let options = rows.options;
    let text = std::str::from_utf8(raw).map_err(|_| RowProblem::InvalidUtf8)?;
    if text.trim().is_empty() {
        return Err(RowProblem::BlankLine);
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| RowProblem::NotJson(json_message(&e)))?;
    let Value::Object(object) = value else {
        return Err(RowProblem::NotObject);
    };
    (rows.make)(
        Field::of_json(object.get(&options.text_field)),
        Field::of_json(object.get(&options.score_field)),
        Field::of_json(object.get(&options.target_field)),
        line,
        options,
    )
}

/// serde_json's message without its own "at line 1 column C" (one line is parsed at a time,
/// so its line number would contradict the file's).
fn json_message(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(at) => format!("{} (column {})", &message[..at], error.column()),
        None => message,
    }
}

fn read_delimited<R>(
    path: &Path,
    delimiter: u8,
    quoting: bool,
    rows: &Rows<R>,
    rejects: &mut Rejects,
) -> Result<Vec<R>, DataError> {
    let options = rows.options;
    let io = |e| DataError::io(path, e);
    let mut file = File::open(path).map_err(io)?;
    let mut head = [0u8; 3];
    let got = read_up_to(&mut file, &mut head).map_err(io)?;
    let skip = if got == 3 && head == BOM { 3 } else { 0 };
    file.seek(SeekFrom::Start(skip)).map_err(io)?;
    // A second, sequential handle follows the csv reader record by record: it gives the exact
    // bytes of a rejected record (written unchanged) and the blank lines the csv reader skips
    // silently before a record (which its line count places on the first blank line).
    let mut raw_file = File::open(path).map_err(io)?;
    raw_file.seek(SeekFrom::Start(skip)).map_err(io)?;
    let mut raw = RawCursor {
        reader: BufReader::with_capacity(1 << 16, raw_file),
        at: 0,
        skip,
        bytes: Vec::new(),
    };
    let mut csv = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(quoting)
        .has_headers(false)
        .flexible(true)
        .from_reader(BufReader::with_capacity(1 << 16, file));

    let mut record = csv::ByteRecord::new();
    let header_error = |problem| DataError::Row {
        path: path.to_path_buf(),
        line: 1,
        problem,
    };
    let has_header = csv
        .read_byte_record(&mut record)
        .map_err(|e| header_error(RowProblem::Csv(e.to_string())))?;
    if !has_header {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            detail: " (not even a header line)".into(),
        });
    }
    let mut columns = Vec::with_capacity(record.len());
    for name in record.iter() {
        let name = std::str::from_utf8(name).map_err(|_| header_error(RowProblem::InvalidUtf8))?;
        columns.push(name.trim().to_string());
    }
    let column = |name: &str| columns.iter().position(|c| c == name);
    let missing = |name: &str| {
        header_error(RowProblem::MissingColumn {
            name: name.to_string(),
            columns: columns.join(", "),
        })
    };
    let text_col = column(&options.text_field).ok_or_else(|| missing(&options.text_field))?;
    let score_col = column(&options.score_field);
    if rows.scored && score_col.is_none() {
        return Err(missing(&options.score_field));
    }
    let target_col = column(&options.target_field);
    if options.require_target && target_col.is_none() {
        return Err(missing(&options.target_field));
    }
    let header_end = csv.position().byte();
    raw.read(0, header_end).map_err(io)?;
    rejects.preamble = raw.bytes.clone();
    // The reader stops a `\r\n` header after its `\r` (the `\n` opens the next record).
    if rejects.preamble.ends_with(b"\r") {
        rejects.preamble.push(b'\n');
    }

    let mut kept = Vec::new();
    loop {
        let start = csv.position().clone();
        // With byte records and `flexible`, the csv reader fails only on I/O: not a row
        // problem that skipping could get past.
        let more = csv
            .read_byte_record(&mut record)
            .map_err(|e| DataError::Row {
                path: path.to_path_buf(),
                line: start.line(),
                problem: RowProblem::Csv(e.to_string()),
            })?;
        if !more {
            break;
        }
        let begin = record.position().map_or(start.byte(), |p| p.byte());
        raw.read(begin, csv.position().byte()).map_err(io)?;
        let (blank, blank_lines) = leading_blank_lines(&raw.bytes);
        let line = record.position().map_or(start.line(), |p| p.line()) + blank_lines;
        match delimited_row(
            &record,
            columns.len(),
            line,
            rows,
            (text_col, score_col, target_col),
        ) {
            Ok(row) => kept.push(row),
            Err(problem) => rejects.reject(line, problem, &raw.bytes[blank..])?,
        }
    }
    Ok(kept)
}

fn delimited_row<R>(
    record: &csv::ByteRecord,
    expected: usize,
    line: u64,
    rows: &Rows<R>,
    (text, score, target): (usize, Option<usize>, Option<usize>),
) -> Result<R, RowProblem> {
    let mut cells = Vec::with_capacity(expected);
    for cell in record.iter() {
        cells.push(std::str::from_utf8(cell).map_err(|_| RowProblem::InvalidUtf8)?);
    }
    if cells.len() < expected {
        return Err(RowProblem::TooFewFields {
            found: cells.len(),
            expected,
            // A quote left open swallows the line breaks (and rows) after it.
            open_quote: cells.iter().any(|cell| cell.contains('\n')),
        });
    }
    if cells.len() > expected {
        // Usually an unquoted delimiter inside the text: the text would be cut.
        return Err(RowProblem::Csv(format!(
            "too many fields: {}, the header has {expected}",
            cells.len()
        )));
    }
    (rows.make)(
        Field::of_cell(cells.get(text).copied()),
        Field::of_cell(score.and_then(|s| cells.get(s).copied())),
        Field::of_cell(target.and_then(|t| cells.get(t).copied())),
        line,
        rows.options,
    )
}

/// Bytes before the first record byte that are line ends, and how many lines they end.
fn leading_blank_lines(bytes: &[u8]) -> (usize, u64) {
    let blank = bytes
        .iter()
        .take_while(|&&b| b == b'\n' || b == b'\r')
        .count();
    let prefix = &bytes[..blank];
    // `\r\n`, `\n` and a lone `\r` each end one line.
    let lines = prefix
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' || prefix.get(i + 1) != Some(&b'\n'))
        .count();
    (blank, lines as u64)
}

/// Reads a file's byte ranges in increasing order, sequentially.
struct RawCursor {
    reader: BufReader<File>,
    /// Offset (after the BOM) of the next byte of `reader`.
    at: u64,
    /// BOM bytes before offset 0.
    skip: u64,
    /// The last range read.
    bytes: Vec<u8>,
}

impl RawCursor {
    /// Reads `start..end` (offsets after the BOM) into `self.bytes`.
    fn read(&mut self, start: u64, end: u64) -> std::io::Result<()> {
        if start != self.at {
            self.reader.seek(SeekFrom::Start(self.skip + start))?;
        }
        self.bytes.resize(end.saturating_sub(start) as usize, 0);
        self.reader.read_exact(&mut self.bytes)?;
        self.at = start + self.bytes.len() as u64;
        Ok(())
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
