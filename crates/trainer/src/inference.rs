//! Inference with a trained model: validation metrics over a tokenized set, predictions for
//! texts in a file.

use std::path::{Path, PathBuf};

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};
use data::TokenizedSet;
use encoder::{pad_batch, Encoded, ProductPrecision};
use serde::Serialize;

use crate::config::InputMode;
use crate::model::{run_config, SentimentModel};
use crate::progress::RowsProgress;
use crate::train::{RunData, TrainError};
use crate::{ValidationAccumulator, ValidationMetrics, NUM_CLASSES};

/// How [`crate::evaluate_run`] and [`predict_file`] open and run a finished run.
#[derive(Debug, Clone, Default)]
pub struct InferenceOptions {
    /// Where the model folder the run was trained from lies now, if not where the run's
    /// `config.toml` says ([`SentimentModel::from_run`]).
    pub model_folder: Option<PathBuf>,
    /// The precision of the encoder's weight products on the CPU.
    pub products: ProductPrecision,
    /// A progress bar over the rows ([`RowsProgress`]).
    pub progress: bool,
}

/// The model's outputs for some rows, in row order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Predictions {
    /// `S`, one per row.
    pub scores: Vec<f32>,
    /// `C`, `NUM_CLASSES` per row, row-major.
    pub logits: Vec<f32>,
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, TrainError> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| TrainError::Input(format!("cannot read a tensor back: {e:?}")))
}

/// Runs `model` (an inference copy: `model.valid()` or built on a plain device) over every
/// row of `set` in order, `batch_size` rows at a time, and computes the validation metrics;
/// `progress` advances by each batch's rows.
pub fn evaluate_set(
    model: &SentimentModel,
    set: &TokenizedSet,
    batch_size: usize,
    pad_id: u32,
    device: &Device,
    progress: &RowsProgress,
) -> Result<(ValidationMetrics, Predictions), TrainError> {
    let mut accumulator = ValidationAccumulator::new();
    let mut predictions = Predictions::default();
    let rows: Vec<usize> = (0..set.len()).collect();
    for chunk in rows.chunks(batch_size.max(1)) {
        let batch = set.batch(chunk, pad_id, device);
        let out = model.forward(batch.input, None);
        let scores = to_vec(out.scores)?;
        let logits = to_vec(out.logits)?;
        let score_true: Vec<f32> = chunk.iter().map(|&r| set.scores[r]).collect();
        let class_true: Vec<usize> = chunk.iter().map(|&r| usize::from(set.classes[r])).collect();
        accumulator.push(&score_true, &scores, &class_true, &logits)?;
        predictions.scores.extend(scores);
        predictions.logits.extend(logits);
        progress.advance(chunk.len());
    }
    Ok((accumulator.finish()?, predictions))
}

/// One line of `predict`'s output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The regression head's polarity score.
    pub score: f32,
    /// The argmax of the classification head (0 very negative … 4 very positive).
    pub class: usize,
    /// Softmax of the classification logits.
    pub probabilities: Vec<f32>,
}

/// Reads `input` (JSON Lines, CSV or TSV with the run's text field, and its target field when
/// the run used text pairs: [`data::load_texts`]), runs the run's best model and writes one
/// JSON line per row, in order, to `output`. The whole input is read and checked before the
/// model is loaded.
pub fn predict_file(
    run: &Path,
    input: &Path,
    output: &Path,
    device: &Device,
    options: &InferenceOptions,
) -> Result<usize, TrainError> {
    let config = run_config(run, options.model_folder.as_deref())?;
    let pairs = config.data.input == InputMode::TextTarget;
    // The run's own field names; any bad row is an error (one output line per row).
    let rows = data::load_texts(input, &config.data_config().load_options())?;
    let tokenizer = RunData::tokenizer(&config)?;
    let mut model = SentimentModel::from_checkpoint(&config, run, "best", device)?;
    model.encoder.set_product_precision(options.products);
    let progress = RowsProgress::new(options.progress, rows.len(), "predict");
    let mut lines = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(config.train.batch_size.max(1)) {
        let encoded: Vec<Encoded> = chunk
            .iter()
            .map(|row| {
                let target = if pairs { row.target.as_deref() } else { None };
                tokenizer.encode(&row.text, target).map_err(|e| {
                    TrainError::Input(format!("{}: line {}: {e}", input.display(), row.line))
                })
            })
            .collect::<Result<_, _>>()?;
        let refs: Vec<&Encoded> = encoded.iter().collect();
        let out = model.forward(pad_batch(&refs, tokenizer.pad_id(), device), None);
        let scores = to_vec(out.scores)?;
        let probabilities = to_vec(softmax(out.logits, 1))?;
        for (i, row) in chunk.iter().enumerate() {
            let p = probabilities[i * NUM_CLASSES..(i + 1) * NUM_CLASSES].to_vec();
            let class = p
                .iter()
                .enumerate()
                .fold(0, |best, (k, &v)| if v > p[best] { k } else { best });
            let prediction = Prediction {
                text: row.text.clone(),
                target: if pairs { row.target.clone() } else { None },
                score: scores[i],
                class,
                probabilities: p,
            };
            lines.push(serde_json::to_string(&prediction).expect("serialises"));
        }
        progress.advance(chunk.len());
    }
    let mut text = lines.join("\n");
    text.push('\n');
    // Through a temporary file: a failed run leaves no partial output.
    crate::write_atomic(output, text.as_bytes()).map_err(|error| TrainError::Io {
        path: output.to_path_buf(),
        error,
    })?;
    Ok(lines.len())
}
