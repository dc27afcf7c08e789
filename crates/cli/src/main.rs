//! `cli`: the command-line front end. Each subcommand lives in its own module and only parses
//! arguments and calls into the library crates.

// The arguments' doc comments are `--help` text, where `<name>` is a placeholder, not HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod data_cmd;
mod embed;
mod evaluate;
mod export;
mod predict;
mod report;
mod train;

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
    /// Validation metrics of a run's best (or last) checkpoint.
    Evaluate(evaluate::EvaluateArgs),
    /// Scores, classes and probabilities for the texts of a JSON Lines, CSV or TSV file.
    Predict(predict::PredictArgs),
    /// A run's report, or the comparison of several runs.
    Report(report::ReportArgs),
    /// Export a run's best (or last) model as a Hugging Face folder.
    Export(export::ExportArgs),
}

fn main() -> ExitCode {
    // Where they do not apply the defaults are only slower: nothing to report.
    let _ = trainer::keep_freed_memory();
    let _ = trainer::join_the_thread_pool();
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
            "--bf16-products: this CPU has neither AMX tiles (or the OS refused them) nor an \
             AVX-512 BF16 faster than its f32 FMAs; the products stay f32"
        );
    }
    encoder::ProductPrecision::Bf16
}

/// A given `--max-len` within what the model's position table allows.
fn check_max_len(max_len: Option<usize>, folder: &encoder::ModelFolder) -> anyhow::Result<()> {
    let limit = folder.config.max_input_len();
    if let Some(max_len) = max_len.filter(|n| !(2..=limit).contains(n)) {
        anyhow::bail!(
            "--max-len {max_len}: the model in {} takes 2 to {limit} tokens (its position table)",
            folder.dir.display()
        );
    }
    Ok(())
}
