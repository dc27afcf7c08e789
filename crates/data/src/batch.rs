//! Batches of a tokenized set as burn tensors, in an order that is a pure function of
//! (seed, epoch), so an interrupted run can resume at any batch of any epoch.

use burn::tensor::{Device, Int, Tensor, TensorData};
use encoder::{pad_batch, Encoded, EncoderInput};

use crate::rng::SplitMix64;
use crate::tokenize::TokenizedSet;

/// How an epoch is cut into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    pub batch_size: usize,
    /// Shuffle rows (and, when bucketing, batches) every epoch.
    pub shuffle: bool,
    /// Length bucketing: sort rows by length within windows of this many batches, after the
    /// shuffle, so each batch pads little. `None` = off.
    pub bucket_window: Option<usize>,
    pub seed: u64,
}

impl BatchOptions {
    /// The options of a data config for a given batch size.
    pub fn from_config(config: &crate::DataConfig, batch_size: usize) -> Self {
        Self {
            batch_size,
            shuffle: config.shuffle,
            bucket_window: config.bucket.then_some(config.bucket_window),
            seed: config.seed,
        }
    }
}

/// The rows of every batch of `epoch`, given each row's token count. The last batch may be
/// smaller. Deterministic in (`lengths`, `options`, `epoch`).
pub fn epoch_plan(lengths: &[usize], options: &BatchOptions, epoch: u64) -> Vec<Vec<usize>> {
    let batch_size = options.batch_size.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    let mut rng = SplitMix64::derived(options.seed, epoch);
    if options.shuffle {
        rng.shuffle(&mut order);
    }
    if let Some(window) = options.bucket_window {
        for chunk in order.chunks_mut(window.max(1) * batch_size) {
            // Stable: equal lengths keep their shuffled order.
            chunk.sort_by_key(|&row| lengths[row]);
        }
    }
    let mut batches: Vec<Vec<usize>> = order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    if options.shuffle && options.bucket_window.is_some() {
        // Otherwise every window would run from short to long batches.
        rng.shuffle(&mut batches);
    }
    batches
}

/// One batch on a device.
///
/// # Shapes
/// - `input.input_ids`, `input.attention_mask`, `input.token_type_ids`: `[batch, longest]`,
///   padded to the longest row of this batch only.
/// - `scores`: `[batch]` (f32), `classes`: `[batch]` (Int).
#[derive(Debug, Clone)]
pub struct Batch {
    pub input: EncoderInput,
    pub scores: Tensor<1>,
    pub classes: Tensor<1, Int>,
    /// The rows of the tokenized set in this batch, in order.
    pub rows: Vec<usize>,
}

impl TokenizedSet {
    /// The batch made of `rows`.
    pub fn batch(&self, rows: &[usize], pad_id: u32, device: &Device) -> Batch {
        let encoded: Vec<&Encoded> = rows.iter().map(|&r| &self.rows[r]).collect();
        let n = rows.len();
        let scores: Vec<f32> = rows.iter().map(|&r| self.scores[r]).collect();
        let classes: Vec<i64> = rows.iter().map(|&r| i64::from(self.classes[r])).collect();
        Batch {
            input: pad_batch(&encoded, pad_id, device),
            scores: Tensor::<1>::from_data(TensorData::new(scores, [n]), device),
            classes: Tensor::<1, Int>::from_data(TensorData::new(classes, [n]), device),
            rows: rows.to_vec(),
        }
    }

    /// The batches of `epoch`, built lazily.
    pub fn epoch(
        &self,
        options: &BatchOptions,
        epoch: u64,
        pad_id: u32,
        device: &Device,
    ) -> EpochBatches<'_> {
        EpochBatches {
            set: self,
            plan: epoch_plan(&self.lengths(), options, epoch),
            next: 0,
            pad_id,
            device: device.clone(),
        }
    }
}

/// The batches of one epoch; [`EpochBatches::resume_at`] (or `nth`/`skip`) jumps ahead
/// without building the skipped batches.
#[derive(Debug, Clone)]
pub struct EpochBatches<'a> {
    set: &'a TokenizedSet,
    plan: Vec<Vec<usize>>,
    next: usize,
    pad_id: u32,
    device: Device,
}

impl EpochBatches<'_> {
    /// Starts at batch `index` (0-based) of the epoch.
    pub fn resume_at(mut self, index: usize) -> Self {
        self.next = index.min(self.plan.len());
        self
    }

    /// The rows of every batch of the epoch.
    pub fn plan(&self) -> &[Vec<usize>] {
        &self.plan
    }
}

impl Iterator for EpochBatches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let rows = self.plan.get(self.next)?;
        self.next += 1;
        Some(self.set.batch(rows, self.pad_id, &self.device))
    }

    fn nth(&mut self, n: usize) -> Option<Batch> {
        self.next = self.next.saturating_add(n).min(self.plan.len());
        self.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.plan.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for EpochBatches<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(shuffle: bool, bucket: Option<usize>) -> BatchOptions {
        BatchOptions {
            batch_size: 4,
            shuffle,
            bucket_window: bucket,
            seed: 42,
        }
    }

    fn lengths() -> Vec<usize> {
        (0..50).map(|i| 3 + (i * 37) % 29).collect()
    }

    fn flat(plan: &[Vec<usize>]) -> Vec<usize> {
        let mut all: Vec<usize> = plan.concat();
        all.sort_unstable();
        all
    }

    #[test]
    fn every_row_once_per_epoch_last_batch_smaller() {
        for opts in [
            options(false, None),
            options(true, None),
            options(true, Some(3)),
        ] {
            let plan = epoch_plan(&lengths(), &opts, 0);
            assert_eq!(flat(&plan), (0..50).collect::<Vec<_>>(), "{opts:?}");
            assert_eq!(plan.len(), 13);
            assert_eq!(plan.iter().filter(|b| b.len() == 4).count(), 12);
        }
    }

    #[test]
    fn order_is_a_pure_function_of_seed_and_epoch() {
        let opts = options(true, Some(3));
        let a = epoch_plan(&lengths(), &opts, 5);
        assert_eq!(a, epoch_plan(&lengths(), &opts, 5));
        assert_ne!(a, epoch_plan(&lengths(), &opts, 6));
        let other_seed = BatchOptions { seed: 7, ..opts };
        assert_ne!(a, epoch_plan(&lengths(), &other_seed, 5));
        // Without shuffling the order is the file order.
        let plain = epoch_plan(&lengths(), &options(false, None), 3);
        assert_eq!(plain.concat(), (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn bucketing_sorts_within_windows_and_cuts_padding() {
        let lengths = lengths();
        let padded = |plan: &[Vec<usize>]| -> usize {
            plan.iter()
                .map(|b| b.len() * b.iter().map(|&r| lengths[r]).max().unwrap())
                .sum()
        };
        let shuffled = epoch_plan(&lengths, &options(true, None), 0);
        let bucketed = epoch_plan(&lengths, &options(true, Some(3)), 0);
        assert!(padded(&bucketed) < padded(&shuffled));
        // Inside each batch of an unshuffled bucketing, lengths do not decrease.
        let sorted = epoch_plan(&lengths, &options(false, Some(3)), 0);
        for batch in &sorted {
            assert!(batch.windows(2).all(|w| lengths[w[0]] <= lengths[w[1]]));
        }
    }
}
