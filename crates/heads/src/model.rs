//! The regression and classification heads (DAO-SPEC "Model") and their shared dropout masks.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};

use crate::HeadsError;

/// Sizes of the heads; the input size `d` is the encoder's hidden size, given at `init`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadsConfig {
    /// Width of both heads' hidden layer (`LL1: d → hidden`); 128 in the paper.
    pub hidden: usize,
    /// Number of sentiment classes (`LL2: hidden → classes`); 5.
    pub classes: usize,
    /// Dropout probability of the classification head's `DP1`, `DP2` (training only).
    pub dropout: f64,
}

impl Default for HeadsConfig {
    fn default() -> Self {
        Self {
            hidden: 128,
            classes: 5,
            dropout: 0.1,
        }
    }
}

impl HeadsConfig {
    /// Checks the sizes and the dropout probability.
    pub fn validate(&self) -> Result<(), HeadsError> {
        if self.hidden == 0 || self.classes < 2 {
            return Err(HeadsError::InvalidConfig(format!(
                "hidden must be ≥ 1 and classes ≥ 2, got hidden {} and classes {}",
                self.hidden, self.classes
            )));
        }
        if !self.dropout.is_finite() || !(0.0..1.0).contains(&self.dropout) {
            return Err(HeadsError::InvalidConfig(format!(
                "dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        Ok(())
    }

    /// Both heads on inputs of size `d_model`, PyTorch-default initialised.
    pub fn init(&self, d_model: usize, device: &Device) -> Result<MultiTaskHeads, HeadsError> {
        self.validate()?;
        if d_model == 0 {
            return Err(HeadsError::InvalidConfig("d_model must be ≥ 1".into()));
        }
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        Ok(MultiTaskHeads {
            regression_head: RegressionHead {
                ll1: linear(d_model, self.hidden),
                ll2: linear(self.hidden, 1),
            },
            classification_head: ClassificationHead {
                dp1: DropoutConfig::new(self.dropout).init(),
                ll1: linear(d_model, self.hidden),
                dp2: DropoutConfig::new(self.dropout).init(),
                ll2: linear(self.hidden, self.classes),
            },
        })
    }
}

/// `S = LL2(sigmoid(LL1(H)))`, unbounded (DAO-SPEC "Model").
///
/// # Shapes
/// - `h`: `[batch, d]` → `[batch, 1]`.
#[derive(Module, Debug)]
pub struct RegressionHead {
    pub ll1: Linear,
    pub ll2: Linear,
}

impl RegressionHead {
    pub fn forward(&self, h: Tensor<2>) -> Tensor<2> {
        self.ll2.forward(sigmoid(self.ll1.forward(h)))
    }
}

/// `C = LL2(DP2(tanh(LL1(DP1(H)))))`, logits (DAO-SPEC "Model").
///
/// # Shapes
/// - `h`: `[batch, d]` → `[batch, classes]`.
#[derive(Module, Debug)]
pub struct ClassificationHead {
    pub dp1: Dropout,
    pub ll1: Linear,
    pub dp2: Dropout,
    pub ll2: Linear,
}

impl ClassificationHead {
    /// Dropout probability (the same for `DP1` and `DP2`).
    pub fn dropout_prob(&self) -> f64 {
        self.dp1.prob
    }

    /// With fresh dropout masks (in training) or none.
    pub fn forward(&self, h: Tensor<2>) -> Tensor<2> {
        let x = self.dp1.forward(h);
        let x = self.dp2.forward(self.ll1.forward(x).tanh());
        self.ll2.forward(x)
    }

    /// With the given masks (already scaled by `1/(1−p)`), or without dropout for `None`.
    ///
    /// # Panics
    /// When the masks' shapes differ from `[batch, d]` and `[batch, hidden]`.
    pub fn forward_with_masks(&self, h: Tensor<2>, masks: Option<&HeadDropoutMasks>) -> Tensor<2> {
        let Some(masks) = masks else {
            return self.ll2.forward(self.ll1.forward(h).tanh());
        };
        assert_eq!(h.dims(), masks.input.dims(), "DP1 mask shape");
        let hidden = self.ll1.forward(h * masks.input.clone()).tanh();
        assert_eq!(hidden.dims(), masks.hidden.dims(), "DP2 mask shape");
        self.ll2.forward(hidden * masks.hidden.clone())
    }
}

/// The classification head's two dropout masks for one training step, kept so that every
/// evaluation of the heads in that step (loss, `g_r`, `g_c`) is the same function
/// (DAO-SPEC "DAO" step 1). Entries are `0` (dropped) or `1/(1−p)` (kept, rescaled), exactly
/// what burn's `Dropout` multiplies by.
///
/// # Shapes
/// - `input`: `[batch, d]` (DP1), `hidden`: `[batch, hidden]` (DP2).
#[derive(Debug, Clone)]
pub struct HeadDropoutMasks {
    pub input: Tensor<2>,
    pub hidden: Tensor<2>,
}

impl HeadDropoutMasks {
    /// Samples both masks with drop probability `p` (all ones when `p = 0`).
    pub fn sample(batch: usize, d_model: usize, hidden: usize, p: f64, device: &Device) -> Self {
        let mask = |cols: usize| {
            if p <= 0.0 {
                return Tensor::ones([batch, cols], device);
            }
            let keep = 1.0 - p;
            Tensor::<2>::random([batch, cols], Distribution::Bernoulli(keep), device)
                .mul_scalar(1.0 / keep)
        };
        Self {
            input: mask(d_model),
            hidden: mask(hidden),
        }
    }
}

/// What the heads return.
///
/// # Shapes
/// - `scores`: `[batch, 1]` (S), `logits`: `[batch, classes]` (C).
#[derive(Debug, Clone)]
pub struct HeadsOutput {
    pub scores: Tensor<2>,
    pub logits: Tensor<2>,
}

/// Both heads; field names match the PyTorch reference's state dict
/// (`regression_head.ll1.weight`, `classification_head.ll2.bias`, …).
#[derive(Module, Debug)]
pub struct MultiTaskHeads {
    pub regression_head: RegressionHead,
    pub classification_head: ClassificationHead,
}

impl MultiTaskHeads {
    /// `(d, hidden, classes)` read off the weights.
    pub fn dims(&self) -> (usize, usize, usize) {
        let ll1 = self.classification_head.ll1.weight.lazy_shape();
        let ll2 = self.classification_head.ll2.weight.lazy_shape();
        (ll1[0], ll1[1], ll2[1])
    }

    /// Whether dropout is active: on an autodiff device, with dropout not frozen and `p > 0`
    /// (the same rule as burn's `Dropout`).
    pub fn dropout_active(&self, device: &Device) -> bool {
        let head = &self.classification_head;
        head.dp1.training.is_enabled() && device.is_autodiff() && head.dropout_prob() > 0.0
    }

    /// One step's dropout masks, or `None` when dropout is inactive (see
    /// [`dropout_active`](Self::dropout_active)).
    pub fn sample_dropout_masks(&self, batch: usize, device: &Device) -> Option<HeadDropoutMasks> {
        if !self.dropout_active(device) {
            return None;
        }
        let (d, hidden, _) = self.dims();
        let p = self.classification_head.dropout_prob();
        Some(HeadDropoutMasks::sample(batch, d, hidden, p, device))
    }

    /// Both heads on `H`, with fresh dropout masks when training.
    ///
    /// # Shapes
    /// - `h`: `[batch, d]`.
    pub fn forward(&self, h: Tensor<2>) -> HeadsOutput {
        let masks = self.sample_dropout_masks(h.dims()[0], &h.device());
        self.forward_with_masks(h, masks.as_ref())
    }

    /// Both heads on `H` with the given masks (`None`: no dropout). Reuse one step's masks for
    /// every evaluation in that step.
    pub fn forward_with_masks(
        &self,
        h: Tensor<2>,
        masks: Option<&HeadDropoutMasks>,
    ) -> HeadsOutput {
        HeadsOutput {
            scores: self.regression_head.forward(h.clone()),
            logits: self.classification_head.forward_with_masks(h, masks),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_reused_and_scaled() {
        let device = Device::flex().autodiff();
        let config = HeadsConfig {
            dropout: 0.5,
            ..HeadsConfig::default()
        };
        let heads = config.init(16, &device).unwrap();
        let h = Tensor::<2>::random([4, 16], Distribution::Normal(0.0, 1.0), &device);
        let masks = heads
            .sample_dropout_masks(4, &device)
            .expect("training device");
        let values = |t: Tensor<2>| t.into_data().try_into_vec::<f32>().unwrap();
        let first = values(heads.forward_with_masks(h.clone(), Some(&masks)).logits);
        let again = values(
            heads
                .forward_with_masks(h.clone().detach(), Some(&masks))
                .logits,
        );
        assert_eq!(first, again, "same masks, same function");
        let m = values(masks.input.clone());
        assert!(m.iter().all(|v| *v == 0.0 || *v == 2.0));
        assert!(m.contains(&0.0) && m.contains(&2.0));
        // Not training: no masks, and forward is deterministic.
        let plain = Device::flex();
        let heads = config.init(16, &plain).unwrap();
        assert!(heads.sample_dropout_masks(4, &plain).is_none());
    }

    /// DP1 on H and DP2 after tanh (DAO-SPEC "Model"), computed here from the weights; the
    /// regression head has no dropout.
    #[test]
    fn dropout_sits_where_the_spec_puts_it() {
        let device = Device::flex().autodiff();
        let heads = HeadsConfig {
            dropout: 0.5,
            hidden: 8,
            ..HeadsConfig::default()
        }
        .init(16, &device)
        .unwrap();
        let h = Tensor::<2>::random([4, 16], Distribution::Normal(0.0, 1.0), &device);
        let masks = heads.sample_dropout_masks(4, &device).unwrap();
        let out = heads.forward_with_masks(h.clone(), Some(&masks));
        let plain = heads.forward_with_masks(h.clone(), None);

        let affine = |x: Tensor<2>, layer: &Linear| {
            x.matmul(layer.weight.val()) + layer.bias.as_ref().unwrap().val().unsqueeze()
        };
        let head = &heads.classification_head;
        let hidden = affine(h * masks.input.clone(), &head.ll1).tanh() * masks.hidden.clone();
        let want = affine(hidden, &head.ll2);
        let values = |t: Tensor<2>| t.into_data().try_into_vec::<f32>().unwrap();
        let (got, want) = (values(out.logits), values(want));
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{got:?} vs {want:?}"
            );
        }
        assert_ne!(got, values(plain.logits), "the masks change the logits");
        assert_eq!(values(out.scores), values(plain.scores), "no dropout in S");
    }

    #[test]
    fn config_is_validated() {
        let bad = HeadsConfig {
            dropout: 1.5,
            ..HeadsConfig::default()
        };
        let message = bad.init(8, &Device::flex()).unwrap_err().to_string();
        assert!(message.contains("dropout"), "{message}");
    }
}
