//! Reading and writing the heads as safetensors with PyTorch names and layouts
//! (`regression_head.ll1.weight [128, d]`, …), so the reference's `heads.safetensors` loads
//! and ours exports to PyTorch / Hugging Face without conversion.

use std::path::Path;

use burn::module::Module;
use burn::store::{
    ApplyError, ApplyResult, BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter,
    SafetensorsStore,
};
use burn::tensor::Device;

use crate::{HeadsConfig, HeadsError, MultiTaskHeads};

impl MultiTaskHeads {
    /// Builds heads of `config` on inputs of size `d_model` and loads `path` into them.
    pub fn from_file(
        path: &Path,
        config: &HeadsConfig,
        d_model: usize,
        device: &Device,
    ) -> Result<Self, HeadsError> {
        let mut heads = config.init(d_model, device)?;
        heads.load_safetensors(path)?;
        Ok(heads)
    }

    /// Loads all eight head tensors from a safetensors file with PyTorch names and `[out, in]`
    /// weights. A missing or misshapen tensor is an error naming it; other tensors in the file
    /// are ignored.
    pub fn load_safetensors(&mut self, path: &Path) -> Result<(), HeadsError> {
        self.load_safetensors_with_prefix(path, "")
    }

    /// Like [`load_safetensors`](Self::load_safetensors) for a file whose head keys start with `prefix`
    /// (e.g. `base_model.model.` in a PEFT adapter file that saved the heads beside it).
    pub fn load_safetensors_with_prefix(
        &mut self,
        path: &Path,
        prefix: &str,
    ) -> Result<(), HeadsError> {
        let error = |message: String| HeadsError::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(error("file not found".into()));
        }
        let mut store = SafetensorsStore::from_file(path)
            .with_from_adapter(PyTorchToBurnAdapter)
            .allow_partial(true)
            // Report shape errors in the ApplyResult (checked below) rather than as one string.
            .validate(false);
        if !prefix.is_empty() {
            store = store.with_key_remapping(format!("^{}", escape(prefix)), "");
        }
        // A corrupt file can panic inside the reader: report it as an error.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.load_from(&mut store)))
                .map_err(|_| error("corrupt or truncated safetensors file".into()))?
                .map_err(|e| error(e.to_string()))?;
        check_applied(path, prefix, &result)
    }

    /// Writes the heads to `path` (safetensors, PyTorch names, `[out, in]` weights),
    /// replacing an existing file.
    pub fn save_safetensors(&self, path: &Path) -> Result<(), HeadsError> {
        let mut store = SafetensorsStore::from_file(path)
            .with_to_adapter(BurnToPyTorchAdapter)
            .overwrite(true);
        self.save_into(&mut store)
            .map_err(|e| HeadsError::Checkpoint {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
    }

    /// Number of values in all head tensors.
    pub fn num_parameters(&self) -> usize {
        Module::num_params(self)
    }
}

fn escape(prefix: &str) -> String {
    prefix
        .chars()
        .flat_map(|c| {
            let special = ".+*?()|[]{}^$\\".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

fn check_applied(path: &Path, prefix: &str, result: &ApplyResult) -> Result<(), HeadsError> {
    if let Some(error) = result.errors.first() {
        return Err(match error {
            ApplyError::ShapeMismatch {
                path: tensor,
                expected,
                found,
            } => {
                let (mut expected, mut found) = (expected.to_vec(), found.to_vec());
                // Name Linear weights as the file stores them: PyTorch's [out, in].
                if tensor.ends_with(".weight") {
                    expected.reverse();
                    found.reverse();
                }
                HeadsError::ShapeMismatch {
                    path: path.to_path_buf(),
                    tensor: format!("{prefix}{tensor}"),
                    expected,
                    found,
                }
            }
            other => HeadsError::Checkpoint {
                path: path.to_path_buf(),
                message: other.to_string(),
            },
        });
    }
    if let Some((tensor, _)) = result.missing.first() {
        return Err(HeadsError::MissingTensor {
            path: path.to_path_buf(),
            tensor: format!("{prefix}{tensor}"),
        });
    }
    Ok(())
}
