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
///
/// Each file is written whole under a temporary name in `out` and then renamed, so a failed
/// export leaves the files of an earlier one as they were. `out` may not be the base model's
/// own folder: its weights are what the run (and every LoRA adapter of it) is trained from.
pub fn export_run(
    run: &Path,
    model_folder: Option<&Path>,
    out: &Path,
    device: &Device,
) -> Result<(), TrainError> {
    let (config, model) = SentimentModel::from_run(run, "best", model_folder, device)?;
    let folder = encoder::ModelFolder::open(&config.model.path, config.model.weights.as_deref())?;
    if crate::same_path(out, &folder.dir) {
        return Err(TrainError::Input(format!(
            "--out {} is the folder of the model the run was trained from: exporting there \
             would replace its weights; choose another --out (nothing was changed)",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|error| TrainError::Io {
        path: out.to_path_buf(),
        error,
    })?;
    for (from, name) in [
        (folder.dir.join("config.json"), "config.json"),
        (folder.tokenizer.clone(), "tokenizer.json"),
    ] {
        let bytes = std::fs::read(&from).map_err(|error| TrainError::Io {
            path: from.clone(),
            error,
        })?;
        let to = out.join(name);
        crate::write_atomic(&to, &bytes).map_err(|error| TrainError::Io { path: to, error })?;
    }
    let path = out.join("model.safetensors");
    let io = |error| TrainError::Io {
        path: path.clone(),
        error,
    };
    crate::replace_file(
        &path,
        |tmp| {
            let mut store = SafetensorsStore::from_file(tmp)
                .with_to_adapter(BurnToPyTorchAdapter)
                .overwrite(true);
            for (from, to) in EXPORT_KEY_MAP {
                store = store.with_key_remapping(*from, *to);
            }
            model
                .encoder
                .save_into(&mut store)
                .map_err(|e| TrainError::checkpoint(&path, e.to_string()))?;
            readable_by_all(tmp).map_err(io)
        },
        io,
    )?;
    let path = out.join(HEADS_FILE);
    let io = |error| TrainError::Io {
        path: path.clone(),
        error,
    };
    crate::replace_file(
        &path,
        |tmp| {
            model.heads.save_safetensors(tmp)?;
            readable_by_all(tmp).map_err(io)
        },
        io,
    )
}

/// A model folder's file, readable by all (burn's writer creates files for its owner alone).
fn readable_by_all(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
