//! `cli predict`: scores, classes and probabilities for JSON Lines texts.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The run folder (its best checkpoint is used, LoRA merged).
    #[arg(long)]
    run: PathBuf,
    /// JSON Lines with "text" (and "target" when the run used text+target pairs).
    #[arg(long)]
    input: PathBuf,
    /// JSON Lines output, one line per input line, in order.
    #[arg(long)]
    output: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: PredictArgs) -> Result<()> {
    let device = encoder::parse_device(&args.device)?;
    let n = trainer::predict_file(&args.run, &args.input, &args.output, &device)?;
    eprintln!("{n} predictions written to {}", args.output.display());
    Ok(())
}
