//! `cargo xtask <task>`: the project's chores, in Rust so they run wherever cargo does.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
mod bench;

use encoder::{parse_device, save_burnpack, ModelFolder, BURN_WEIGHTS};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Project tasks", long_about = None)]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Convert a Hugging Face checkpoint (safetensors or PyTorch .bin) into burn's own format,
    /// once, so later loads are fast. Copies config.json and tokenizer.json beside it.
    ImportWeights {
        /// Hugging Face model folder (config.json, weights, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// Output folder (created).
        #[arg(long)]
        out: PathBuf,
        /// The weights file to convert when the folder has several.
        #[arg(long)]
        weights: Option<PathBuf>,
    },
    /// Time the training step and inference (median of several steps after warm-up).
    Bench {
        /// minilm, roberta-base or roberta-large (random weights of that shape).
        #[arg(long, default_value = "minilm")]
        model: String,
        /// Fewer steps.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> ExitCode {
    match run(Xtask::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::ImportWeights {
            model,
            out,
            weights,
        } => import_weights(&model, &out, weights.as_deref()),
        Task::Bench { model, quick } => {
            let (steps, warmup) = if quick { (3, 1) } else { (5, 2) };
            let step = bench::encoder_step(&model, steps, warmup)?;
            let infer = bench::inference(&model, steps, warmup)?;
            println!("{model}: encoder step {step:.3} s, inference {infer:.1} sentences/s");
            Ok(())
        }
    }
}

fn import_weights(model: &Path, out: &Path, weights: Option<&Path>) -> Result<()> {
    let folder = ModelFolder::open(model, weights)?;
    if folder.weights.extension().is_some_and(|e| e == "bpk") {
        bail!(
            "{} is already in burn's format; nothing to import",
            folder.weights.display()
        );
    }
    let device = parse_device("cpu")?;
    let started = std::time::Instant::now();
    let encoder = folder.load_encoder(&device)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    save_burnpack(&encoder, &out.join(BURN_WEIGHTS))?;
    for name in ["config.json", "tokenizer.json"] {
        let (from, to) = (model.join(name), out.join(name));
        if from != to {
            // Read and write rather than copy: a copy keeps the source's read-only mode.
            let bytes =
                std::fs::read(&from).with_context(|| format!("cannot read {}", from.display()))?;
            std::fs::write(&to, bytes).with_context(|| format!("cannot write {}", to.display()))?;
        }
    }
    eprintln!(
        "imported {} ({} layers, hidden {}) into {} in {:.2}s",
        folder.weights.display(),
        folder.config.num_hidden_layers,
        folder.config.hidden_size,
        out.join(BURN_WEIGHTS).display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
