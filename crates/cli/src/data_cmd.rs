//! `cli data stats`: what a data file holds (rows, rejected rows, scores, classes, token
//! lengths) before training on it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use data::{
    load, BadRowPolicy, DataConfig, DatasetStats, InputMode, LengthStats, LoadOptions, TokenizedSet,
};
use encoder::{ModelFolder, TextTokenizer};

#[derive(Debug, Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Rows, rejected rows, score mean/std/min/max, class counts and (with --model) token
    /// length percentiles of a JSON Lines, CSV or TSV file.
    Stats(StatsArgs),
}

#[derive(Debug, Args)]
struct StatsArgs {
    /// The data file (.jsonl, .csv or .tsv).
    #[arg(long)]
    data: PathBuf,
    /// Model folder whose tokenizer measures token lengths.
    #[arg(long)]
    model: Option<PathBuf>,
    /// error: stop at the first bad row; skip: keep the good rows and write the bad lines
    /// beside the input as <stem>.rejected.jsonl (.csv, .tsv for those inputs; .jsonl for
    /// .ndjson and .json, .tsv for .tab).
    #[arg(long, default_value = "error", value_parser = parse_policy)]
    on_bad_row: BadRowPolicy,
    /// text, or text+target (a sentence pair; every row then needs a target).
    #[arg(long, default_value = "text", value_parser = parse_input)]
    input: InputMode,
    /// Truncation length in tokens (default: what the model allows, capped by
    /// tokenizer_config.json's model_max_length, at 512 without one).
    #[arg(long)]
    max_len: Option<usize>,
    /// The text's field (JSON Lines) or column (CSV, TSV).
    #[arg(long, default_value = "text")]
    text_field: String,
    /// The score's field or column (a number in [-1, 1]).
    #[arg(long, default_value = "score")]
    score_field: String,
    /// The target's field or column (an entity the score is about; optional per row unless
    /// --input text+target).
    #[arg(long, default_value = "target")]
    target_field: String,
}

fn parse_policy(value: &str) -> Result<BadRowPolicy, String> {
    BadRowPolicy::parse(value).ok_or_else(|| format!("`{value}`: expected error or skip"))
}

fn parse_input(value: &str) -> Result<InputMode, String> {
    InputMode::parse(value).ok_or_else(|| format!("`{value}`: expected text or text+target"))
}

pub fn run(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Stats(args) => stats(args),
    }
}

fn stats(args: StatsArgs) -> Result<()> {
    let config = DataConfig {
        train: args.data.clone(),
        input: args.input,
        on_bad_row: args.on_bad_row,
        text_field: args.text_field,
        score_field: args.score_field,
        target_field: args.target_field,
        ..DataConfig::default()
    };
    config.validate()?;
    let options = LoadOptions {
        rejected_dir: None,
        ..config.load_options()
    };
    // Open the model first: a wrong --model path fails before a long load.
    let tokenizer = match &args.model {
        Some(dir) => {
            let folder = ModelFolder::open(dir, None)?;
            let max_len = args.max_len.unwrap_or_else(|| folder.default_max_len());
            crate::check_max_len(args.max_len, &folder)?;
            Some(TextTokenizer::from_file(
                &folder.tokenizer,
                &folder.config,
                max_len,
            )?)
        }
        None => None,
    };
    let dataset = load(&args.data, &options)?;
    let stats = DatasetStats::of(&dataset);

    println!("file          {}", args.data.display());
    println!("rows          {}", stats.rows);
    match &dataset.rejected_file {
        Some(file) => println!(
            "rejected      {} (written to {})",
            stats.rejected,
            file.display()
        ),
        None => println!("rejected      0"),
    }
    println!("unique texts  {}", stats.unique_texts);
    println!("with target   {}", stats.rows_with_target);
    println!(
        "score         mean {:.4}  std {:.4}  min {:.3}  max {:.3}",
        stats.score_mean, stats.score_std, stats.score_min, stats.score_max
    );
    let total = stats.rows.max(1) as f64;
    println!("classes       0: y < -0.5 · 1: [-0.5, -0.049) · 2: [-0.049, 0.049] · 3: (0.049, 0.5] · 4: y > 0.5");
    for (class, count) in stats.class_counts.iter().enumerate() {
        println!(
            "  class {class} {:<13} {count:>7}  ({:.1}%)",
            data::CLASS_NAMES[class],
            100.0 * *count as f64 / total
        );
    }
    if let Some(tokenizer) = tokenizer {
        let set = TokenizedSet::new(&dataset, &tokenizer, args.input, None)
            .context("tokenizing the rows")?;
        if let Some(lengths) = LengthStats::of(&set.lengths(), tokenizer.max_len()) {
            println!(
                "tokens ({})  mean {:.1}  p50 {}  p90 {}  p95 {}  p99 {}  max {}  truncated at {}: {}",
                match args.input {
                    InputMode::Text => "text",
                    InputMode::TextTarget => "text+target",
                },
                lengths.mean,
                lengths.p50,
                lengths.p90,
                lengths.p95,
                lengths.p99,
                lengths.max,
                tokenizer.max_len(),
                lengths.truncated
            );
        }
    }
    Ok(())
}
