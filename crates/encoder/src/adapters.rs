//! LoRA on the encoder (DAO-SPEC "LoRA"): switching adapters on by target name, freezing the
//! rest, merging, counting trainable parameters, and reading / writing PEFT adapter folders
//! (`adapter_config.json` + `adapter_model.safetensors`), optionally with the task heads saved
//! in the same file (PEFT's `modules_to_save`), so a trained head is never lost.
//!
//! The per-layer mechanics live in the `lora` crate ([`LoraLinear`]); this file only knows
//! which projections the encoder has and how PEFT names them.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleDisplay};
use burn::store::{
    ApplyResult, BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
};
use lora::{LoraConfig, LoraError, LoraLinear, PeftAdapterConfig};

use crate::error::EncoderError;
use crate::model::{Encoder, Layer};

/// PEFT's adapter config file in an adapter folder.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// PEFT's adapter weights file in an adapter folder.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// Our names of the six projections of a layer, in layer order. Targets may also be PEFT-style
/// suffixes of the Hugging Face module names (`dense`, `self.query`, `output.dense`, …).
pub const LORA_TARGETS: [&str; 6] = [
    "query",
    "key",
    "value",
    "attention_output",
    "intermediate",
    "output",
];

/// Hugging Face module name (within `encoder.layer.N.`) of each of [`LORA_TARGETS`].
const HF_PROJECTIONS: [&str; 6] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

/// How many encoder values train, after LoRA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainableParameters {
    /// Values of the unmerged adapters (`A`, `B`); all else of the encoder is frozen.
    pub trainable: usize,
    /// Every value of the encoder, adapters included.
    pub total: usize,
}

impl TrainableParameters {
    /// `trainable / total` (0 for an empty model).
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.trainable as f64 / self.total as f64
        }
    }
}

impl std::fmt::Display for TrainableParameters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            self.trainable,
            self.total,
            100.0 * self.fraction()
        )
    }
}

/// The six projections of a layer with their index in [`LORA_TARGETS`].
fn projections_mut(layer: &mut Layer) -> [&mut LoraLinear; 6] {
    [
        &mut layer.attention.self_attention.query,
        &mut layer.attention.self_attention.key,
        &mut layer.attention.self_attention.value,
        &mut layer.attention.output.dense,
        &mut layer.intermediate.dense,
        &mut layer.output.dense,
    ]
}

fn projections(layer: &Layer) -> [&LoraLinear; 6] {
    [
        &layer.attention.self_attention.query,
        &layer.attention.self_attention.key,
        &layer.attention.self_attention.value,
        &layer.attention.output.dense,
        &layer.intermediate.dense,
        &layer.output.dense,
    ]
}

/// Whether `target` names projection `index` of layer `layer`: our alias, or (as PEFT matches)
/// the Hugging Face module name or a dot-separated suffix of it.
fn target_matches(target: &str, layer: usize, index: usize) -> bool {
    let target = target
        .strip_prefix("roberta.")
        .or_else(|| target.strip_prefix("bert."))
        .unwrap_or(target);
    if target == LORA_TARGETS[index] {
        return true;
    }
    let full = format!("encoder.layer.{layer}.{}", HF_PROJECTIONS[index]);
    full == target || full.ends_with(&format!(".{target}"))
}

/// Replaces the value behind `slot` by `f(value)`.
fn replace(
    slot: &mut LoraLinear,
    f: impl FnOnce(LoraLinear) -> Result<LoraLinear, LoraError>,
) -> Result<(), LoraError> {
    // A stand-in with no tensors of its own while the real layer is transformed.
    let placeholder =
        LoraLinear::new(burn::nn::LinearConfig::new(1, 1).init(&burn::tensor::Device::flex()));
    let value = std::mem::replace(slot, placeholder);
    *slot = f(value)?;
    Ok(())
}

fn lora_error(e: LoraError) -> EncoderError {
    EncoderError::Input(format!("LoRA: {e}"))
}

