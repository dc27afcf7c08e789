//! Tokenizing a dataset once per run: ids kept in memory, optionally cached on disk under a
//! key made of the tokenizer files, the truncation length, the input mode and the rows.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use encoder::{Encoded, ModelFolder, TextTokenizer};
use sha2::{Digest, Sha256};

use crate::config::InputMode;
use crate::error::DataError;
use crate::load::{Dataset, Example};

/// The rows of a dataset as token ids, with their scores and classes, in dataset order.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedSet {
    pub rows: Vec<Encoded>,
    pub scores: Vec<f32>,
    pub classes: Vec<u8>,
}

impl TokenizedSet {
    /// Tokenizes every row of `dataset` (the text, or text and target as a pair) with
    /// `tokenizer`, which truncates to its max length. With a `cache`, reuses the ids written by
    /// an earlier run with the same tokenizer, settings and rows, or writes them.
    pub fn new(
        dataset: &Dataset,
        tokenizer: &TextTokenizer,
        mode: InputMode,
        cache: Option<&TokenCache>,
    ) -> Result<Self, DataError> {
        let examples = &dataset.examples;
        let cached_file = cache.map(|c| c.file_for(examples, tokenizer, mode));
        let rows = match cached_file
            .as_deref()
            .and_then(|f| read_cache(f, examples.len()))
        {
            Some(rows) => rows,
            None => {
                let rows = encode_all(examples, &dataset.path, tokenizer, mode)?;
                if let Some(file) = &cached_file {
                    write_cache(file, &rows)?;
                }
                rows
            }
        };
        Ok(Self {
            rows,
            scores: examples.iter().map(|e| e.score).collect(),
            classes: examples.iter().map(|e| e.class).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Token count of every row (special tokens included, after truncation).
    pub fn lengths(&self) -> Vec<usize> {
        self.rows.iter().map(|r| r.ids.len()).collect()
    }
}

/// Encodes one row as the input mode says.
pub fn encode_example(
    example: &Example,
    tokenizer: &TextTokenizer,
    mode: InputMode,
) -> Result<Encoded, encoder::EncoderError> {
    let pair = match mode {
        InputMode::Text => None,
        InputMode::TextTarget => example.target.as_deref(),
    };
    tokenizer.encode(&example.text, pair)
}

fn encode_all(
    examples: &[Example],
    path: &Path,
    tokenizer: &TextTokenizer,
    mode: InputMode,
) -> Result<Vec<Encoded>, DataError> {
    let encode_chunk = |chunk: &[Example]| -> Result<Vec<Encoded>, DataError> {
        chunk
            .iter()
            .map(|e| {
                encode_example(e, tokenizer, mode).map_err(|cause| DataError::Tokenize {
                    path: path.to_path_buf(),
                    line: e.line,
                    cause: Box::new(cause),
                })
            })
            .collect()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if threads == 1 || examples.len() < 512 {
        return encode_chunk(examples);
    }
    // Contiguous chunks, joined in order: the result does not depend on the thread count.
    let chunk_len = examples.len().div_ceil(threads);
    let parts: Vec<Result<Vec<Encoded>, DataError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = examples
            .chunks(chunk_len)
            .map(|chunk| scope.spawn(move || encode_chunk(chunk)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("tokenizer thread panicked"))
            .collect()
    });
    let mut rows = Vec::with_capacity(examples.len());
    for part in parts {
        rows.extend(part?);
    }
    Ok(rows)
}

/// A folder of token-id files, keyed by the model folder's `tokenizer.json` and `config.json`
/// (the latter decides whether token type ids are used), the max length, the input mode and
/// the rows' text and target.
#[derive(Debug, Clone)]
pub struct TokenCache {
    dir: PathBuf,
    model_digest: [u8; 32],
}

const CACHE_MAGIC: &[u8; 8] = b"DAOTOK01";

impl TokenCache {
    /// A cache in `dir` for the tokenizer of `folder`.
    pub fn new(dir: &Path, folder: &ModelFolder) -> Result<Self, DataError> {
        let mut hash = Sha256::new();
        for file in [folder.tokenizer.clone(), folder.dir.join("config.json")] {
            let bytes = std::fs::read(&file).map_err(|e| DataError::io(&file, e))?;
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(&bytes);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            model_digest: hash.finalize().into(),
        })
    }

    fn file_for(
        &self,
        examples: &[Example],
        tokenizer: &TextTokenizer,
        mode: InputMode,
    ) -> PathBuf {
        let mut hash = Sha256::new();
        hash.update(CACHE_MAGIC);
        hash.update(self.model_digest);
        hash.update((tokenizer.max_len() as u64).to_le_bytes());
        hash.update([mode as u8]);
        for e in examples {
            // Length-prefixed, so that no two row lists hash the same bytes.
            hash.update((e.text.len() as u64).to_le_bytes());
            hash.update(e.text.as_bytes());
            let target = e.target.as_deref().unwrap_or("");
            hash.update((target.len() as u64 + u64::from(e.target.is_some())).to_le_bytes());
            hash.update(target.as_bytes());
        }
        let digest = hash.finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("tokens-{hex}.bin"))
    }
}

/// The cached rows, or `None` when the file is absent or unreadable (then we re-tokenize).
fn read_cache(path: &Path, expected_rows: usize) -> Option<Vec<Encoded>> {
    let mut reader = BufReader::new(File::open(path).ok()?);
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).ok()?;
    if &magic != CACHE_MAGIC {
        return None;
    }
    let mut word = [0u8; 8];
    reader.read_exact(&mut word).ok()?;
    if u64::from_le_bytes(word) != expected_rows as u64 {
        return None;
    }
    let mut rows = Vec::with_capacity(expected_rows);
    let mut len = [0u8; 4];
    for _ in 0..expected_rows {
        reader.read_exact(&mut len).ok()?;
        let n = u32::from_le_bytes(len) as usize;
        let mut bytes = vec![0u8; n * 4];
        reader.read_exact(&mut bytes).ok()?;
        let ids = bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mut types = vec![0u8; n];
        reader.read_exact(&mut types).ok()?;
        rows.push(Encoded {
            ids,
            type_ids: types.into_iter().map(u32::from).collect(),
        });
    }
    tracing::info!("token ids read from cache {}", path.display());
    Some(rows)
}

fn write_cache(path: &Path, rows: &[Encoded]) -> Result<(), DataError> {
    let io = |e| DataError::io(path, e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    // Written beside and renamed: an interrupted run never leaves a truncated cache file.
    let tmp = path.with_extension("bin.tmp");
    let mut out = BufWriter::new(File::create(&tmp).map_err(io)?);
    out.write_all(CACHE_MAGIC).map_err(io)?;
    out.write_all(&(rows.len() as u64).to_le_bytes())
        .map_err(io)?;
    for row in rows {
        out.write_all(&(row.ids.len() as u32).to_le_bytes())
            .map_err(io)?;
        for id in &row.ids {
            out.write_all(&id.to_le_bytes()).map_err(io)?;
        }
        let types: Vec<u8> = row.type_ids.iter().map(|&t| t as u8).collect();
        out.write_all(&types).map_err(io)?;
    }
    out.flush().map_err(io)?;
    drop(out);
    std::fs::rename(&tmp, path).map_err(io)
}
