//! `cli`: the command-line front end. Each subcommand lives in its own module and only parses
//! arguments and calls into the library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod data_cmd;
mod embed;
mod evaluate;
mod export;
mod predict;
mod report;
mod train;

/// mimalloc reuses freed pages: with glibc's allocator every training step's large tensors were
/// fresh mappings, page-faulted in anew (BENCHMARKS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc keeps freed pages instead of returning them to the OS 10 ms after a free (then each
/// training step faulted its large buffers in again): `mi_option_purge_delay` (15 in the
/// `mi_option_e` of the v3 sources of libmimalloc-sys 0.1.49, pinned) set to −1. Measured in
/// BENCHMARKS.md (≈ 20 % off a roberta-base step, ≈ 2 % more peak memory).
#[cfg(feature = "mimalloc")]
fn keep_freed_pages() {
    // SAFETY: sets a process-wide option; mimalloc reads it at each purge decision.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
}

/// Financial sentiment fine-tuning with multi-task learning and Dynamic Adaptive Optimization.
#[derive(Debug, Parser)]
#[command(name = "cli", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Encode texts and write H (the first token's last hidden state) as JSON Lines.
    Embed(embed::EmbedArgs),
    /// Inspect data files (`data stats`).
    Data(data_cmd::DataArgs),
    /// Fine-tune a model from a run configuration.
    Train(train::TrainArgs),
    /// Validation metrics of a run's best checkpoint.
    Evaluate(evaluate::EvaluateArgs),
    /// Scores, classes and probabilities for JSON Lines texts.
    Predict(predict::PredictArgs),
    /// A run's report, or the comparison of several runs.
    Report(report::ReportArgs),
    /// Export a run's best model as a Hugging Face folder.
    Export(export::ExportArgs),
}

fn main() -> ExitCode {
    #[cfg(feature = "mimalloc")]
    keep_freed_pages();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Embed(args) => embed::run(args),
        Command::Data(args) => data_cmd::run(args),
        Command::Train(args) => train::run(args),
        Command::Evaluate(args) => evaluate::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Report(args) => report::run(args),
        Command::Export(args) => export::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The encoder's product precision for `--bf16-products`, saying so when the CPU cannot.
fn product_precision(bf16: bool) -> encoder::ProductPrecision {
    if !bf16 {
        return encoder::ProductPrecision::F32;
    }
    if !encoder::bf16_products_available() {
        tracing::warn!(
            "--bf16-products: this CPU has no AMX tiles (or the kernel refused them); \
             the products stay f32"
        );
    }
    encoder::ProductPrecision::Bf16
}
