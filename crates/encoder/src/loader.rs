//! Loading an encoder from a model folder: a Hugging Face folder (`config.json`,
//! `model.safetensors` or `pytorch_model.bin`, `tokenizer.json`) or one we imported into
//! burn's own format (`model.bpk`).
//!
//! Checkpoint keys are mapped onto our module tree by one ordered table of patterns, applied
//! in order to every key (most specific first). burn-store's `PyTorchToBurnAdapter` then
//! transposes Linear weights (`[out, in]` → `[in, out]`) and renames LayerNorm's
//! `weight`/`bias` to `gamma`/`beta`; without it the square projections would load silently
//! untransposed.

use std::path::{Path, PathBuf};

use burn::store::{
    ApplyError, ApplyResult, BurnpackStore, ChainAdapter, FloatCastAdapter, ModuleSnapshot,
    PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use burn::tensor::{DType, Device};

use crate::config::EncoderConfig;
use crate::error::EncoderError;
use crate::model::Encoder;

/// Checkpoint key → module path, applied in order to every key.
const KEY_MAP: &[(&str, &str)] = &[
    // Task checkpoints (`RobertaForSequenceClassification`, `…ForMaskedLM`) prefix the encoder.
    (r"^(roberta|bert)\.", ""),
    // `self` is a Rust keyword, so the field is `self_attention`.
    (r"\.attention\.self\.", ".attention.self_attention."),
    (r"\.LayerNorm\.", ".layer_norm."),
    // Every projection is a `LoraLinear` whose pretrained part is `base`.
    (r"\.(query|key|value|dense)\.(weight|bias)$", ".$1.base.$2"),
];

/// The weights file of our own format, written by `cargo xtask import-weights`.
pub const BURN_WEIGHTS: &str = "model.bpk";
/// Hugging Face weights files we read, in order of preference.
pub const HF_WEIGHTS: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// The on-disk format of a weights file, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFormat {
    /// burn's own record format (`.bpk`), keys already in our layout.
    Burnpack,
    /// Hugging Face safetensors.
    Safetensors,
    /// PyTorch pickle (`torch.save`, zip or legacy).
    Pytorch,
}

impl WeightsFormat {
    /// The format of a weights file, from its extension.
    pub fn of(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "bpk" => Some(Self::Burnpack),
            "safetensors" => Some(Self::Safetensors),
            "bin" | "pt" | "pth" => Some(Self::Pytorch),
            _ => None,
        }
    }
}

/// A model folder and the files in it that we use.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    pub dir: PathBuf,
    pub config: EncoderConfig,
    pub weights: PathBuf,
    pub tokenizer: PathBuf,
}

impl ModelFolder {
    /// Opens a folder: reads `config.json`, picks the weights file (`weights` overrides; else
    /// `model.bpk`, then `model.safetensors`, then `pytorch_model.bin`) and checks that
    /// `tokenizer.json` exists.
    pub fn open(dir: &Path, weights: Option<&Path>) -> Result<Self, EncoderError> {
        if !dir.is_dir() {
            // A relative path is looked for from the working directory: say which, since a
            // run folder's config may have been written from another one.
            let message = match std::env::current_dir() {
                Ok(here) if dir.is_relative() => format!(
                    "model folder not found (looked for from the working directory {})",
                    here.display()
                ),
                _ => "model folder not found".to_string(),
            };
            return Err(EncoderError::Io {
                path: dir.to_path_buf(),
                error: std::io::Error::new(std::io::ErrorKind::NotFound, message),
            });
        }
        let config = EncoderConfig::from_file(&dir.join("config.json"))?;
        let weights = match weights {
            Some(w) => {
                let w = if w.is_absolute() || w.exists() {
                    w.to_path_buf()
                } else {
                    dir.join(w)
                };
                if !w.is_file() {
                    return Err(EncoderError::Io {
                        path: w,
                        error: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "weights file not found",
                        ),
                    });
                }
                w
            }
            None => find_weights(dir)?,
        };
        let tokenizer = dir.join("tokenizer.json");
        if !tokenizer.is_file() {
            return Err(EncoderError::Tokenizer {
                path: tokenizer,
                message: "tokenizer.json not found; the folder must hold the model's fast \
                          tokenizer file"
                    .into(),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            weights,
            tokenizer,
        })
    }

    /// Builds the encoder on `device` and loads the weights into it.
    pub fn load_encoder(&self, device: &Device) -> Result<Encoder, EncoderError> {
        let mut encoder = Encoder::new(&self.config, device);
        load_weights(&mut encoder, &self.weights)?;
        Ok(encoder)
    }
}

