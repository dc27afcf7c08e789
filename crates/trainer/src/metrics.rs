//! Validation metrics of an epoch (DAO-SPEC "Metrics"): the regression errors of the score
//! and the support-weighted classification scores of the 5 polarity classes.

/// Number of polarity classes (0 = very negative … 4 = very positive).
pub const NUM_CLASSES: usize = 5;

/// One epoch's validation metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationMetrics {
    /// Mean squared error of the score.
    pub mse: f64,
    /// Mean absolute error of the score.
    pub mae: f64,
    /// Square root of `mse`.
    pub rmse: f64,
    /// `1 − Σ(y − ŷ)² / Σ(y − ȳ)²`; when every `y` is equal: 1 for a perfect prediction, else 0
    /// (scikit-learn's `force_finite` convention).
    pub r2: f64,
    /// Share of rows whose predicted class (argmax of the logits) is the true one.
    pub accuracy: f64,
    /// Support-weighted precision; a class never predicted has precision 0.
    pub precision: f64,
    /// Support-weighted recall (equals `accuracy`).
    pub recall: f64,
    /// Support-weighted F1; a class with precision + recall = 0 has F1 0.
    pub f1: f64,
    /// `confusion[true][predicted]` counts.
    pub confusion: [[u64; NUM_CLASSES]; NUM_CLASSES],
    /// Rows evaluated.
    pub n: usize,
}

/// Inputs the metrics cannot be computed from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error("no validation rows")]
    Empty,
    #[error("{what}: {found} values for {expected} rows")]
    Length {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("{what}[{index}] = {class} is not a class (0..{NUM_CLASSES})")]
    Class {
        what: &'static str,
        index: usize,
        class: usize,
    },
    #[error("{what}[{index}] = {value} is not finite")]
    NotFinite {
        what: &'static str,
        index: usize,
        value: f64,
    },
}

impl ValidationMetrics {
    /// Computes the metrics of `n` rows.
    ///
    /// # Shapes
    /// `score_true`, `score_pred`, `class_true`, `class_pred`: `[n]` each.
    pub fn compute(
        score_true: &[f32],
        score_pred: &[f32],
        class_true: &[usize],
        class_pred: &[usize],
    ) -> Result<Self, MetricsError> {
        let n = score_true.len();
        if n == 0 {
            return Err(MetricsError::Empty);
        }
        for (what, len) in [
            ("predicted scores", score_pred.len()),
            ("true classes", class_true.len()),
            ("predicted classes", class_pred.len()),
        ] {
            if len != n {
                return Err(MetricsError::Length {
                    what,
                    expected: n,
                    found: len,
                });
            }
        }
        for (what, values) in [
            ("true scores", score_true),
            ("predicted scores", score_pred),
        ] {
            if let Some((index, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(MetricsError::NotFinite {
                    what,
                    index,
                    value: f64::from(*v),
                });
            }
        }
        for (what, classes) in [
            ("true classes", class_true),
            ("predicted classes", class_pred),
        ] {
            if let Some((index, &class)) =
                classes.iter().enumerate().find(|(_, &c)| c >= NUM_CLASSES)
            {
                return Err(MetricsError::Class { what, index, class });
            }
        }

        // Regression, accumulated in f64.
        let count = n as f64;
        let mean_y = score_true.iter().map(|&y| f64::from(y)).sum::<f64>() / count;
        let (mut sse, mut sae, mut sst) = (0.0, 0.0, 0.0);
        for (&y, &p) in score_true.iter().zip(score_pred) {
            let (y, p) = (f64::from(y), f64::from(p));
            sse += (y - p) * (y - p);
            sae += (y - p).abs();
            sst += (y - mean_y) * (y - mean_y);
        }
        let mse = sse / count;
        let r2 = if sst > 0.0 {
            1.0 - sse / sst
        } else if sse == 0.0 {
            1.0
        } else {
            0.0
        };

        // Classification.
        let mut confusion = [[0u64; NUM_CLASSES]; NUM_CLASSES];
        for (&t, &p) in class_true.iter().zip(class_pred) {
            confusion[t][p] += 1;
        }
        let correct: u64 = (0..NUM_CLASSES).map(|k| confusion[k][k]).sum();
        let (mut precision, mut recall, mut f1) = (0.0, 0.0, 0.0);
        for (k, row) in confusion.iter().enumerate() {
            let support: u64 = row.iter().sum();
            let predicted: u64 = confusion.iter().map(|r| r[k]).sum();
            let tp = row[k] as f64;
            let p_k = if predicted > 0 {
                tp / predicted as f64
            } else {
                0.0
            };
            let r_k = if support > 0 {
                tp / support as f64
            } else {
                0.0
            };
            let f_k = if p_k + r_k > 0.0 {
                2.0 * p_k * r_k / (p_k + r_k)
            } else {
                0.0
            };
            let weight = support as f64 / count;
            precision += weight * p_k;
            recall += weight * r_k;
            f1 += weight * f_k;
        }

        Ok(Self {
            mse,
            mae: sae / count,
            rmse: mse.sqrt(),
            r2,
            accuracy: correct as f64 / count,
            precision,
            recall,
            f1,
            confusion,
            n,
        })
    }

    /// The value of one metric.
    pub fn get(&self, metric: crate::Metric) -> f64 {
        use crate::Metric::*;
        match metric {
            Mse => self.mse,
            Mae => self.mae,
            Rmse => self.rmse,
            R2 => self.r2,
            Accuracy => self.accuracy,
            Precision => self.precision,
            Recall => self.recall,
            F1 => self.f1,
        }
    }
}

/// Collects predictions batch by batch over a validation pass; [`finish`](Self::finish)
/// computes the metrics.
#[derive(Debug, Clone, Default)]
pub struct ValidationAccumulator {
    score_true: Vec<f32>,
    score_pred: Vec<f32>,
    class_true: Vec<usize>,
    class_pred: Vec<usize>,
}

impl ValidationAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one batch.
    ///
    /// # Shapes
    /// `score_true`, `score_pred`, `class_true`: `[batch]`; `logits`: `[batch, NUM_CLASSES]`
    /// row-major (the predicted class is the argmax, the first one on ties).
    pub fn push(
        &mut self,
        score_true: &[f32],
        score_pred: &[f32],
        class_true: &[usize],
        logits: &[f32],
    ) -> Result<(), MetricsError> {
        let batch = score_true.len();
        for (what, expected, found) in [
            ("predicted scores", batch, score_pred.len()),
            ("true classes", batch, class_true.len()),
            ("logits", batch * NUM_CLASSES, logits.len()),
        ] {
            if expected != found {
                return Err(MetricsError::Length {
                    what,
                    expected,
                    found,
                });
            }
        }
        self.score_true.extend_from_slice(score_true);
        self.score_pred.extend_from_slice(score_pred);
        self.class_true.extend_from_slice(class_true);
        self.class_pred
            .extend(logits.chunks_exact(NUM_CLASSES).map(argmax));
        Ok(())
    }

