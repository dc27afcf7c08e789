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
    /// The run whose seconds/epoch the comparison's times are relative to (default: the first).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// The metric that picks each run's best epoch.
    #[arg(long, default_value = "mse")]
    by: String,
    /// Where the comparison goes (default: comparison/ in the working directory).
    #[arg(long, default_value = "comparison")]
    out: PathBuf,
}

pub fn run(args: ReportArgs) -> Result<()> {
    if let Some(run) = &args.run {
        let files = trainer::write_report(run)?;
        println!("{}", files.markdown.display());
        return Ok(());
    }
    if args.compare.is_empty() {
        bail!("give --run RUN_DIR or --compare RUN_DIR...");
    }
    let by: trainer::Metric = trainer::Metric::ALL
        .into_iter()
        .find(|m| m.name() == args.by)
        .ok_or_else(|| anyhow::anyhow!("--by `{}`: not a metric", args.by))?;
    let reference = args.reference.unwrap_or_else(|| args.compare[0].clone());
    let comparison = trainer::compare(&args.compare, &reference, by)?;
    println!("{}", comparison.to_markdown());
    let files = comparison.write(&args.out)?;
    println!("{}", files.markdown.display());
    Ok(())
}
