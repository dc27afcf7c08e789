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

use burn::module::{Module, ModuleMapper, Param};
use burn::store::{
    ApplyError, ApplyResult, BurnpackStore, ChainAdapter, FloatCastAdapter, ModuleSnapshot,
    ModuleStore, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use burn::tensor::{DType, Device, FloatDType, Tensor};

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
                _ if dir.exists() => {
                    "not a folder: model.path (or --model) names a model folder holding \
                     config.json, the weights and tokenizer.json"
                        .to_string()
                }
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
                weights_file(&w)?;
                w
            }
            None => find_weights(dir)?,
        };
        let tokenizer = dir.join("tokenizer.json");
        if !tokenizer.is_file() {
            let what = if tokenizer.exists() {
                "tokenizer.json is not a regular file"
            } else {
                "tokenizer.json not found"
            };
            return Err(EncoderError::Tokenizer {
                path: tokenizer,
                message: format!("{what}; the folder must hold the model's fast tokenizer file"),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            weights,
            tokenizer,
        })
    }

    /// The truncation length transformers' tokenizer of this folder uses
    /// (`tokenizer_config.json`'s `model_max_length`): `None` where the file or the key is
    /// absent, or says "no limit" (transformers writes 10³⁰). A value that is no length (0,
    /// 1, negative, fractional, not a number) or a file that is not JSON is passed over with
    /// a warning.
    pub fn model_max_length(&self) -> Option<usize> {
        let path = self.dir.join("tokenizer_config.json");
        let text = std::fs::read_to_string(&path).ok()?;
        let ignored = |why: &str| {
            tracing::warn!(
                "{}: {why}; texts are cut at the model's own limit",
                path.display()
            );
            None
        };
        let settings: serde_json::Value = match serde_json::from_str(&text) {
            Ok(settings) => settings,
            Err(error) => return ignored(&format!("not JSON ({error})")),
        };
        let value = settings.get("model_max_length")?;
        match value.as_f64() {
            Some(length) if length >= 1e18 => None, // "no limit"
            Some(length) if length >= 2.0 && length.fract() == 0.0 => Some(length as usize),
            _ => ignored(&format!(
                "model_max_length = {value} is not a length of 2 or more"
            )),
        }
    }

    /// What a text is cut to by default where no length is asked for: the position table's
    /// limit, capped by [`model_max_length`](Self::model_max_length) where the folder gives
    /// one (so an exported run's folder cuts texts where the run, and transformers, did), at
    /// 512 otherwise.
    pub fn default_max_len(&self) -> usize {
        let limit = self.config.max_input_len();
        limit.min(self.model_max_length().unwrap_or(512))
    }

    /// Builds the encoder on `device` and loads the weights into it.
    pub fn load_encoder(&self, device: &Device) -> Result<Encoder, EncoderError> {
        let layout = CheckpointLayout::read(&self.weights)?;
        // Before the encoder is built: a config.json of a billion layers would be allocated
        // first, and one of fewer layers than the weights would drop the rest unnoticed.
        if layout.layers != self.config.num_hidden_layers {
            return Err(EncoderError::Config {
                path: self.dir.join("config.json"),
                message: format!(
                    "num_hidden_layers is {}, but {} holds {}: this config.json does not \
                     belong to these weights",
                    self.config.num_hidden_layers,
                    self.weights.display(),
                    layout.describe_layers()
                ),
            });
        }
        let mut encoder = Encoder::new(&self.config, device);
        apply_weights(&mut encoder, &self.weights, layout.format)?;
        Ok(encoder)
    }
}

/// What a weights file holds, read from its tensor names before anything is loaded.
struct CheckpointLayout {
    format: WeightsFormat,
    /// Encoder layers (`encoder.layer.N.…`, N from 0): one past the largest N.
    layers: usize,
}

