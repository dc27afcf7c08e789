//! `cli export`: a run's best model as a Hugging Face folder.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The run folder.
    #[arg(long)]
    run: PathBuf,
    /// Output folder: config.json, model.safetensors, tokenizer.json, heads.safetensors.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: ExportArgs) -> Result<()> {
    trainer::export_run(&args.run, &args.out, &burn::tensor::Device::flex())?;
    println!("{}", args.out.display());
    Ok(())
}