impl Encoder {
    /// Adds a fresh adapter (DAO-SPEC "LoRA") to every projection named by `config.targets`
    /// and freezes everything else of the encoder: embeddings, LayerNorms, every base weight
    /// and bias (the heads are separate modules and stay trainable).
    ///
    /// # Errors
    /// An invalid config, or a target that names no projection.
    pub fn apply_lora(mut self, config: &LoraConfig) -> Result<Self, EncoderError> {
        config.validate().map_err(lora_error)?;
        let layers = self.encoder.layer.len();
        for target in &config.targets {
            let hit = (0..layers).any(|l| (0..6).any(|i| target_matches(target, l, i)));
            if !hit {
                return Err(EncoderError::Input(format!(
                    "LoRA target `{target}` names no projection of this encoder (use {} or a \
                     suffix of a module name such as `dense` or `attention.self.query`)",
                    LORA_TARGETS.join(", ")
                )));
            }
        }
        self.embeddings = self.embeddings.no_grad();
        for (l, layer) in self.encoder.layer.iter_mut().enumerate() {
            replace_norm(&mut layer.attention.output.layer_norm);
            replace_norm(&mut layer.output.layer_norm);
            for (i, projection) in projections_mut(layer).into_iter().enumerate() {
                let targeted = config.targets.iter().any(|t| target_matches(t, l, i));
                replace(projection, |p| {
                    if targeted {
                        p.with_adapter(config)
                    } else {
                        Ok(p.no_grad())
                    }
                })
                .map_err(lora_error)?;
            }
        }
        Ok(self)
    }

    /// Folds every adapter into its base weight and drops the adapters (PEFT's
    /// `merge_and_unload`): the same function as a plain encoder, for export or inference.
    ///
    /// # Errors
    /// An adapter whose update is not finite (NaN or ±inf); the encoder is consumed, so no
    /// half-merged encoder can be used.
    pub fn merge_lora(mut self) -> Result<Self, EncoderError> {
        for layer in self.encoder.layer.iter_mut() {
            for projection in projections_mut(layer) {
                replace(projection, LoraLinear::merge_and_unload).map_err(lora_error)?;
            }
        }
        Ok(self)
    }

    /// Names (Hugging Face style, `encoder.layer.N.attention.self.query`) of the projections
    /// that carry an adapter.
    pub fn lora_modules(&self) -> Vec<String> {
        let mut names = Vec::new();
        for (l, layer) in self.encoder.layer.iter().enumerate() {
            for (i, projection) in projections(layer).into_iter().enumerate() {
                if projection.adapter.is_some() {
                    names.push(format!("encoder.layer.{l}.{}", HF_PROJECTIONS[i]));
                }
            }
        }
        names
    }

    /// Trainable (unmerged adapter) and total parameter counts of the encoder. Everything but
    /// the adapters is frozen by [`apply_lora`](Self::apply_lora); before it, use
    /// `Module::num_params` (all trainable).
    pub fn trainable_parameters(&self) -> TrainableParameters {
        let trainable = self
            .encoder
            .layer
            .iter()
            .flat_map(projections)
            .filter_map(|p| p.adapter.as_ref())
            .filter(|a| !a.is_merged())
            .map(|a| a.num_params())
            .sum();
        TrainableParameters {
            trainable,
            total: Module::num_params(self),
        }
    }

    /// Loads a PEFT LoRA adapter folder onto this (base-loaded) encoder: reads
    /// `adapter_config.json`, adds adapters to its targets and loads
    /// `adapter_model.safetensors` (keys `base_model.model.[roberta.|bert.]<module>.lora_A.weight`
    /// / `lora_B.weight`). Every adapter tensor must be present with its shape, and every
    /// `lora_` tensor of the file must belong to a wrapped projection.
    pub fn load_peft_adapter(self, dir: &Path) -> Result<Self, EncoderError> {
        let mut none = NoModules::default();
        self.load_peft_adapter_with(dir, &mut none, &[])
    }

