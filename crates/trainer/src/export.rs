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

/// Writes the model of `run`'s `checkpoints/<which>` (`best` or `last`) to `out` as a Hugging
/// Face folder: `config.json` of the base
/// model, its tokenizer files set to truncate at the run's `model.max_len` as it did,
/// `model.safetensors` with Hugging Face keys and `[out, in]` weights (LoRA merged; no pooler,
/// which H does not use), and the heads in `heads.safetensors`. `model_folder`: as for
/// [`SentimentModel::from_run`].
///
/// Each file is written whole under a temporary name in `out` and then renamed, so a failed
/// export leaves the files of an earlier one as they were. `out` may not be the base model's
/// own folder: its weights are what the run (and every LoRA adapter of it) is trained from.
pub fn export_run(
    run: &Path,
    which: &str,
    model_folder: Option<&Path>,
    out: &Path,
    device: &Device,
) -> Result<(), TrainError> {
    let (config, model) = SentimentModel::from_run(run, which, model_folder, device)?;
    let folder = encoder::ModelFolder::open(&config.model.path, config.model.weights.as_deref())?;
    if crate::same_path(out, &folder.dir) {
        return Err(TrainError::Input(format!(
            "--out {} is the folder of the model the run was trained from: exporting there \
             would replace its weights; choose another --out (nothing was changed)",
            out.display()
        )));
    }
    let mut files = vec![("config.json", read(&folder.dir.join("config.json"))?)];
    files.extend(tokenizer_files(&folder, config.model.max_len)?);
    std::fs::create_dir_all(out).map_err(|error| TrainError::Io {
        path: out.to_path_buf(),
        error,
    })?;
    for (name, bytes) in files {
        let to = out.join(name);
        crate::write_atomic(&to, &bytes).map_err(|error| TrainError::Io { path: to, error })?;
    }
    let weights = out.join("model.safetensors");
    write_readable(&weights, |tmp| {
        let mut store = SafetensorsStore::from_file(tmp)
            .with_to_adapter(BurnToPyTorchAdapter)
            .overwrite(true);
        for (from, to) in EXPORT_KEY_MAP {
            store = store.with_key_remapping(*from, *to);
        }
        model
            .encoder
            .save_into(&mut store)
            .map_err(|e| TrainError::checkpoint(&weights, e.to_string()))
    })?;
    write_readable(&out.join(HEADS_FILE), |tmp| {
        Ok(model.heads.save_safetensors(tmp)?)
    })
}

/// Has `write` make `path` whole under a temporary name, readable by all (burn's writers create
/// files for their owner alone), then renamed into place.
fn write_readable(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    let io = |error| TrainError::Io {
        path: path.to_path_buf(),
        error,
    };
    crate::replace_file(
        path,
        |tmp| write(tmp).and_then(|()| readable_by_all(tmp).map_err(io)),
        io,
    )
}

fn read(path: &Path) -> Result<Vec<u8>, TrainError> {
    std::fs::read(path).map_err(|error| TrainError::Io {
        path: path.to_path_buf(),
        error,
    })
}

/// The base model's tokenizer files, set to tokenize as the run did, so that Hugging Face
/// reproduces `predict`: `tokenizer.json` truncating to the run's `max_len` without padding (a
/// base file may pad every text to a fixed length), `tokenizer_config.json` with that
/// `model_max_length` (transformers' truncation length; written if the base has none), and the
/// slow tokenizer's files, where there are any, as they are.
fn tokenizer_files(
    folder: &encoder::ModelFolder,
    max_len: usize,
) -> Result<Vec<(&'static str, Vec<u8>)>, TrainError> {
    let json = |path: &Path, bytes: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .filter(serde_json::Value::is_object)
            .ok_or_else(|| TrainError::Input(format!("{}: not a JSON object", path.display())))
    };
    let mut tokenizer = json(&folder.tokenizer, &read(&folder.tokenizer)?)?;
    tokenizer["padding"] = serde_json::Value::Null;
    tokenizer["truncation"] = serde_json::json!({
        "direction": "Right",
        "max_length": max_len,
        "strategy": "LongestFirst",
        "stride": 0,
    });
    let settings_path = folder.dir.join("tokenizer_config.json");
    let mut settings = if settings_path.is_file() {
        json(&settings_path, &read(&settings_path)?)?
    } else {
        serde_json::json!({})
    };
    settings["model_max_length"] = max_len.into();
    let pretty = |value: &serde_json::Value| {
        let mut bytes = serde_json::to_vec_pretty(value).expect("a JSON value serializes");
        bytes.push(b'\n');
        bytes
    };
    let mut files = vec![
        ("tokenizer.json", pretty(&tokenizer)),
        ("tokenizer_config.json", pretty(&settings)),
    ];
    for name in [
        "special_tokens_map.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
    ] {
        let path = folder.dir.join(name);
        if path.is_file() {
            files.push((name, read(&path)?));
        }
    }
    Ok(files)
}

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
