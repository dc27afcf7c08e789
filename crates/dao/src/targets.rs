//! Class labels of one batch, read once to the host: counts n_k and shares p_k (constants of the
//! step), the one-hot matrix, and the cross-entropy terms built from them.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::DaoError;

/// The batch's labels and their per-class statistics.
#[derive(Debug, Clone)]
pub struct ClassTargets {
    /// z_i per sample.
    pub labels: Vec<usize>,
    /// n_k per class.
    pub counts: Vec<usize>,
    /// `[batch, num_classes]` one-hot of the labels, on the logits' device (a constant).
    one_hot: Tensor<2>,
}

/// Cross-entropy of logits against the labels.
///
/// # Shapes
/// - `per_sample`: `[batch, 1]`, `−log softmax(C)_{i, z_i}`.
/// - `mean`: `[1]`, L_c.
#[derive(Debug, Clone)]
pub struct CrossEntropy {
    /// Per-sample cross-entropy.
    pub per_sample: Tensor<2>,
    /// L_c, the mean over the batch.
    pub mean: Tensor<1>,
}

impl ClassTargets {
    /// Reads `labels` `[batch]` to the host and checks them against `logits` `[batch, K]`.
    pub fn new(labels: &Tensor<1, Int>, logits: &Tensor<2>) -> Result<Self, DaoError> {
        let [batch, num_classes] = logits.dims();
        let [n_labels] = labels.dims();
        if batch == 0 || num_classes == 0 {
            return Err(DaoError::Shape(format!(
                "logits are [{batch}, {num_classes}]: need at least one sample and one class"
            )));
        }
        if n_labels != batch {
            return Err(DaoError::Shape(format!(
                "{n_labels} labels for {batch} rows of logits"
            )));
        }
        let raw = labels
            .to_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| DaoError::Readback {
                what: "labels",
                reason: format!("{e:?}"),
            })?;
        let mut counts = vec![0usize; num_classes];
        let mut parsed = Vec::with_capacity(batch);
        let mut one_hot = vec![0f32; batch * num_classes];
        for (index, &label) in raw.iter().enumerate() {
            let class = usize::try_from(label)
                .ok()
                .filter(|&k| k < num_classes)
                .ok_or(DaoError::LabelOutOfRange {
                    label,
                    index,
                    num_classes,
                })?;
            counts[class] += 1;
            one_hot[index * num_classes + class] = 1.0;
            parsed.push(class);
        }
        let one_hot = Tensor::from_data(
            TensorData::new(one_hot, [batch, num_classes]),
            &logits.device(),
        );
        Ok(Self {
            labels: parsed,
            counts,
            one_hot,
        })
    }

    /// The batch size n.
    pub fn batch_size(&self) -> usize {
        self.labels.len()
    }

    /// The number of classes K.
    pub fn num_classes(&self) -> usize {
        self.counts.len()
    }

    /// p_k = n_k / n (0 for absent classes).
    pub fn shares(&self) -> Vec<f32> {
        let n = self.batch_size() as f64;
        self.counts.iter().map(|&c| (c as f64 / n) as f32).collect()
    }

    /// Cross-entropy of `logits` `[batch, K]` against the labels.
    pub fn cross_entropy(&self, logits: Tensor<2>) -> Result<CrossEntropy, DaoError> {
        let dims = logits.dims();
        if dims != [self.batch_size(), self.num_classes()] {
            return Err(DaoError::Shape(format!(
                "logits are {dims:?}, the labels need [{}, {}]",
                self.batch_size(),
                self.num_classes()
            )));
        }
        let per_sample = (log_softmax(logits, 1) * self.one_hot.clone())
            .sum_dim(1)
            .neg();
        let mean = per_sample.clone().mean();
        Ok(CrossEntropy { per_sample, mean })
    }

    /// L_{c,k}: the mean cross-entropy over the samples of class k, `[1, K]` (0 where absent).
    pub fn per_class_cross_entropy(&self, per_sample: Tensor<2>) -> Tensor<2> {
        let sums = (self.one_hot.clone() * per_sample).sum_dim(0);
        let inverse_counts: Vec<f32> = self
            .counts
            .iter()
            .map(|&c| if c == 0 { 0.0 } else { 1.0 / c as f32 })
            .collect();
        let inverse_counts = Tensor::<2>::from_data(
            TensorData::new(inverse_counts, [1, self.num_classes()]),
            &sums.device(),
        );
        sums * inverse_counts
    }
}

/// Checks that a loss handed in is a scalar `[1]` tensor.
pub(crate) fn check_scalar(loss: Tensor<1>) -> Result<Tensor<1>, DaoError> {
    match loss.dims() {
        [1] => Ok(loss),
        [n] => Err(DaoError::Shape(format!(
            "the regression loss must be a scalar tensor [1], got [{n}]"
        ))),
    }
}
