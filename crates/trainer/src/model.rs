//! The sentiment model (encoder + both heads) and its checkpoints.

use std::path::Path;

use burn::module::Module;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::Device;
use encoder::{Encoder, EncoderInput, ModelFolder};
use heads::{HeadDropoutMasks, HeadsOutput, MultiTaskHeads};

use crate::config::{Finetune, RunConfig};
use crate::train::TrainError;

/// The encoder and the regression and classification heads on its first-token state `H`.
#[derive(Module, Debug)]
pub struct SentimentModel {
    pub encoder: Encoder,
    pub heads: MultiTaskHeads,
}

/// The weights file of a checkpoint folder.
pub const MODEL_FILE: &str = "model.bpk";

impl SentimentModel {
    /// The pretrained encoder of `config.model` with freshly initialised heads (and, for
    /// `finetune = "lora"`, fresh adapters) on `device`. Seed the device first for a
    /// reproducible initialisation.
    pub fn from_config(config: &RunConfig, device: &Device) -> Result<Self, TrainError> {
        let folder = ModelFolder::open(&config.model.path, config.model.weights.as_deref())?;
        let mut encoder = folder.load_encoder(device)?;
        if config.train.finetune == Finetune::Lora {
            encoder = encoder.apply_lora(&config.lora_config())?;
        }
        if config.train.bf16_products {
            encoder.set_product_precision(encoder::ProductPrecision::Bf16);
        }
        let heads = config
            .heads_config()
            .init(encoder.config().hidden_size, device)?;
        Ok(Self { encoder, heads })
    }

    /// `H` then both heads, with the given dropout masks for the heads.
    ///
    /// # Shapes
    /// - `scores`: `[batch, 1]`, `logits`: `[batch, 5]`.
    pub fn forward(&self, input: EncoderInput, masks: Option<&HeadDropoutMasks>) -> HeadsOutput {
        let h = self.encoder.first_token(input);
        self.heads.forward_with_masks(h, masks)
    }

    /// Writes the weights to `dir/model.bpk`: everything for full fine-tuning, only the
    /// adapters and heads with LoRA (the frozen base comes from `model.path`). Parameter ids
    /// are kept, so the optimizer state saved beside still matches after a reload.
    pub fn save(&self, dir: &Path, finetune: Finetune) -> Result<(), TrainError> {
        let path = dir.join(MODEL_FILE);
        let mut store = BurnpackStore::from_file(&path).overwrite(true);
        if finetune == Finetune::Lora {
            store = store.with_regex(r"(\.adapter\.|^heads\.)");
        }
        self.save_into(&mut store)
            .map_err(|e| TrainError::checkpoint(&path, e.to_string()))
    }

    /// Loads `dir/model.bpk` written by [`save`](Self::save) into a model built by
    /// [`from_config`](Self::from_config) with the same `finetune`.
    pub fn load(&mut self, dir: &Path, finetune: Finetune) -> Result<(), TrainError> {
        let path = dir.join(MODEL_FILE);
        if !path.is_file() {
            return Err(TrainError::checkpoint(&path, "file not found".into()));
        }
        let lora = finetune == Finetune::Lora;
        // Shapes and missing tensors are checked below, into an error a person can act on.
        let mut store = BurnpackStore::from_file(&path)
            .allow_partial(true)
            .validate(false);
        let result = self
            .load_from(&mut store)
            .map_err(|e| TrainError::checkpoint(&path, e.to_string()))?;
        let missing: Vec<String> = result
            .missing
            .iter()
            .map(|(name, _)| name)
            .filter(|name| !lora || name.contains(".adapter.") || name.starts_with("heads."))
            .map(|name| format!("`{name}` is missing"))
            .collect();
        let problems: Vec<String> = result
            .errors
            .iter()
            .map(|error| match error {
                burn::store::ApplyError::ShapeMismatch {
                    path,
                    expected,
                    found,
                } => format!(
                    "`{path}` is {:?} in the checkpoint, {:?} in the model",
                    found.as_slice(),
                    expected.as_slice()
                ),
                other => other.to_string(),
            })
            .chain(missing)
            .collect();
        if problems.is_empty() {
            return Ok(());
        }
        const SHOWN: usize = 3;
        let more = problems.len().saturating_sub(SHOWN);
        Err(TrainError::checkpoint(
            &path,
            format!(
                "does not fit the model built from the run's configuration ({}{}): the run was \
                 trained from another model (give --model the folder it was trained from) or \
                 with other [lora] or [heads] settings",
                problems[..problems.len().min(SHOWN)].join("; "),
                if more > 0 {
                    format!("; and {more} more")
                } else {
                    String::new()
                }
            ),
        ))
    }

    /// The inference model of a run folder: its config's encoder, the weights of
    /// `checkpoints/<which>/`, LoRA merged into the base weights. `model_folder`: where the
    /// model folder the run was trained from lies now, if not where its `config.toml` says
    /// (the returned config names it).
    pub fn from_run(
        run: &Path,
        which: &str,
        model_folder: Option<&Path>,
        device: &Device,
    ) -> Result<(RunConfig, Self), TrainError> {
        let config = run_config(run, model_folder)?;
        let model = Self::from_checkpoint(&config, run, which, device)?;
        Ok((config, model))
    }

    /// [`Self::from_run`] with the run's config already read ([`run_config`]).
    pub(crate) fn from_checkpoint(
        config: &RunConfig,
        run: &Path,
        which: &str,
        device: &Device,
    ) -> Result<Self, TrainError> {
        if !crate::CHECKPOINT_NAMES.contains(&which) {
            return Err(TrainError::Input(format!(
                "no checkpoint `{which}`: a run has `best` (its best epoch by \
                 train.best_metric) and `last` (where it stopped)"
            )));
        }
        let dir = crate::train::checkpoint_for_inference(run, which)?;
        let mut model = Self::from_config(config, device)?;
        model.load(&dir, config.train.finetune)?;
        if config.train.finetune == Finetune::Lora {
            model.encoder = model.encoder.merge_lora()?;
        }
        Ok(model)
    }
}

/// A run folder's `config.toml`, with its model folder at `model_folder` where given (it has
/// moved since the run). Without one, a model folder that is not where the config says is an
/// error saying what to do.
pub(crate) fn run_config(run: &Path, model_folder: Option<&Path>) -> Result<RunConfig, TrainError> {
    let config = crate::RunDir::open(run)?.read_config()?;
    match model_folder {
        Some(dir) => config
            .with_model_folder(dir)
            .map_err(|error| TrainError::Io {
                path: dir.to_path_buf(),
                error,
            }),
        // Said here rather than by the loader, which knows nothing of the run.
        None if !config.model.path.is_dir() => Err(TrainError::Input(format!(
            "{}: the model folder the run was trained from, {}, is not there (moved, or a \
             relative path from another working directory): name where it lies now (--model DIR)",
            run.join("config.toml").display(),
            config.model.path.display()
        ))),
        None => Ok(config),
    }
}
