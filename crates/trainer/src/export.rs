//! Export of a trained run as a Hugging Face model folder.

use std::path::Path;

use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, SafetensorsStore};
use burn::tensor::Device;

use crate::model::SentimentModel;
use crate::train::TrainError;

/// Our module paths → Hugging Face keys: the reverse of the encoder loader's table.
const EXPORT_KEY_MAP: &[(&str, &str)] = &[
    (r"\.attention\.self_attention\.", ".attention.self."),
    (r"\.layer_norm\.", ".LayerNorm."),
    (r"\.(query|key|value|dense)\.base\.(weight|bias)$", ".$1.$2"),
];

/// The heads' file in an exported folder (PyTorch names and layouts).
pub const HEADS_FILE: &str = "heads.safetensors";

/// Writes the best model of `run` to `out` as a Hugging Face folder: `config.json` and
/// `tokenizer.json` of the base model, `model.safetensors` with Hugging Face keys and
/// `[out, in]` weights (LoRA merged), and the heads in `heads.safetensors`. `model_folder`:
/// as for [`SentimentModel::from_run`].
pub fn export_run(
    run: &Path,
    model_folder: Option<&Path>,
    out: &Path,
    device: &Device,
) -> Result<(), TrainError> {
    let (config, model) = SentimentModel::from_run(run, "best", model_folder, device)?;
    let folder = encoder::ModelFolder::open(&config.model.path, config.model.weights.as_deref())?;
    std::fs::create_dir_all(out).map_err(|error| TrainError::Io {
        path: out.to_path_buf(),
        error,
    })?;
    for (from, name) in [
        (folder.dir.join("config.json"), "config.json"),
        (folder.tokenizer.clone(), "tokenizer.json"),
    ] {
        std::fs::copy(&from, out.join(name)).map_err(|error| TrainError::Io {
            path: from.clone(),
            error,
        })?;
    }
    let path = out.join("model.safetensors");
    let mut store = SafetensorsStore::from_file(&path)
        .with_to_adapter(BurnToPyTorchAdapter)
        .overwrite(true);
    for (from, to) in EXPORT_KEY_MAP {
        store = store.with_key_remapping(*from, *to);
    }
    model
        .encoder
        .save_into(&mut store)
        .map_err(|e| TrainError::checkpoint(&path, e.to_string()))?;
    model.heads.save_safetensors(&out.join(HEADS_FILE))?;
    Ok(())
}
