//! `cli export`: a run's best (or last) model as a Hugging Face folder.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The run folder.
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
    /// Output folder: config.json, model.safetensors (LoRA merged), heads.safetensors, and the
    /// tokenizer files set to cut texts at the run's model.max_len, as the run did
    /// (tokenizer.json, tokenizer_config.json's model_max_length).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: ExportArgs) -> Result<()> {
    trainer::export_run(
        &args.run,
        &args.checkpoint,
        args.model.as_deref(),
        &args.out,
        &burn::tensor::Device::flex(),
    )?;
    println!("{}", args.out.display());
    Ok(())
}
