//! The DAO module's parameters: the raw α, β of step 2 and the weight network of step 3
//! (`[w_r, w_c] = softmax(FC2(ReLU(FC1(u))))`).

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{relu, sigmoid, softmax, softplus};
use burn::tensor::{Device, Tensor};

use crate::config::DaoConfig;
use crate::error::DaoError;

/// α and β of the imbalance loss (DAO-SPEC step 2), through their raw parameters
/// **\[choice\]**: α = softplus(a) > 0 keeps the loss bounded below, β = sigmoid(b) ∈ (0, 1).
#[derive(Module, Debug)]
pub struct AlphaBeta {
    /// a, shape `[1]`.
    pub a_raw: Param<Tensor<1>>,
    /// b, shape `[1]`.
    pub b_raw: Param<Tensor<1>>,
}

impl AlphaBeta {
    /// α = `alpha`, β = `beta` (α > 0, β ∈ (0, 1)), trainable or frozen.
    pub fn new(alpha: f32, beta: f32, trainable: bool, device: &Device) -> Self {
        let param = |value: f32| {
            Param::from_tensor(Tensor::from_floats([value], device)).set_require_grad(trainable)
        };
        Self {
            a_raw: param(inverse_softplus(alpha)),
            b_raw: param(logit(beta)),
        }
    }

    /// From raw values a, b.
    pub fn from_raw(a_raw: f32, b_raw: f32, trainable: bool, device: &Device) -> Self {
        let param = |value: f32| {
            Param::from_tensor(Tensor::from_floats([value], device)).set_require_grad(trainable)
        };
        Self {
            a_raw: param(a_raw),
            b_raw: param(b_raw),
        }
    }

    /// α = softplus(a), `[1]`.
    pub fn alpha(&self) -> Tensor<1> {
        softplus(self.a_raw.val(), 1.0)
    }

    /// β = sigmoid(b), `[1]`.
    pub fn beta(&self) -> Tensor<1> {
        sigmoid(self.b_raw.val())
    }
}

/// The DAO module: everything DAO trains with its own Adam (DAO-SPEC step 5).
#[derive(Module, Debug)]
pub struct DaoModule {
    /// α, β of step 2.
    pub alpha_beta: AlphaBeta,
    /// FC1: 2 → hidden (burn layout: weight `[2, hidden]`).
    pub fc1: Linear,
    /// FC2: hidden → 2 (weight `[hidden, 2]`).
    pub fc2: Linear,
}

/// The weight network's intermediate values for one input u.
///
/// # Shapes
/// `hidden`: `[1, hidden]`; `scores`, `weights`: `[1, 2]`.
#[derive(Debug, Clone)]
pub struct WeightNetworkOutput {
    /// h = ReLU(FC1 u).
    pub hidden: Tensor<2>,
    /// s = FC2 h.
    pub scores: Tensor<2>,
    /// [w_r, w_c] = softmax(s).
    pub weights: Tensor<2>,
}

impl DaoModule {
    /// A fresh module: FC1, FC2 with burn's default (PyTorch-like uniform) init, α and β at
    /// `alpha_init`, `beta_init`, frozen unless `learn_alpha_beta`.
    pub fn new(config: &DaoConfig, device: &Device) -> Result<Self, DaoError> {
        config.validate()?;
        Ok(Self {
            alpha_beta: AlphaBeta::new(
                config.alpha_init,
                config.beta_init,
                config.learn_alpha_beta,
                device,
            ),
            fc1: LinearConfig::new(2, config.hidden).init(device),
            fc2: LinearConfig::new(config.hidden, 2).init(device),
        })
    }

    /// The weight network on u `[2]` (step 3). The caller detaches u (spec \[choice\]).
    pub fn weights(&self, u: Tensor<1>) -> WeightNetworkOutput {
        let hidden = relu(self.fc1.forward(u.reshape([1, 2])));
        let scores = self.fc2.forward(hidden.clone());
        let weights = softmax(scores.clone(), 1);
        WeightNetworkOutput {
            hidden,
            scores,
            weights,
        }
    }
}

/// softplus⁻¹(α) = log(exp(α) − 1), for α > 0.
pub fn inverse_softplus(alpha: f32) -> f32 {
    f64::from(alpha).exp_m1().ln() as f32
}

/// sigmoid⁻¹(β) = log(β / (1 − β)), for β in (0, 1).
pub fn logit(beta: f32) -> f32 {
    let b = f64::from(beta);
    (b / (1.0 - b)).ln() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_raw_values_match_the_reference() {
        // dao_golden.json `init`: a_raw = -2.2521684 for α = 0.1, b_raw = 0 for β = 0.5.
        assert!((inverse_softplus(0.1) - -2.252_168_4).abs() < 1e-6);
        assert_eq!(logit(0.5), 0.0);
    }
}
