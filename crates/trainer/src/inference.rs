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
    /// Rows per forward pass; `None`: the run's `train.batch_size`.
    pub batch_size: Option<usize>,
}

impl InferenceOptions {
    /// [`Self::batch_size`], or the run's own.
    pub(crate) fn batch_size(&self, config: &crate::RunConfig) -> usize {
        self.batch_size.unwrap_or(config.train.batch_size)
    }
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

/// Rows of [`in_length_order`]'s window: `batch_size` times this. A window's outputs wait for
/// its last batch, so this bounds what is held back.
const WINDOW_BATCHES: usize = 64;

/// Runs `batch` over every row (`lengths[row]`: its token count), `batch_size` rows at a time,
/// and hands `emit` each row's output in row order. The rows of each window of 64 batches run
/// longest first, sorted by length, so that a batch pads its rows to lengths near their own
/// instead of to the longest of its neighbours in the file (the time of a batch grows with its
/// padded length, its attention with the square). A row's outputs depend on the rows beside it
/// only by float rounding (≈ 2·10⁻⁷ on the tiny test model, tested), as they did in file
/// order. `batch` gets the rows of one batch and returns one output each.
pub fn in_length_order<T, E>(
    lengths: &[usize],
    batch_size: usize,
    mut batch: impl FnMut(&[usize]) -> Result<Vec<T>, E>,
    mut emit: impl FnMut(T) -> Result<(), E>,
) -> Result<(), E> {
    let batch_size = batch_size.max(1);
    let window = batch_size * WINDOW_BATCHES;
    for start in (0..lengths.len()).step_by(window) {
        let rows = start..lengths.len().min(start + window);
        let mut order: Vec<usize> = rows.clone().collect();
        // Stable: rows of one length keep their order.
        order.sort_by_key(|&row| std::cmp::Reverse(lengths[row]));
        let mut outputs: Vec<Option<T>> = rows.map(|_| None).collect();
        for chunk in order.chunks(batch_size) {
            let values = batch(chunk)?;
            assert_eq!(values.len(), chunk.len(), "one output per row of a batch");
            for (&row, value) in chunk.iter().zip(values) {
                outputs[row - start] = Some(value);
            }
        }
        for value in outputs {
            emit(value.expect("every row of the window ran"))?;
        }
    }
    Ok(())
}

/// Runs `model` (an inference copy: `model.valid()` or built on a plain device) over every
/// row of `set`, `batch_size` rows at a time ([`in_length_order`]), and computes the validation
/// metrics; the predictions are in row order. `progress` advances by each batch's rows.
pub fn evaluate_set(
    model: &SentimentModel,
    set: &TokenizedSet,
    batch_size: usize,
    pad_id: u32,
    device: &Device,
    progress: &RowsProgress,
) -> Result<(ValidationMetrics, Predictions), TrainError> {
    let mut predictions = Predictions::default();
    in_length_order(
        &set.lengths(),
        batch_size,
        |rows| {
            let batch = set.batch(rows, pad_id, device);
            let out = model.forward(batch.input, None);
            let scores = to_vec(out.scores)?;
            let logits = to_vec(out.logits)?;
            progress.advance(rows.len());
            Ok(scores
                .into_iter()
                .zip(logits.chunks_exact(NUM_CLASSES).map(<[f32]>::to_vec))
                .collect())
        },
        |(score, logits)| {
            predictions.scores.push(score);
            predictions.logits.extend(logits);
            Ok::<_, TrainError>(())
        },
    )?;
    let classes: Vec<usize> = set.classes.iter().map(|&c| usize::from(c)).collect();
    let mut accumulator = ValidationAccumulator::new();
    accumulator.push(
        &set.scores,
        &predictions.scores,
        &classes,
        &predictions.logits,
    )?;
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
    /// The class's name ([`data::CLASS_NAMES`]).
    pub label: &'static str,
    /// Softmax of the classification logits.
    pub probabilities: Vec<f32>,
}

/// The file an output named `output` is written to, checked before any work: a symbolic link
/// is followed (its target gets the new contents, the link stays); an existing folder, pipe
/// or device is refused (the output is written under a temporary name and renamed over it);
/// and so is any of `inputs` itself, which the output would replace.
///
/// # Errors
/// [`TrainError::Input`] naming the output and what to do.
pub fn output_file(output: &Path, inputs: &[&Path]) -> Result<PathBuf, TrainError> {
    let mut target = output.to_path_buf();
    // A chain of links, bounded as the kernel bounds it.
    for _ in 0..40 {
        match std::fs::read_link(&target) {
            Ok(link) => {
                target = target
                    .parent()
                    .map_or_else(|| link.clone(), |parent| parent.join(&link));
            }
            Err(_) => break,
        }
    }
    let refuse = |why: &str| {
        Err(TrainError::Input(format!(
            "output {} {why}; give the path of a new or regular file (nothing was written)",
            output.display()
        )))
    };
    match std::fs::metadata(&target) {
        Ok(meta) if !meta.is_file() => {
            return refuse(if meta.is_dir() {
                "is a folder"
            } else {
                "is not a regular file (a pipe or a device)"
            })
        }
        Ok(_) => {
            if let Some(input) = inputs.iter().find(|input| crate::same_path(input, &target)) {
                return refuse(&format!("is the input {}", input.display()));
            }
        }
        Err(_) => {}
    }
    Ok(target)
}

/// Reads `input` (JSON Lines, CSV or TSV with the run's text field, and its target field when
/// the run used text pairs: [`data::load_texts`]), runs the model of the run's
/// `checkpoints/<which>` (`best` or `last`) and writes one JSON line per row, in order, to
/// `output`. The whole input is read and checked before the model is loaded.
pub fn predict_file(
    run: &Path,
    which: &str,
    input: &Path,
    output: &Path,
    device: &Device,
    options: &InferenceOptions,
) -> Result<usize, TrainError> {
    let output = &output_file(output, &[input])?;
    let config = run_config(run, options.model_folder.as_deref())?;
    let pairs = config.data.input == InputMode::TextTarget;
    // The run's own field names; any bad row is an error (one output line per row).
    let rows = data::load_texts(input, &config.data_config().load_options())?;
    let tokenizer = RunData::tokenizer(&config)?;
    let encoded: Vec<Encoded> = rows
        .iter()
        .map(|row| {
            let target = if pairs { row.target.as_deref() } else { None };
            tokenizer.encode(&row.text, target).map_err(|e| {
                TrainError::Input(format!("{}: line {}: {e}", input.display(), row.line))
            })
        })
        .collect::<Result<_, _>>()?;
    let mut model = SentimentModel::from_checkpoint(&config, run, which, device)?;
    model.encoder.set_product_precision(options.products);
    let progress = RowsProgress::new(options.progress, rows.len(), "predict");
    let lengths: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
    let mut lines = Vec::with_capacity(rows.len());
    in_length_order(
        &lengths,
        options.batch_size(&config),
        |chunk| {
            let refs: Vec<&Encoded> = chunk.iter().map(|&i| &encoded[i]).collect();
            let out = model.forward(pad_batch(&refs, tokenizer.pad_id(), device), None);
            let scores = to_vec(out.scores)?;
            let probabilities = to_vec(softmax(out.logits, 1))?;
            progress.advance(chunk.len());
            Ok(chunk
                .iter()
                .zip(scores)
                .zip(probabilities.chunks_exact(NUM_CLASSES))
                .map(|((&i, score), p)| (i, score, p.to_vec()))
                .collect())
        },
        |(i, score, p)| {
            let class = p
                .iter()
                .enumerate()
                .fold(0, |best, (k, &v)| if v > p[best] { k } else { best });
            let prediction = Prediction {
                text: rows[i].text.clone(),
                target: if pairs { rows[i].target.clone() } else { None },
                score,
                class,
                label: data::CLASS_NAMES[class],
                probabilities: p,
            };
            lines.push(serde_json::to_string(&prediction).expect("serialises"));
            Ok::<_, TrainError>(())
        },
    )?;
    let mut text = lines.join("\n");
    text.push('\n');
    // Through a temporary file: a failed run leaves no partial output.
    crate::write_atomic(output, text.as_bytes()).map_err(|error| TrainError::Io {
        path: output.to_path_buf(),
        error,
    })?;
    Ok(lines.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_run_longest_first_within_windows_and_come_back_in_order() {
        // Two windows (192 rows, then 8) of batches of 3; lengths 1..=17 in a scrambled order.
        let lengths: Vec<usize> = (0..200).map(|i| 1 + (i * 7919) % 17).collect();
        let window = 3 * WINDOW_BATCHES;
        let mut batches = Vec::new();
        let mut emitted = Vec::new();
        in_length_order(
            &lengths,
            3,
            |rows| {
                batches.push(rows.to_vec());
                Ok::<_, ()>(rows.iter().map(|&row| row * 10).collect())
            },
            |value| {
                emitted.push(value);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(emitted, (0..200).map(|row| row * 10).collect::<Vec<_>>());
        assert_eq!(batches.len(), window / 3 + 3);
        let mut seen: Vec<usize> = batches.concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
        for pair in batches.concat().windows(2) {
            let same_window = pair[0] / window == pair[1] / window;
            if same_window {
                // Longest first; rows of one length in file order.
                let (a, b) = (lengths[pair[0]], lengths[pair[1]]);
                assert!(a > b || (a == b && pair[0] < pair[1]), "{pair:?}");
            } else {
                assert!(pair[0] < window && pair[1] >= window, "{pair:?}");
            }
        }
        // Padding: each batch's longest row against the mean of the rows', sorted and not.
        let padded = |batches: &[Vec<usize>]| -> usize {
            batches
                .iter()
                .map(|b| b.len() * b.iter().map(|&r| lengths[r]).max().unwrap())
                .sum()
        };
        let in_file_order: Vec<Vec<usize>> = (0..200)
            .collect::<Vec<_>>()
            .chunks(3)
            .map(<[usize]>::to_vec)
            .collect();
        assert!(padded(&batches) < padded(&in_file_order) * 3 / 4);
    }

    #[test]
    fn a_failed_batch_stops_the_run_and_its_window_emits_nothing() {
        let lengths = vec![5; 10];
        let mut emitted = 0;
        let mut calls = 0;
        let result = in_length_order(
            &lengths,
            4,
            |rows| {
                calls += 1;
                if calls == 2 {
                    Err("batch 2")
                } else {
                    Ok(rows.to_vec())
                }
            },
            |_| {
                emitted += 1;
                Ok(())
            },
        );
        assert_eq!(result, Err("batch 2"));
        assert_eq!((calls, emitted), (2, 0));
        // A batch size of 0 is taken as 1.
        let mut sizes = Vec::new();
        in_length_order(
            &[1, 2],
            0,
            |rows| {
                sizes.push(rows.len());
                Ok::<_, ()>(rows.to_vec())
            },
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!(sizes, [1, 1]);
    }
}