fn find_weights(dir: &Path) -> Result<PathBuf, EncoderError> {
    for name in std::iter::once(BURN_WEIGHTS).chain(HF_WEIGHTS) {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    let sharded = dir.join("model.safetensors.index.json");
    let message = if sharded.is_file() {
        "model.bpk, model.safetensors or pytorch_model.bin; sharded checkpoints \
         (model.safetensors.index.json) are not supported: merge the shards first"
    } else {
        "model.bpk, model.safetensors or pytorch_model.bin"
    };
    Err(EncoderError::NoWeights {
        folder: dir.to_path_buf(),
        expected: message.into(),
    })
}

/// Loads a weights file into `encoder`, checking that every tensor was found with its shape.
/// Tensors of other heads (`lm_head`, `pooler`, `classifier`, …) are ignored.
pub fn load_weights(encoder: &mut Encoder, path: &Path) -> Result<(), EncoderError> {
    let format = WeightsFormat::of(path).ok_or_else(|| EncoderError::Checkpoint {
        path: path.to_path_buf(),
        message: "unknown weights format (expected .bpk, .safetensors, .bin, .pt or .pth)".into(),
    })?;
    if !path.is_file() {
        return Err(EncoderError::Io {
            path: path.to_path_buf(),
            error: std::io::Error::new(std::io::ErrorKind::NotFound, "weights file not found"),
        });
    }
    let checkpoint_error = |e: &dyn std::fmt::Display| EncoderError::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let to_f32 = || ChainAdapter::new(PyTorchToBurnAdapter, FloatCastAdapter::to(DType::F32));
    // Reading a truncated or corrupt file can panic inside the reader; turn that into an error.
    let result = catch(path, || match format {
        WeightsFormat::Burnpack => {
            let mut store = BurnpackStore::from_file(path)
                .allow_partial(true)
                .validate(false);
            encoder
                .load_from(&mut store)
                .map_err(|e| checkpoint_error(&e))
        }
        WeightsFormat::Safetensors => {
            let mut store = KEY_MAP.iter().fold(
                SafetensorsStore::from_file(path)
                    .with_from_adapter(to_f32())
                    .allow_partial(true)
                    .validate(false),
                |store, (from, to)| store.with_key_remapping(*from, *to),
            );
            encoder
                .load_from(&mut store)
                .map_err(|e| checkpoint_error(&e))
        }
        WeightsFormat::Pytorch => {
            let mut store = KEY_MAP.iter().fold(
                // The PyTorch adapter is built into this store.
                PytorchStore::from_file(path)
                    .allow_partial(true)
                    .validate(false),
                |store, (from, to)| store.with_key_remapping(*from, *to),
            );
            encoder
                .load_from(&mut store)
                .map_err(|e| checkpoint_error(&e))
        }
    })??;
    check_applied(path, format, &result)
}

fn catch<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, EncoderError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the reader failed".into());
        EncoderError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("corrupt or truncated file: {message}"),
        }
    })
}

/// Turns burn-store's report into our errors, naming tensors as the checkpoint does.
fn check_applied(
    path: &Path,
    format: WeightsFormat,
    result: &ApplyResult,
) -> Result<(), EncoderError> {
    let hf = format != WeightsFormat::Burnpack;
    if let Some(error) = result.errors.first() {
        return Err(match error {
            ApplyError::ShapeMismatch {
                path: tensor,
                expected,
                found,
            } => {
                let (mut expected, mut found) = (expected.to_vec(), found.to_vec());
                // Show Linear weights the way the checkpoint stores them ([out, in]).
                if hf && tensor.ends_with(".base.weight") {
                    expected.reverse();
                    found.reverse();
                }
                EncoderError::ShapeMismatch {
                    path: path.to_path_buf(),
                    tensor: display_name(tensor, hf),
                    expected,
                    found,
                }
            }
            other => EncoderError::Checkpoint {
                path: path.to_path_buf(),
                message: other.to_string(),
            },
        });
    }
    if let Some((tensor, _)) = result.missing.first() {
        let hint = if result.applied.is_empty() {
            "; no tensor matched at all: is this a BERT/RoBERTa encoder checkpoint?".to_string()
        } else {
            format!(
                " ({} of {} tensors missing)",
                result.missing.len(),
                result.missing.len() + result.applied.len()
            )
        };
        return Err(EncoderError::MissingTensor {
            path: path.to_path_buf(),
            tensor: display_name(tensor, hf),
            hint,
        });
    }
    if !result.unused.is_empty() {
        tracing::debug!(
            count = result.unused.len(),
            first = %result.unused[0],
            "checkpoint tensors not used by the encoder (other heads)"
        );
    }
    Ok(())
}

/// Our module path as the Hugging Face checkpoint key (without task prefix).
fn display_name(module_path: &str, hf: bool) -> String {
    if !hf {
        return module_path.to_string();
    }
    module_path
        .replace(".self_attention.", ".self.")
        .replace(".base.", ".")
        .replace("layer_norm.gamma", "LayerNorm.weight")
        .replace("layer_norm.beta", "LayerNorm.bias")
}

/// Writes `encoder` in burn's own format to `path` (via a temporary file and a rename, so an
/// interrupted write never leaves a half file under the final name).
pub fn save_burnpack(encoder: &Encoder, path: &Path) -> Result<(), EncoderError> {
    let tmp = path.with_extension("bpk.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut store = BurnpackStore::from_file(&tmp)
        .auto_extension(false)
        .overwrite(true);
    encoder
        .save_into(&mut store)
        .map_err(|e| EncoderError::Checkpoint {
            path: tmp.clone(),
            message: e.to_string(),
        })?;
    std::fs::rename(&tmp, path).map_err(|error| EncoderError::Io {
        path: path.to_path_buf(),
        error,
    })
}
