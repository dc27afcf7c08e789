//! GradNorm: Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient Normalization for
//! Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018.

use burn::tensor::Gradients;

use crate::balance::task_grad_norms;
use crate::config::{GradNormConfig, GradNormWrt};
use crate::error::DaoError;
use crate::readback::read_all;
use crate::weighting::{Diagnostics, LossWeighting, StepInput, Weighted};

use super::plain_losses;

/// `L = w_r L_r + w_c L_c` with weights trained to equalise the weighted gradient norms
/// `G_i = w_i ‖∇L_i‖` at a relative inverse training rate (Chen et al., eqs. 1–2):
/// `L_grad = Σ_i |G_i − Ḡ · r_i^α|`, `r_i = L̃_i / mean(L̃)`, `L̃_i = L_i(t) / L_i(0)`, the target
/// held constant. Its gradient in w is analytic, `sign(G_i − target_i) ‖∇L_i‖`, so the weights
/// are plain numbers, stepped by gradient descent in [`LossWeighting::update`] and renormalised
/// to `Σ w_i = 2`. The norms are taken w.r.t. H by default (LibMTL's "representation
/// gradients"; the paper uses the last shared layer's weights) **\[choice\]**.
#[derive(Debug, Clone)]
pub struct GradNorm {
    alpha: f32,
    lr: f32,
    grad_norm_wrt: GradNormWrt,
    weights: [f32; 2],
    initial_losses: Option<[f32; 2]>,
    pending_gradient: Option<[f32; 2]>,
}

impl GradNorm {
    /// The strategy, with both weights 1.
    pub fn new(config: GradNormConfig) -> Result<Self, DaoError> {
        crate::config::StrategyConfig::Gradnorm(config.clone()).validate()?;
        Ok(Self {
            alpha: config.alpha,
            lr: config.lr,
            grad_norm_wrt: config.grad_norm_wrt,
            weights: [1.0, 1.0],
            initial_losses: None,
            pending_gradient: None,
        })
    }

    /// The current weights [w_r, w_c].
    pub fn weights(&self) -> [f32; 2] {
        self.weights
    }

    /// ∂L_grad/∂w from this step's gradient norms and losses.
    fn weight_gradient(&mut self, norms: [f32; 2], losses: [f32; 2]) -> [f32; 2] {
        let initial = *self.initial_losses.get_or_insert(losses);
        let relative: Vec<f64> = (0..2)
            .map(|i| {
                if initial[i] > 0.0 {
                    f64::from(losses[i]) / f64::from(initial[i])
                } else {
                    1.0
                }
            })
            .collect();
        let mean_relative = (relative[0] + relative[1]) / 2.0;
        let weighted: Vec<f64> = (0..2)
            .map(|i| f64::from(self.weights[i]) * f64::from(norms[i]))
            .collect();
        let mean_weighted = (weighted[0] + weighted[1]) / 2.0;
        let mut gradient = [0.0f32; 2];
        for i in 0..2 {
            let rate = if mean_relative > 0.0 {
                relative[i] / mean_relative
            } else {
                1.0
            };
            let target = mean_weighted * rate.powf(f64::from(self.alpha));
            let diff = weighted[i] - target;
            let sign = if diff > 0.0 {
                1.0
            } else if diff < 0.0 {
                -1.0
            } else {
                0.0
            };
            gradient[i] = (sign * f64::from(norms[i])) as f32;
        }
        gradient
    }
}

impl LossWeighting for GradNorm {
    fn name(&self) -> &'static str {
        "gradnorm"
    }

    fn weigh_step(&mut self, mut input: StepInput<'_>) -> Result<Weighted, DaoError> {
        let losses = plain_losses(&mut input)?;
        let norms = task_grad_norms(&mut input, &losses.targets, self.grad_norm_wrt)?;
        let [w_r, w_c] = self.weights;
        let loss = losses.l_r.clone().mul_scalar(w_r) + losses.l_c.clone().mul_scalar(w_c);
        let values = read_all(vec![loss.clone(), losses.l_r, losses.l_c])?;
        let (l_r, l_c) = (values[1][0], values[2][0]);
        self.pending_gradient = Some(self.weight_gradient(norms, [l_r, l_c]));
        Ok(Weighted {
            loss,
            diagnostics: Diagnostics {
                loss: values[0][0],
                l_r,
                l_c,
                g_r_norm: Some(norms[0]),
                g_c_norm: Some(norms[1]),
                w_r: Some(w_r),
                w_c: Some(w_c),
                ..Diagnostics::default()
            },
        })
    }

    fn save(&self, dir: &std::path::Path) -> Result<(), DaoError> {
        let as_f64 = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
        crate::state::save_numbers(
            dir,
            &[
                ("weights", as_f64(&self.weights)),
                (
                    "initial_losses",
                    self.initial_losses.map_or(Vec::new(), |l| as_f64(&l)),
                ),
            ],
        )
    }

    fn load(&mut self, dir: &std::path::Path) -> Result<(), DaoError> {
        let numbers = crate::state::load_numbers(dir)?;
        let w = numbers.get("weights", 2)?;
        self.weights = [w[0] as f32, w[1] as f32];
        let initial = numbers.list("initial_losses");
        self.initial_losses = (initial.len() == 2).then(|| [initial[0] as f32, initial[1] as f32]);
        self.pending_gradient = None;
        Ok(())
    }

    fn update(&mut self, _grads: &Gradients) {
        let Some(gradient) = self.pending_gradient.take() else {
            return;
        };
        // Keep weights positive (a weight at 0 would drop its task for good), then renormalise.
        let mut w = [0.0f32; 2];
        for i in 0..2 {
            w[i] = (self.weights[i] - self.lr * gradient[i]).max(1e-6);
        }
        let scale = 2.0 / (w[0] + w[1]);
        self.weights = [w[0] * scale, w[1] * scale];
    }
}
