//! `cli train`: one fine-tuning run from a config file.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use trainer::{RunConfig, RunDir, TrainOptions};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Run configuration (TOML, see configs/). With --resume and no --config, the run
    /// folder's config.toml is used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a key, e.g. --set train.lr=2e-5 (repeatable, applied in order).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Run folder (default: runs/<config file stem>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// cpu, cuda or cuda:N; several, comma-separated (cuda:0,cuda:1), train data-parallel
    /// (same as --set train.device=...).
    #[arg(long)]
    device: Option<String>,
    /// Continue from the run folder's checkpoints/last.
    #[arg(long)]
    resume: bool,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let mut overrides = args.overrides;
    if let Some(device) = &args.device {
        overrides.push(format!("train.device={device}"));
    }
    let (config_file, out) = match (&args.config, &args.out) {
        (Some(file), out) => {
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into());
            let out = out
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs").join(stem));
            (file.clone(), out)
        }
        (None, Some(out)) if args.resume => {
            let file = out.join(RunDir::CONFIG);
            if !file.is_file() {
                bail!(
                    "--resume: {} is not a run folder (no {}); give the --out of an earlier run",
                    out.display(),
                    RunDir::CONFIG
                );
            }
            (file, out.clone())
        }
        _ => bail!("--config FILE is required (or --resume --out RUN_DIR)"),
    };
    let config = RunConfig::load(Some(&config_file), &overrides)?;
    let options = TrainOptions {
        resume: args.resume,
        progress: true,
        stop_after_steps: None,
    };
    let summary = trainer::train(&config, &out, &options)?;
    println!("{}", summary.text(config.train.best_metric));
    Ok(())
}
