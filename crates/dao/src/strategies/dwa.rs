//! Dynamic weight averaging: Liu, Johns, Davison, "End-to-End Multi-Task Learning with
//! Attention", CVPR 2019.

use crate::config::DwaConfig;
use crate::error::DaoError;
use crate::readback::read_all;
use crate::weighting::{Diagnostics, LossWeighting, StepInput, Weighted};

use super::plain_losses;

/// `L = Σ_k w_k L_k` with `w_k(t) = K exp(r_k(t−1)/T) / Σ_i exp(r_i(t−1)/T)` and
/// `r_k(t−1) = L_k(t−1) / L_k(t−2)`, the ratio of task k's mean loss over the two previous
/// epochs (Liu et al., eq. 7); `w_k = 1` during the first two epochs. Tasks: L_r and L_c. Needs
/// [`LossWeighting::end_epoch`] after every epoch.
#[derive(Debug, Clone)]
pub struct DynamicWeightAverage {
    temperature: f32,
    /// Mean loss per task of each finished epoch.
    history: Vec<[f64; 2]>,
    /// Sum of this epoch's losses per task, and the number of steps.
    running: ([f64; 2], usize),
}

impl DynamicWeightAverage {
    /// The strategy with temperature T.
    pub fn new(config: DwaConfig) -> Result<Self, DaoError> {
        crate::config::StrategyConfig::Dwa(config.clone()).validate()?;
        Ok(Self {
            temperature: config.temperature,
            history: Vec::new(),
            running: ([0.0; 2], 0),
        })
    }

    /// The weights [w_r, w_c] this epoch's steps use.
    pub fn weights(&self) -> [f32; 2] {
        let n = self.history.len();
        if n < 2 {
            return [1.0, 1.0];
        }
        let (last, before) = (self.history[n - 1], self.history[n - 2]);
        // A task whose loss was 0 two epochs ago has no defined ratio: count it as unchanged.
        let ratio = |k: usize| {
            if before[k] > 0.0 {
                last[k] / before[k]
            } else {
                1.0
            }
        };
        let t = f64::from(self.temperature);
        let e = [(ratio(0) / t).exp(), (ratio(1) / t).exp()];
        let total = e[0] + e[1];
        [(2.0 * e[0] / total) as f32, (2.0 * e[1] / total) as f32]
    }

    /// The per-epoch mean losses recorded so far, `[L_r, L_c]` per epoch.
    pub fn history(&self) -> &[[f64; 2]] {
        &self.history
    }
}

impl LossWeighting for DynamicWeightAverage {
    fn name(&self) -> &'static str {
        "dwa"
    }

    fn weigh_step(&mut self, mut input: StepInput<'_>) -> Result<Weighted, DaoError> {
        let losses = plain_losses(&mut input)?;
        let [w_r, w_c] = self.weights();
        let loss = losses.l_r.clone().mul_scalar(w_r) + losses.l_c.clone().mul_scalar(w_c);
        let values = read_all(vec![loss.clone(), losses.l_r, losses.l_c])?;
        let (l_r, l_c) = (values[1][0], values[2][0]);
        self.running.0[0] += f64::from(l_r);
        self.running.0[1] += f64::from(l_c);
        self.running.1 += 1;
        Ok(Weighted {
            loss,
            diagnostics: Diagnostics {
                loss: values[0][0],
                l_r,
                l_c,
                w_r: Some(w_r),
                w_c: Some(w_c),
                ..Diagnostics::default()
            },
        })
    }

    fn save(&self, dir: &std::path::Path) -> Result<(), DaoError> {
        let ([sum_r, sum_c], steps) = self.running;
        crate::state::save_numbers(
            dir,
            &[
                ("history", self.history.iter().flatten().copied().collect()),
                ("running", vec![sum_r, sum_c, steps as f64]),
            ],
        )
    }

    fn load(&mut self, dir: &std::path::Path) -> Result<(), DaoError> {
        let numbers = crate::state::load_numbers(dir)?;
        let history = numbers.list("history");
        let running = numbers.get("running", 3)?;
        self.history = history.chunks_exact(2).map(|p| [p[0], p[1]]).collect();
        self.running = ([running[0], running[1]], running[2] as usize);
        Ok(())
    }

    fn end_epoch(&mut self) {
        let ([sum_r, sum_c], steps) = self.running;
        if steps > 0 {
            let n = steps as f64;
            self.history.push([sum_r / n, sum_c / n]);
        }
        self.running = ([0.0; 2], 0);
    }
}
