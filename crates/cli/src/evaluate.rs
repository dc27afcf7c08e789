//! `cli evaluate`: validation metrics of a run's best (or last) checkpoint.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct EvaluateArgs {
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
    /// Rows to evaluate on (default: the run's validation rows).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print one JSON object (mse, mae, rmse, r2, accuracy, precision, recall, f1, n).
    #[arg(long)]
    json: bool,
    /// Rows per forward pass (default: the run's train.batch_size); rows of similar length are
    /// batched together.
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

pub fn run(args: EvaluateArgs) -> Result<()> {
    let device = encoder::parse_device(&args.device)?;
    let options = trainer::InferenceOptions {
        model_folder: args.model,
        products: crate::product_precision(args.bf16_products),
        progress: true,
        batch_size: args.batch_size.map(|n| n as usize),
    };
    let m = trainer::evaluate_run(
        &args.run,
        &args.checkpoint,
        args.data.as_deref(),
        &device,
        &options,
    )?;
    if args.json {
        let value = serde_json::json!({
            "mse": m.mse, "mae": m.mae, "rmse": m.rmse, "r2": m.r2,
            "accuracy": m.accuracy, "precision": m.precision, "recall": m.recall,
            "f1": m.f1, "n": m.n,
        });
        println!("{value}");
    } else {
        println!(
            "n {}\nmse {:.6}\nmae {:.6}\nrmse {:.6}\nr2 {:.6}\naccuracy {:.6}\nprecision {:.6}\n\
             recall {:.6}\nf1 {:.6}",
            m.n, m.mse, m.mae, m.rmse, m.r2, m.accuracy, m.precision, m.recall, m.f1
        );
        println!("confusion (rows: true class 0..4, columns: predicted):");
        for row in &m.confusion {
            println!("{row:?}");
        }
    }
    Ok(())
}
