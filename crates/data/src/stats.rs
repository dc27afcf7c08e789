//! Summary numbers of a dataset (what `cli data stats` prints).

use crate::labels::{class_counts, NUM_CLASSES};
use crate::load::Dataset;

/// Rows, rejected rows, score moments, class counts.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetStats {
    pub rows: usize,
    pub rejected: usize,
    pub unique_texts: usize,
    pub rows_with_target: usize,
    pub score_mean: f64,
    /// Population standard deviation (divides by n).
    pub score_std: f64,
    pub score_min: f32,
    pub score_max: f32,
    pub class_counts: [usize; NUM_CLASSES],
}

impl DatasetStats {
    pub fn of(dataset: &Dataset) -> Self {
        let examples = &dataset.examples;
        let n = examples.len().max(1) as f64;
        let mean = examples.iter().map(|e| f64::from(e.score)).sum::<f64>() / n;
        let var = examples
            .iter()
            .map(|e| (f64::from(e.score) - mean).powi(2))
            .sum::<f64>()
            / n;
        let unique: std::collections::HashSet<String> = examples
            .iter()
            .map(|e| crate::split::text_key(&e.text))
            .collect();
        Self {
            rows: examples.len(),
            rejected: dataset.rejected,
            unique_texts: unique.len(),
            rows_with_target: examples.iter().filter(|e| e.target.is_some()).count(),
            score_mean: mean,
            score_std: var.sqrt(),
            score_min: examples
                .iter()
                .map(|e| e.score)
                .fold(f32::INFINITY, f32::min),
            score_max: examples
                .iter()
                .map(|e| e.score)
                .fold(f32::NEG_INFINITY, f32::max),
            class_counts: class_counts(examples.iter().map(|e| e.class)),
        }
    }
}

/// Token-length percentiles (nearest rank) of a tokenized set.
#[derive(Debug, Clone, PartialEq)]
pub struct LengthStats {
    pub mean: f64,
    pub p50: usize,
    pub p90: usize,
    pub p95: usize,
    pub p99: usize,
    pub max: usize,
    /// Rows cut at the max length.
    pub truncated: usize,
}

impl LengthStats {
    /// `None` for no rows.
    pub fn of(lengths: &[usize], max_len: usize) -> Option<Self> {
        if lengths.is_empty() {
            return None;
        }
        let mut sorted = lengths.to_vec();
        sorted.sort_unstable();
        let rank = |p: f64| {
            sorted[((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
        };
        Some(Self {
            mean: sorted.iter().sum::<usize>() as f64 / sorted.len() as f64,
            p50: rank(50.0),
            p90: rank(90.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: *sorted.last().expect("non-empty"),
            truncated: sorted.iter().filter(|&&l| l >= max_len).count(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let lengths: Vec<usize> = (1..=100).rev().collect();
        let s = LengthStats::of(&lengths, 100).unwrap();
        assert_eq!((s.p50, s.p90, s.p95, s.p99, s.max), (50, 90, 95, 99, 100));
        assert_eq!(s.mean, 50.5);
        assert_eq!(s.truncated, 1);
        let one = LengthStats::of(&[7], 512).unwrap();
        assert_eq!((one.p50, one.p99, one.truncated), (7, 7, 0));
        assert!(LengthStats::of(&[], 512).is_none());
    }
}
