//! `cli report`: a run's report.md and plots, or the comparison of several runs.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// One run folder: writes its report.md and plots.
    #[arg(long, conflicts_with = "compare")]
    run: Option<PathBuf>,
    /// Several run folders: the paper-style comparison.
    #[arg(long, num_args = 1..)]
    compare: Vec<PathBuf>,
    /// With --compare: the run whose seconds/epoch the comparison's times are relative to
    /// (default: the first).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// With --compare: the metric that picks each run's best epoch: mse, mae, rmse, r2,
    /// accuracy, precision, recall, f1 (default: each run's own train.best_metric, the epoch
    /// `evaluate` and `report --run` show).
    #[arg(long)]
    by: Option<String>,
    /// With --compare: the folder the comparison goes to (default: comparison).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> Result<()> {
    if let Some(run) = &args.run {
        if args.reference.is_some() || args.by.is_some() || args.out.is_some() {
            bail!(
                "--reference, --by and --out go with --compare; a run's report is written into \
                 its folder"
            );
        }
        let files = trainer::write_report(run)?;
        println!("{}", files.markdown.display());
        return Ok(());
    }
    if args.compare.is_empty() {
        bail!("give --run RUN_DIR or --compare RUN_DIR...");
    }
    let by = args
        .by
        .as_deref()
        .map(|name| {
            trainer::Metric::ALL
                .into_iter()
                .find(|m| m.name() == name)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--by `{name}`: not a metric (mse, mae, rmse, r2, accuracy, precision, \
                         recall, f1)"
                    )
                })
        })
        .transpose()?;
    let reference = args.reference.unwrap_or_else(|| args.compare[0].clone());
    let comparison = trainer::compare(&args.compare, &reference, by)?;
    println!("{}", comparison.to_markdown());
    let files = comparison.write(args.out.as_deref().unwrap_or("comparison".as_ref()))?;
    println!("{}", files.markdown.display());
    Ok(())
}
