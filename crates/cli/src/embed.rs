//! `cli embed`: H for every input line, so anyone can compare our encoder with another
//! implementation.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use encoder::{pad_batch, parse_device, Encoded, ModelFolder, TextTokenizer};

#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Model folder: Hugging Face (config.json, weights, tokenizer.json) or imported.
    #[arg(long)]
    model: PathBuf,
    /// Weights file to use when the folder has several.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Texts: JSON Lines with a "text" field, or CSV or TSV with a "text" column.
    #[arg(long)]
    input: PathBuf,
    /// JSON Lines output: one {"embedding": [...]} per input row, in order.
    #[arg(long)]
    output: PathBuf,
    /// Truncation length in tokens (default: what the model allows, capped by
    /// tokenizer_config.json's model_max_length as transformers cuts, at 512 without one: an
    /// exported run's folder cuts where the run did).
    #[arg(long)]
    max_len: Option<usize>,
    /// Texts per forward pass (texts of similar length are batched together; the output keeps
    /// the input's order).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Multiply by the encoder's weights in bf16 (f32 sums) on the CPU's AMX tiles, or its
    /// AVX-512 BF16 where that outruns f32 (AMD Zen 4): ≈ 1.8× the throughput on AMX, at
    /// bf16's precision; f32 otherwise.
    #[arg(long)]
    bf16_products: bool,
}

pub fn run(args: EmbedArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let output = trainer::output_file(&args.output, &[&args.input])?;
    let device = parse_device(&args.device)?;
    if args.model.join("config.toml").is_file() && !args.model.join("config.json").exists() {
        bail!(
            "{} is a run folder, not a model folder: `cli export --run {0} --out DIR` writes \
             its fine-tuned encoder as a model folder to embed with",
            args.model.display()
        );
    }
    let folder = ModelFolder::open(&args.model, args.weights.as_deref())?;
    let max_len = args.max_len.unwrap_or_else(|| folder.default_max_len());
    crate::check_max_len(args.max_len, &folder)?;
    let tokenizer = TextTokenizer::from_file(&folder.tokenizer, &folder.config, max_len)?;
    // Any bad row is an error naming its line: each row is one line of output.
    let rows = data::load_texts(&args.input, &data::LoadOptions::default())?
        .iter()
        .map(|row| {
            tokenizer
                .encode(&row.text, None)
                .with_context(|| format!("{}: line {}", args.input.display(), row.line))
        })
        .collect::<Result<Vec<Encoded>>>()?;
    let mut model = folder.load_encoder(&device)?;
    model.set_product_precision(crate::product_precision(args.bf16_products));

    // Written under a temporary name and renamed at the end: a failed run leaves no partial
    // output, and the earlier file whole.
    trainer::replace_file(
        &output,
        |tmp| write_embeddings(&model, &rows, &tokenizer, &args, &device, (tmp, &output)),
        |error| anyhow::Error::new(error).context(format!("cannot write {}", output.display())),
    )?;
    eprintln!(
        "wrote {} embeddings to {}",
        rows.len(),
        args.output.display()
    );
    Ok(())
}

/// Runs the encoder over `rows` and writes one JSON line of H per row, in input order, to
/// `path` (the temporary name of `output`, which errors name).
fn write_embeddings(
    model: &encoder::Encoder,
    rows: &[Encoded],
    tokenizer: &TextTokenizer,
    args: &EmbedArgs,
    device: &burn::tensor::Device,
    (path, output): (&std::path::Path, &std::path::Path),
) -> Result<()> {
    let in_file = || format!("cannot write {}", output.display());
    let mut out = BufWriter::new(File::create(path).with_context(in_file)?);
    let progress = trainer::RowsProgress::new(true, rows.len(), "embed");
    let lengths: Vec<usize> = rows.iter().map(|row| row.ids.len()).collect();
    trainer::in_length_order(
        &lengths,
        args.batch_size,
        |chunk| {
            let refs: Vec<&Encoded> = chunk.iter().map(|&i| &rows[i]).collect();
            let h = model.first_token(pad_batch(&refs, tokenizer.pad_id(), device));
            let [_, hidden] = h.dims();
            let values = h
                .into_data()
                .try_into_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("reading embeddings back: {e:?}"))?;
            progress.advance(chunk.len());
            Ok(values.chunks_exact(hidden).map(<[f32]>::to_vec).collect())
        },
        |embedding| {
            serde_json::to_writer(&mut out, &serde_json::json!({ "embedding": embedding }))
                .with_context(in_file)?;
            out.write_all(b"\n").with_context(in_file)?;
            Ok::<_, anyhow::Error>(())
        },
    )?;
    drop(progress);
    out.flush().with_context(in_file)?;
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|file| file.sync_all())
        .with_context(in_file)
}