    /// [`load_peft_adapter`](Self::load_peft_adapter), also loading the modules saved beside
    /// the adapter (`modules_to_save`, e.g. the heads: keys `base_model.model.<name>.…`) into
    /// `modules`. `names` are `modules`' top-level field names (`regression_head`, …); each
    /// must be in the file.
    pub fn load_peft_adapter_with<M: Module + ModuleDisplay>(
        self,
        dir: &Path,
        modules: &mut M,
        names: &[&str],
    ) -> Result<Self, EncoderError> {
        let config_path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&config_path).map_err(|error| EncoderError::Io {
            path: config_path.clone(),
            error,
        })?;
        let config = PeftAdapterConfig::from_json(&text)
            .and_then(|c| c.to_lora_config())
            .map_err(|e| EncoderError::Config {
                path: config_path.clone(),
                message: e.to_string(),
            })?;
        let encoder = self.apply_lora(&config)?;
        let weights = dir.join(ADAPTER_WEIGHTS);
        if !weights.is_file() {
            return Err(EncoderError::Io {
                path: weights,
                error: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "adapter weights not found",
                ),
            });
        }
        let mut store = SafetensorsStore::from_file(&weights)
            .with_from_adapter(PyTorchToBurnAdapter)
            .allow_partial(true)
            .validate(false);
        for name in names {
            store = store.with_key_remapping(
                format!(r"^base_model\.model\.{}\.", regex_escape(name)),
                format!("modules.{name}."),
            );
        }
        for (from, to) in LOAD_KEY_MAP {
            store = store.with_key_remapping(*from, *to);
        }
        let mut bundle = PeftBundle {
            model: encoder,
            modules: modules.clone(),
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            bundle.load_from(&mut store)
        }))
        .map_err(|_| EncoderError::Checkpoint {
            path: weights.clone(),
            message: "corrupt or truncated safetensors file".into(),
        })?
        .map_err(|e| EncoderError::Checkpoint {
            path: weights.clone(),
            message: e.to_string(),
        })?;
        check_adapter_applied(&weights, &result)?;
        *modules = bundle.modules;
        Ok(bundle.model)
    }

    /// Writes the adapters only (a small file) as a PEFT folder: `adapter_config.json` from
    /// `config` and `adapter_model.safetensors` with PEFT's keys. The heads are **not** in it:
    /// use [`save_peft_adapter_with`](Self::save_peft_adapter_with) when they were trained.
    pub fn save_peft_adapter(&self, dir: &Path, config: &LoraConfig) -> Result<(), EncoderError> {
        self.save_peft_adapter_with(dir, config, &NoModules::default(), &[])
    }

    /// Writes the adapters and `modules` (e.g. `heads::MultiTaskHeads`) in one PEFT folder:
    /// `modules`' tensors go to `base_model.model.<field>.…` with PyTorch layouts and
    /// `names` (its top-level field names) are listed as `modules_to_save` in
    /// `adapter_config.json`, as PEFT does for a trained classifier.
    pub fn save_peft_adapter_with<M: Module + ModuleDisplay>(
        &self,
        dir: &Path,
        config: &LoraConfig,
        modules: &M,
        names: &[&str],
    ) -> Result<(), EncoderError> {
        if self.lora_modules().is_empty() {
            return Err(EncoderError::Input(
                "save_peft_adapter: the encoder has no LoRA adapter (apply_lora first)".into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|error| EncoderError::Io {
            path: dir.to_path_buf(),
            error,
        })?;
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let peft = PeftAdapterConfig::from_lora_config(config, &names);
        let config_path = dir.join(ADAPTER_CONFIG);
        std::fs::write(&config_path, peft.to_json()).map_err(|error| EncoderError::Io {
            path: config_path,
            error,
        })?;
        let weights = dir.join(ADAPTER_WEIGHTS);
        let mut store = SafetensorsStore::from_file(&weights)
            .with_to_adapter(BurnToPyTorchAdapter)
            .with_regexes([r"\.adapter\.lora_[ab]\.weight$", r"^modules\."])
            .overwrite(true);
        for (from, to) in SAVE_KEY_MAP {
            store = store.with_key_remapping(*from, *to);
        }
        let bundle = PeftBundle {
            model: self.clone(),
            modules: modules.clone(),
        };
        bundle
            .save_into(&mut store)
            .map_err(|e| EncoderError::Checkpoint {
                path: weights,
                message: e.to_string(),
            })
    }
}

fn replace_norm(norm: &mut burn::nn::LayerNorm) {
    *norm = norm.clone().no_grad();
}

/// The encoder and the modules saved with its adapter, so both go through one store (one
/// file). Module paths: `model.<encoder path>`, `modules.<field>`.
#[derive(Module, Debug)]
struct PeftBundle<M: Module + ModuleDisplay> {
    model: Encoder,
    modules: M,
}

/// Nothing saved beside the adapter.
#[derive(Module, Debug, Default)]
struct NoModules {}

/// PEFT file key → bundle path, applied in order (after the `modules_to_save` rules).
const LOAD_KEY_MAP: &[(&str, &str)] = &[
    (r"^base_model\.model\.(roberta\.|bert\.)?", "model."),
    (r"\.attention\.self\.", ".attention.self_attention."),
    (r"\.lora_A\.weight$", ".adapter.lora_a.weight"),
    (r"\.lora_B\.weight$", ".adapter.lora_b.weight"),
];

/// Bundle path → PEFT file key, applied in order.
const SAVE_KEY_MAP: &[(&str, &str)] = &[
    (r"\.adapter\.lora_a\.weight$", ".lora_A.weight"),
    (r"\.adapter\.lora_b\.weight$", ".lora_B.weight"),
    (r"\.attention\.self_attention\.", ".attention.self."),
    (r"^model\.", "base_model.model."),
    (r"^modules\.", "base_model.model."),
];

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = ".+*?()|[]{}^$\\".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// Bundle path as the PEFT file names it (the string form of [`SAVE_KEY_MAP`]).
fn peft_name(path: &str) -> String {
    let name = path
        .replace(".adapter.lora_a.weight", ".lora_A.weight")
        .replace(".adapter.lora_b.weight", ".lora_B.weight")
        .replace(".attention.self_attention.", ".attention.self.");
    match name.split_once('.') {
        Some(("model" | "modules", rest)) => format!("base_model.model.{rest}"),
        _ => name,
    }
}

fn check_adapter_applied(path: &Path, result: &ApplyResult) -> Result<(), EncoderError> {
    let path_buf = || PathBuf::from(path);
    if let Some(error) = result.errors.first() {
        return Err(match error {
            burn::store::ApplyError::ShapeMismatch {
                path: tensor,
                expected,
                found,
            } => {
                // Shown as the file stores them: PyTorch's [out, in].
                let (mut expected, mut found) = (expected.to_vec(), found.to_vec());
                expected.reverse();
                found.reverse();
                EncoderError::ShapeMismatch {
                    path: path_buf(),
                    tensor: peft_name(tensor),
                    expected,
                    found,
                }
            }
            other => EncoderError::Checkpoint {
                path: path_buf(),
                message: other.to_string(),
            },
        });
    }
    // The file holds only adapters (and saved modules): the base weights are "missing" by
    // design; a missing adapter or module tensor is an error.
    if let Some((tensor, _)) = result
        .missing
        .iter()
        .find(|(t, _)| t.contains(".adapter.") || t.starts_with("modules."))
    {
        return Err(EncoderError::MissingTensor {
            path: path_buf(),
            tensor: peft_name(tensor),
            hint: " (the adapter config targets this projection)".into(),
        });
    }
    if let Some(tensor) = result.unused.iter().find(|t| t.contains("lora_")) {
        return Err(EncoderError::Checkpoint {
            path: path_buf(),
            message: format!(
                "adapter tensor `{tensor}` belongs to no adapted projection of this encoder"
            ),
        });
    }
    Ok(())
}
