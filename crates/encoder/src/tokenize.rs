//! Turning text into padded id batches with the model folder's `tokenizer.json`, offline.

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use tokenizers::{EncodeInput, Tokenizer, TruncationParams, TruncationStrategy};

use crate::config::{EncoderConfig, ModelFamily};
use crate::error::EncoderError;
use crate::model::EncoderInput;

/// One encoded text (or text pair): ids with the model's special tokens, already truncated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

/// A `tokenizer.json` tokenizer set up for one encoder: truncation to `max_len` (special
/// tokens included, the longest part of a pair first, as transformers does), no padding
/// (batches are padded to their own longest row by [`pad_batch`]).
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    max_len: usize,
    pad_id: u32,
    use_type_ids: bool,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` for `config`, truncating to `max_len` tokens (at most what the
    /// position table allows).
    pub fn from_file(
        path: &Path,
        config: &EncoderConfig,
        max_len: usize,
    ) -> Result<Self, EncoderError> {
        let error = |message: String| EncoderError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(error("file not found".into()));
        }
        let limit = config.max_input_len();
        if max_len < 2 || max_len > limit {
            return Err(EncoderError::Input(format!(
                "max length {max_len} is outside 2..={limit} (the model's position table)"
            )));
        }
        let mut tokenizer = Tokenizer::from_file(path).map_err(|e| {
            error(format!(
                "not a readable fast-tokenizer file ({e}); use the tokenizer.json that came \
                 with the model"
            ))
        })?;
        // An id past the embedding table would index out of it on the first batch.
        if let Some((token, id)) = tokenizer
            .get_vocab(true)
            .into_iter()
            .max_by_key(|(_, id)| *id)
            .filter(|(_, id)| *id as usize >= config.vocab_size)
        {
            return Err(error(format!(
                "token `{token}` has id {id}, past config.json's vocab_size {}: the tokenizer \
                 belongs to another model; use the tokenizer.json that came with these weights",
                config.vocab_size
            )));
        }
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                ..Default::default()
            }))
            .map_err(|e| error(e.to_string()))?;
        Ok(Self {
            tokenizer,
            max_len,
            pad_id: config.pad_token_id as u32,
            // RoBERTa has a single token type: its tokenizer's pair ids are not model input.
            use_type_ids: config.family() == ModelFamily::Bert && config.type_vocab_size > 1,
        })
    }

    /// The truncation length.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The padding id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Encodes a text, or a text and a second segment (e.g. the target entity) through the
    /// tokenizer's pair template (`<s> a </s></s> b </s>`, `[CLS] a [SEP] b [SEP]`).
    pub fn encode(&self, text: &str, pair: Option<&str>) -> Result<Encoded, EncoderError> {
        let input: EncodeInput = match pair {
            Some(second) => (text, second).into(),
            None => text.into(),
        };
        let encoding = self
            .tokenizer
            .encode(input, true)
            .map_err(|e| EncoderError::Input(format!("cannot tokenize: {e}")))?;
        let ids = encoding.get_ids().to_vec();
        let type_ids = if self.use_type_ids {
            encoding.get_type_ids().to_vec()
        } else {
            vec![0; ids.len()]
        };
        Ok(Encoded { ids, type_ids })
    }

    /// Token strings of an encoding (for inspection and tests).
    pub fn tokens(&self, text: &str) -> Result<Vec<String>, EncoderError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EncoderError::Input(format!("cannot tokenize: {e}")))?;
        Ok(encoding.get_tokens().to_vec())
    }
}

/// Pads encodings to the longest among them and puts them on `device`.
///
/// # Shapes
/// - every tensor of the result: `[rows.len(), longest]`.
pub fn pad_batch(rows: &[&Encoded], pad_id: u32, device: &Device) -> EncoderInput {
    let batch = rows.len();
    let seq = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![pad_id as i64; batch * seq];
    let mut mask = vec![0i64; batch * seq];
    let mut types = vec![0i64; batch * seq];
    for (row, encoded) in rows.iter().enumerate() {
        for (col, (&id, &ty)) in encoded.ids.iter().zip(&encoded.type_ids).enumerate() {
            ids[row * seq + col] = id as i64;
            mask[row * seq + col] = 1;
            types[row * seq + col] = ty as i64;
        }
    }
    let tensor =
        |data: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(data, [batch, seq]), device);
    EncoderInput {
        input_ids: tensor(ids),
        attention_mask: tensor(mask),
        token_type_ids: tensor(types),
    }
}
