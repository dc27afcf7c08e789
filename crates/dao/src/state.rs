//! A strategy's state on disk, for an exact resume ([`crate::LossWeighting::save`]): its module
//! (burnpack), its own Adam (burn's optimizer record) and plain numbers (a small text file,
//! one `name value…` line each, written so every f64 reads back bit-identical).
//!
//! Files are written in place: a caller that needs crash safety writes into a fresh folder
//! and renames it, as the trainer's checkpoints do.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::store::{BurnpackStore, ModuleSnapshot};

use crate::error::DaoError;

pub(crate) const MODULE_FILE: &str = "weighting.bpk";
pub(crate) const OPTIMIZER_FILE: &str = "weighting_optimizer.bpk";
pub(crate) const NUMBERS_FILE: &str = "weighting_state.txt";

pub(crate) fn state_error(path: &Path, reason: impl std::fmt::Display) -> DaoError {
    DaoError::State {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// For a strategy without state: `dir` must not hold a state file (then it was saved by
/// another strategy, and loading it here would restore nothing).
pub(crate) fn expect_no_state(strategy: &str, dir: &Path) -> Result<(), DaoError> {
    match [MODULE_FILE, OPTIMIZER_FILE, NUMBERS_FILE]
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.exists())
    {
        Some(path) => Err(state_error(
            &path,
            format!(
                "saved by a strategy with state, but `{strategy}` has none: load it into the \
                 strategy it was saved from"
            ),
        )),
        None => Ok(()),
    }
}

pub(crate) fn save_module<M: Module>(module: &M, dir: &Path) -> Result<(), DaoError> {
    let path = dir.join(MODULE_FILE);
    let mut store = BurnpackStore::from_file(&path).overwrite(true);
    module
        .save_into(&mut store)
        .map_err(|e| state_error(&path, e))
}

/// `module` with the values saved in `dir` (every tensor must be there, in its shape).
pub(crate) fn load_module<M: Module>(mut module: M, dir: &Path) -> Result<M, DaoError> {
    let path = dir.join(MODULE_FILE);
    // Shapes and missing tensors are checked below, into an error naming them.
    let mut store = BurnpackStore::from_file(&path)
        .validate(false)
        .allow_partial(true);
    let result = module
        .load_from(&mut store)
        .map_err(|e| state_error(&path, e))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        let problems: Vec<String> = result
            .errors
            .iter()
            .map(ToString::to_string)
            .chain(
                result
                    .missing
                    .iter()
                    .map(|(name, _)| format!("`{name}` is missing")),
            )
            .collect();
        return Err(state_error(
            &path,
            format!(
                "does not fit this strategy ({}): saved by another strategy, or by the same one \
                 with another network size (dao.hidden); load it into the one it was saved from",
                problems.join("; ")
            ),
        ));
    }
    Ok(module)
}

pub(crate) fn save_numbers(dir: &Path, entries: &[(&str, Vec<f64>)]) -> Result<(), DaoError> {
    let path = dir.join(NUMBERS_FILE);
    let mut text = String::new();
    for (name, values) in entries {
        text.push_str(name);
        for v in values {
            // `{:?}` prints the shortest text that parses back to the same f64.
            text.push_str(&format!(" {v:?}"));
        }
        text.push('\n');
    }
    std::fs::write(&path, text).map_err(|e| state_error(&path, e))
}

pub(crate) fn load_numbers(dir: &Path) -> Result<Numbers, DaoError> {
    let path = dir.join(NUMBERS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| state_error(&path, e))?;
    let mut entries = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let values = words
            .map(|w| w.parse::<f64>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| state_error(&path, format!("line {}: {e}", i + 1)))?;
        entries.insert(name.to_string(), values);
    }
    Ok(Numbers { path, entries })
}

/// Numbers read back by [`load_numbers`].
pub(crate) struct Numbers {
    path: std::path::PathBuf,
    entries: BTreeMap<String, Vec<f64>>,
}

impl Numbers {
    /// The values of `name`, which must have `len` of them.
    pub(crate) fn get(&self, name: &str, len: usize) -> Result<&[f64], DaoError> {
        match self.entries.get(name) {
            Some(v) if v.len() == len => Ok(v),
            Some(v) => Err(state_error(
                &self.path,
                format!("`{name}` has {} values, expected {len}", v.len()),
            )),
            None => Err(state_error(&self.path, format!("`{name}` is missing"))),
        }
    }

    /// The values of `name`, any number of them (none when absent).
    pub(crate) fn list(&self, name: &str) -> &[f64] {
        self.entries.get(name).map_or(&[], Vec::as_slice)
    }
}
