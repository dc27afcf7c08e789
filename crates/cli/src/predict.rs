//! `cli predict`: scores, classes and probabilities for texts in a file.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The run folder (LoRA, if any, merged into the base weights).
    #[arg(long)]
    run: PathBuf,
    /// The model folder the run was trained from, where it lies now if not where the run's
    /// config.toml says (the run or the model moved to another place or machine).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Which checkpoint of the run: `best` (its best epoch by train.best_metric) or `last`
    /// (where it stopped).
    #[arg(long, default_value = "best", value_parser = trainer::CHECKPOINT_NAMES)]
    checkpoint: String,
    /// Texts to score: JSON Lines, CSV or TSV with the run's text field ("text" by default), and
    /// its target field when the run used text+target pairs; a score, if present, is not read.
    /// Any bad row is an error naming its line.
    #[arg(long)]
    input: PathBuf,
    /// JSON Lines output, one line per input row, in order.
    #[arg(long)]
    output: PathBuf,
    /// Texts per forward pass (default: the run's train.batch_size). Texts of similar length
    /// are batched together; the output keeps the input's order.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: Option<u32>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Multiply by the encoder's weights in bf16 (f32 sums) on the CPU's AMX tiles, or its
    /// AVX-512 BF16 where that outruns f32 (AMD Zen 4): ≈ 1.7× the throughput on AMX, at
    /// bf16's precision (BENCHMARKS.md measures the effect on the metrics). Elsewhere the
    /// products stay f32.
    #[arg(long)]
    bf16_products: bool,
}

pub fn run(args: PredictArgs) -> Result<()> {
    let device = encoder::parse_device(&args.device)?;
    let options = trainer::InferenceOptions {
        model_folder: args.model,
        products: crate::product_precision(args.bf16_products),
        progress: true,
        batch_size: args.batch_size.map(|n| n as usize),
    };
    let n = trainer::predict_file(
        &args.run,
        &args.checkpoint,
        &args.input,
        &args.output,
        &device,
        &options,
    )?;
    eprintln!("{n} predictions written to {}", args.output.display());
    Ok(())
}
