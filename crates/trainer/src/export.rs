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
    if same_folder(out, &folder.dir) {
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
    written_then_renamed(&path, |tmp| {
        let mut store = SafetensorsStore::from_file(tmp)
            .with_to_adapter(BurnToPyTorchAdapter)
            .overwrite(true);
        for (from, to) in EXPORT_KEY_MAP {
            store = store.with_key_remapping(*from, *to);
        }
        model
            .encoder
            .save_into(&mut store)
            .map_err(|e| TrainError::checkpoint(&path, e.to_string()))
    })?;
    written_then_renamed(&out.join(HEADS_FILE), |tmp| {
        Ok(model.heads.save_safetensors(tmp)?)
    })
}

/// Whether `a` and `b` name the same existing folder.
fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Runs `write` on a temporary path beside `path`, then renames it to `path`, readable by
/// all as a model folder's files are (burn's writer creates files for its owner alone).
fn written_then_renamed(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let io = |error| TrainError::Io {
        path: path.to_path_buf(),
        error,
    };
    if let Err(error) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(error);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}
