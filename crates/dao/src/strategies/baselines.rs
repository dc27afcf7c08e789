//! The paper's two baselines (Ding et al., DAO-SPEC "Baselines the paper compares").

use crate::config::ConstantConfig;
use crate::error::DaoError;
use crate::readback::read_all;
use crate::weighting::{Diagnostics, LossWeighting, StepInput, Weighted};

use super::plain_losses;

/// Single-task regression, `L = L_r` (L_c is still computed, for logging only).
#[derive(Debug, Clone, Default)]
pub struct RegressionOnly;

impl LossWeighting for RegressionOnly {
    fn name(&self) -> &'static str {
        "regression-only"
    }

    fn weigh_step(&mut self, mut input: StepInput<'_>) -> Result<Weighted, DaoError> {
        let losses = plain_losses(&mut input)?;
        let values = read_all(vec![losses.l_r.clone(), losses.l_c])?;
        Ok(Weighted {
            loss: losses.l_r,
            diagnostics: Diagnostics {
                loss: values[0][0],
                l_r: values[0][0],
                l_c: values[1][0],
                w_r: Some(1.0),
                w_c: Some(0.0),
                ..Diagnostics::default()
            },
        })
    }
}

/// Constant weights, `L = (1 − w_c) L_r + w_c L_c`; the paper's headline baseline is w_c = 0.1.
#[derive(Debug, Clone)]
pub struct Constant {
    w_c: f32,
}

impl Constant {
    /// The baseline with `config.w_c` (in [0, 1]).
    pub fn new(config: ConstantConfig) -> Result<Self, DaoError> {
        crate::config::StrategyConfig::Constant(config.clone()).validate()?;
        Ok(Self { w_c: config.w_c })
    }
}

impl LossWeighting for Constant {
    fn name(&self) -> &'static str {
        "constant"
    }

    fn weigh_step(&mut self, mut input: StepInput<'_>) -> Result<Weighted, DaoError> {
        let losses = plain_losses(&mut input)?;
        let w_r = 1.0 - self.w_c;
        let loss = losses.l_r.clone().mul_scalar(w_r) + losses.l_c.clone().mul_scalar(self.w_c);
        let values = read_all(vec![loss.clone(), losses.l_r, losses.l_c])?;
        Ok(Weighted {
            loss,
            diagnostics: Diagnostics {
                loss: values[0][0],
                l_r: values[1][0],
                l_c: values[2][0],
                w_r: Some(w_r),
                w_c: Some(self.w_c),
                ..Diagnostics::default()
            },
        })
    }
}
