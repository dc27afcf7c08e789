//! The encoder's hyper-parameters, read straight from a Hugging Face `config.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::EncoderError;

/// The transformer families we load. They share every layer; they differ in how position ids
/// are made and whether token types carry information.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelFamily {
    /// RoBERTa (and XLM-R, CamemBERT): positions count non-pad tokens from `pad_token_id + 1`.
    Roberta,
    /// BERT (and MiniLM): positions are `0..len`; token type ids select a segment embedding.
    Bert,
}

impl ModelFamily {
    /// The family of a Hugging Face `model_type`.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "roberta" | "xlm-roberta" | "camembert" => Some(Self::Roberta),
            "bert" => Some(Self::Bert),
            _ => None,
        }
    }
}

/// The feed-forward activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HiddenAct {
    /// `gelu`: the exact, erf-based GELU.
    #[serde(rename = "gelu")]
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// `relu`.
    #[serde(rename = "relu")]
    Relu,
    /// `silu` / `swish`.
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

/// The fields of a Hugging Face `config.json` that define a BERT-style encoder. Names are the
/// Hugging Face ones so the file deserialises directly; unknown fields are ignored (the file
/// carries many that do not concern the encoder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// `roberta`, `xlm-roberta`, `camembert` or `bert`.
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: HiddenAct,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    /// Only `absolute` is supported; transformers 5 omits the field when it is.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_act() -> HiddenAct {
    HiddenAct::Gelu
}
fn default_dropout() -> f64 {
    0.1
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl EncoderConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, EncoderError> {
        let text = std::fs::read_to_string(path).map_err(|error| EncoderError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|source| EncoderError::Config {
            path: path.to_path_buf(),
            message: source.to_string(),
        })?;
        config.validate().map_err(|message| EncoderError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Checks what the model code relies on; the message says which field is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if ModelFamily::from_model_type(&self.model_type).is_none() {
            return Err(format!(
                "model_type \"{}\" is not supported (expected roberta, xlm-roberta, camembert or bert)",
                self.model_type
            ));
        }
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} {p} is not in [0, 1)"));
            }
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return Err("layer_norm_eps must be positive".into());
        }
        if let Some(kind) = &self.position_embedding_type {
            if kind != "absolute" {
                return Err(format!(
                    "position_embedding_type \"{kind}\" is not supported (only absolute)"
                ));
            }
        }
        if self.pad_token_id >= self.vocab_size {
            return Err(format!(
                "pad_token_id {} is outside the vocabulary of {}",
                self.pad_token_id, self.vocab_size
            ));
        }
        if self.family() == ModelFamily::Roberta
            && self.max_position_embeddings <= self.pad_token_id + 1
        {
            return Err(format!(
                "max_position_embeddings {} leaves no room after RoBERTa's offset pad_token_id + 1 = {}",
                self.max_position_embeddings,
                self.pad_token_id + 1
            ));
        }
        Ok(())
    }

    /// The family implied by `model_type` (validated at load).
    pub fn family(&self) -> ModelFamily {
        ModelFamily::from_model_type(&self.model_type).unwrap_or(ModelFamily::Bert)
    }

    /// The longest input the position table allows: RoBERTa spends `pad_token_id + 1` rows
    /// on its offset.
    pub fn max_input_len(&self) -> usize {
        match self.family() {
            ModelFamily::Roberta => self.max_position_embeddings - self.pad_token_id - 1,
            ModelFamily::Bert => self.max_position_embeddings,
        }
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}
