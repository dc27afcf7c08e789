//! What the `cli` tests share: running the binary, a fresh scratch folder.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs the `cli` binary built for these tests.
pub fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cli"))
        .args(args)
        .output()
        .expect("cli runs")
}

/// An empty folder in the temp dir, unique per test process.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