impl CheckpointLayout {
    /// Reads the tensor names of `path` (the header only) and checks that no two of them are
    /// the same encoder tensor once the task prefix is dropped (`roberta.X` and `bert.X`, or
    /// `X`): which one burn-store kept would depend on a hash order.
    fn read(path: &Path) -> Result<Self, EncoderError> {
        let format = WeightsFormat::of(path).ok_or_else(|| EncoderError::Checkpoint {
            path: path.to_path_buf(),
            message: "unknown weights format (expected .bpk, .safetensors, .bin, .pt or .pth)"
                .into(),
        })?;
        weights_file(path)?;
        let keys = catch(path, || match format {
            WeightsFormat::Burnpack => BurnpackStore::from_file(path)
                .keys()
                .map_err(|e| e.to_string()),
            WeightsFormat::Safetensors => SafetensorsStore::from_file(path)
                .keys()
                .map_err(|e| e.to_string()),
            WeightsFormat::Pytorch => PytorchStore::from_file(path)
                .keys()
                .map_err(|e| e.to_string()),
        })?
        .map_err(|message| EncoderError::Checkpoint {
            path: path.to_path_buf(),
            message: unreadable(format, &message),
        })?;
        let hf = format != WeightsFormat::Burnpack;
        let mut seen: std::collections::BTreeMap<&str, &str> = Default::default();
        let mut layers = 0;
        for key in &keys {
            let name = if hf {
                key.strip_prefix("roberta.")
                    .or_else(|| key.strip_prefix("bert."))
                    .unwrap_or(key)
            } else {
                key.as_str()
            };
            if !(name.starts_with("embeddings.") || name.starts_with("encoder.")) {
                continue; // other heads: never loaded
            }
            if let Some(first) = seen.insert(name, key) {
                return Err(EncoderError::Checkpoint {
                    path: path.to_path_buf(),
                    message: format!(
                        "tensors `{first}` and `{key}` are both the encoder's `{name}`: the \
                         file mixes two checkpoints; keep one of them"
                    ),
                });
            }
            if let Some(index) = name
                .strip_prefix("encoder.layer.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|n| n.parse::<usize>().ok())
            {
                layers = layers.max(index + 1);
            }
        }
        Ok(Self { format, layers })
    }

    fn describe_layers(&self) -> String {
        match self.layers {
            0 => "no encoder layers (no `encoder.layer.N.…` tensor)".to_string(),
            1 => "1 layer".to_string(),
            n => format!("{n} layers (`encoder.layer.0` … `encoder.layer.{}`)", n - 1),
        }
    }
}

/// A reader's error, with what to do about it.
fn unreadable(format: WeightsFormat, message: &str) -> String {
    let what = match format {
        WeightsFormat::Burnpack => {
            "not a readable model.bpk (truncated, or written by another version?): import it \
             again with `cargo xtask import-weights`"
        }
        WeightsFormat::Safetensors => {
            "not a readable safetensors file (truncated or corrupt?): copy or download it again"
        }
        WeightsFormat::Pytorch => {
            "not a readable PyTorch checkpoint (truncated or corrupt?): copy or download it again"
        }
    };
    format!("{what} ({message})")
}

/// `path` is a weights file that is there (not absent, not a folder).
fn weights_file(path: &Path) -> Result<(), EncoderError> {
    if path.is_file() {
        return Ok(());
    }
    let what = if path.exists() {
        "not a regular file"
    } else {
        "weights file not found"
    };
    Err(EncoderError::Io {
        path: path.to_path_buf(),
        error: std::io::Error::new(std::io::ErrorKind::NotFound, what),
    })
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

/// Loads a weights file into `encoder`, checking that every tensor was found with its shape,
/// that the file holds as many layers as the encoder, and that every value is finite. Tensors
/// of other heads (`lm_head`, `pooler`, `classifier`, …) are ignored; half-precision and f64
/// weights are converted to f32.
pub fn load_weights(encoder: &mut Encoder, path: &Path) -> Result<(), EncoderError> {
    let layout = CheckpointLayout::read(path)?;
    let expected = encoder.config().num_hidden_layers;
    if layout.layers != expected {
        return Err(EncoderError::Checkpoint {
            path: path.to_path_buf(),
            message: format!(
                "holds {}, the encoder has {expected}",
                layout.describe_layers()
            ),
        });
    }
    apply_weights(encoder, path, layout.format)
}

fn apply_weights(
    encoder: &mut Encoder,
    path: &Path,
    format: WeightsFormat,
) -> Result<(), EncoderError> {
    let checkpoint_error = |e: &dyn std::fmt::Display| EncoderError::Checkpoint {
        path: path.to_path_buf(),
        message: unreadable(format, &e.to_string()),
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
                // The PyTorch adapter is built into this store (without a cast: see below).
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
    check_applied(path, format, &result)?;
    let mut check = FinalParams {
        path: Vec::new(),
        non_finite: None,
    };
    let loaded = std::mem::replace(encoder, encoder.clone()).map(&mut check);
    if let Some(tensor) = check.non_finite {
        return Err(EncoderError::Checkpoint {
            path: path.to_path_buf(),
            message: format!(
                "tensor `{}` holds NaN or infinite values: the checkpoint is damaged (or was \
                 saved from a diverged run)",
                display_name(&tensor, format != WeightsFormat::Burnpack)
            ),
        });
    }
    *encoder = loaded;
    Ok(())
}

/// Every float parameter in f32 (a PyTorch file's f16, bf16 or f64 tensors come in as they
/// were stored, and training needs f32), and the first one that is not finite, by path.
struct FinalParams {
    path: Vec<String>,
    non_finite: Option<String>,
}

impl ModuleMapper for FinalParams {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let param = if param.val().dtype() == DType::F32 {
            param
        } else {
            param.map(|t| t.cast(FloatDType::F32))
        };
        // The sum is finite iff every value is (one pass, no mask the size of the tensor; a
        // sum past f32's range would need weights near 10³², broken anyway).
        if self.non_finite.is_none() && !param.val().sum().into_scalar::<f32>().is_finite() {
            self.non_finite = Some(self.path.join("."));
        }
        param
    }
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
            ApplyError::DTypeMismatch {
                path: tensor,
                found,
                ..
            } => EncoderError::Checkpoint {
                path: path.to_path_buf(),
                message: format!(
                    "tensor `{}` is stored as {found:?}; the encoder's weights must be floats \
                     (f32, f16, bf16 or f64)",
                    display_name(tensor, hf)
                ),
            },
            ApplyError::AdapterError {
                path: tensor,
                message,
            }
            | ApplyError::LoadError {
                path: tensor,
                message,
            } => EncoderError::Checkpoint {
                path: path.to_path_buf(),
                message: format!(
                    "tensor `{}`: {}",
                    display_name(tensor, hf),
                    unreadable(format, message)
                ),
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
    if let Err(e) = encoder.save_into(&mut store) {
        let _ = std::fs::remove_file(&tmp);
        return Err(EncoderError::Write {
            path: path.to_path_buf(),
            message: e.to_string(),
        });
    }
    std::fs::rename(&tmp, path).map_err(|error| EncoderError::Io {
        path: path.to_path_buf(),
        error,
    })
}