    /// Rows collected so far.
    pub fn len(&self) -> usize {
        self.score_true.len()
    }

    pub fn is_empty(&self) -> bool {
        self.score_true.is_empty()
    }

    pub fn finish(&self) -> Result<ValidationMetrics, MetricsError> {
        ValidationMetrics::compute(
            &self.score_true,
            &self.score_pred,
            &self.class_true,
            &self.class_pred,
        )
    }
}

/// Index of the largest value, the first on ties (as `torch.argmax` on CPU); NaN never wins.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || row[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(what: &str, got: f64, want: f64) {
        assert!(
            (got - want).abs() <= 1e-12,
            "{what}: got {got}, expected {want}"
        );
    }

    #[test]
    fn regression_matches_scikit_learn_doc_example() {
        // sklearn docs: y_true = [3, -0.5, 2, 7], y_pred = [2.5, 0.0, 2, 8]
        // mean_squared_error = 0.375, mean_absolute_error = 0.5, r2_score = 0.9486081370449679.
        // By hand: errors 0.5, -0.5, 0, -1 → SSE 1.5; ȳ = 2.875, SST = 29.1875;
        // R² = 1 − 1.5 / 29.1875.
        let m = ValidationMetrics::compute(
            &[3.0, -0.5, 2.0, 7.0],
            &[2.5, 0.0, 2.0, 8.0],
            &[0, 0, 0, 0],
            &[0, 0, 0, 0],
        )
        .unwrap();
        close("mse", m.mse, 0.375);
        close("mae", m.mae, 0.5);
        close("rmse", m.rmse, 0.375f64.sqrt());
        close("r2", m.r2, 0.948_608_137_044_967_9);
        close("r2 by hand", m.r2, 1.0 - 1.5 / 29.1875);
        assert_eq!(m.n, 4);
    }

    #[test]
    fn classification_matches_scikit_learn_doc_example() {
        // sklearn docs: y_true = [0, 1, 2, 0, 1, 2], y_pred = [0, 2, 1, 0, 0, 1]
        // precision_score(average="weighted") = 0.2222…, recall 0.3333…, f1_score 0.2666….
        // By hand: class 0: tp 2, predicted 3, support 2 → P 2/3, R 1, F1 0.8;
        // classes 1 and 2: tp 0 → P = R = F1 = 0; each class has weight 2/6.
        let scores = [0.0f32; 6];
        let m =
            ValidationMetrics::compute(&scores, &scores, &[0, 1, 2, 0, 1, 2], &[0, 2, 1, 0, 0, 1])
                .unwrap();
        close("accuracy", m.accuracy, 2.0 / 6.0);
        close("precision", m.precision, 2.0 / 9.0);
        close("recall", m.recall, 1.0 / 3.0);
        close("f1", m.f1, 0.8 / 3.0);
        assert_eq!(m.confusion[0], [2, 0, 0, 0, 0]);
        assert_eq!(m.confusion[1], [1, 0, 1, 0, 0]);
        assert_eq!(m.confusion[2], [0, 2, 0, 0, 0]);
        assert_eq!(m.confusion[3], [0; 5]);
        // Every y equal and predicted exactly: R² = 1 by convention.
        close("r2", m.r2, 1.0);
    }

    #[test]
    fn five_classes_hand_computed() {
        // true: 0 0 1 2 2 2 3 4 4 4, pred: 0 1 1 2 2 3 3 4 4 2
        // class 0: support 2, predicted 1 (tp 1) → P 1, R 1/2, F1 2/3
        // class 1: support 1, predicted 2 (tp 1) → P 1/2, R 1, F1 2/3
        // class 2: support 3, predicted 3 (tp 2) → P 2/3, R 2/3, F1 2/3
        // class 3: support 1, predicted 2 (tp 1) → P 1/2, R 1, F1 2/3
        // class 4: support 3, predicted 2 (tp 2) → P 1, R 2/3, F1 4/5
        // weighted P = (2·1 + 1·½ + 3·⅔ + 1·½ + 3·1) / 10 = 8/10
        // weighted R = (1 + 1 + 2 + 1 + 2) / 10 = 7/10 = accuracy
        // weighted F1 = (2·⅔ + ⅔ + 3·⅔ + ⅔ + 3·⅘) / 10 = (14/3 + 12/5) / 10 = 106/150
        let truth = [0, 0, 1, 2, 2, 2, 3, 4, 4, 4];
        let pred = [0, 1, 1, 2, 2, 3, 3, 4, 4, 2];
        let y = [0.0f32; 10];
        let m = ValidationMetrics::compute(&y, &y, &truth, &pred).unwrap();
        close("accuracy", m.accuracy, 0.7);
        close("recall", m.recall, 0.7);
        close("precision", m.precision, 0.8);
        close("f1", m.f1, 106.0 / 150.0);
        assert_eq!(m.confusion[4], [0, 0, 1, 0, 2]);
        assert_eq!(m.confusion.iter().flatten().sum::<u64>(), 10);
    }

    #[test]
    fn constant_truth_r2_convention() {
        let m = ValidationMetrics::compute(&[0.5; 3], &[0.5, 0.4, 0.5], &[3; 3], &[3; 3]).unwrap();
        close("r2", m.r2, 0.0);
    }

    #[test]
    fn accumulator_takes_argmax_of_logits() {
        let mut acc = ValidationAccumulator::new();
        // The second row ties 2.0 at classes 0 and 4: the first wins.
        acc.push(
            &[0.6, -0.7],
            &[0.5, -0.6],
            &[4, 0],
            &[0.0, 0.1, 0.2, 0.3, 0.9, 2.0, 1.0, 1.0, 1.0, 2.0],
        )
        .unwrap();
        acc.push(&[0.0], &[0.1], &[2], &[0.0, 0.0, 1.0, 0.0, 0.0])
            .unwrap();
        let m = acc.finish().unwrap();
        assert_eq!(m.n, 3);
        close("accuracy", m.accuracy, 1.0);
        assert!((m.mse - 0.01).abs() < 1e-8);
        assert!(matches!(
            acc.push(&[0.0], &[0.0], &[0], &[0.0; 4]),
            Err(MetricsError::Length { what: "logits", .. })
        ));
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert_eq!(
            ValidationMetrics::compute(&[], &[], &[], &[]),
            Err(MetricsError::Empty)
        );
        assert!(matches!(
            ValidationMetrics::compute(&[0.0], &[0.0, 1.0], &[0], &[0]),
            Err(MetricsError::Length { .. })
        ));
        assert!(matches!(
            ValidationMetrics::compute(&[0.0], &[0.0], &[5], &[0]),
            Err(MetricsError::Class { class: 5, .. })
        ));
        assert!(matches!(
            ValidationMetrics::compute(&[0.0], &[f32::NAN], &[0], &[0]),
            Err(MetricsError::NotFinite { .. })
        ));
    }
}
