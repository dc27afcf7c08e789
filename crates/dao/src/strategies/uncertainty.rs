//! Uncertainty weighting: Kendall, Gal, Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
//! Losses for Scene Geometry and Semantics", CVPR 2018.

use burn::module::{Module, Param};
use burn::tensor::{Device, Gradients, Tensor};

use crate::config::UncertaintyConfig;
use crate::error::DaoError;
use crate::own_optimizer::OwnAdam;
use crate::readback::read_all;
use crate::weighting::{Diagnostics, LossWeighting, StepInput, Weighted};

use super::plain_losses;

/// The learned log-variances s = log σ², `[2]` = [s_r, s_c], initialised to 0 (σ = 1).
#[derive(Module, Debug)]
pub struct LogVariances {
    /// [s_r, s_c].
    pub log_var: Param<Tensor<1>>,
}

/// Kendall et al.'s eq. 7 for one regression and one classification task, with s = log σ²:
/// `L = ½ e^(−s_r) L_r + e^(−s_c) L_c + ½ s_r + ½ s_c` (= `1/(2σ_r²) L_r + 1/σ_c² L_c + log σ_r
/// + log σ_c`). s is trained by its own Adam. Diagnostics: `w_r = ½ e^(−s_r)`, `w_c = e^(−s_c)`.
pub struct Uncertainty {
    log_variances: LogVariances,
    adam: OwnAdam,
}

impl Uncertainty {
    /// The strategy on `device` (the training device, autodiff).
    ///
    /// # Errors
    /// An invalid configuration, or a `device` without autodiff (the log-variances would never
    /// learn there).
    pub fn new(config: UncertaintyConfig, device: &Device) -> Result<Self, DaoError> {
        super::check_learns_on(device, "uncertainty")?;
        crate::config::StrategyConfig::Uncertainty(config.clone()).validate()?;
        Ok(Self {
            log_variances: LogVariances {
                log_var: Param::from_tensor(Tensor::zeros([2], device)),
            },
            adam: OwnAdam::new(config.lr),
        })
    }

    /// The log-variances as they are now.
    pub fn log_variances(&self) -> &LogVariances {
        &self.log_variances
    }
}

impl LossWeighting for Uncertainty {
    fn name(&self) -> &'static str {
        "uncertainty"
    }

    fn weigh_step(&mut self, mut input: StepInput<'_>) -> Result<Weighted, DaoError> {
        let losses = plain_losses(&mut input)?;
        let s = self.log_variances.log_var.val();
        let (s_r, s_c) = (s.clone().narrow(0, 0, 1), s.narrow(0, 1, 1));
        let w_r = s_r.clone().neg().exp().mul_scalar(0.5);
        let w_c = s_c.clone().neg().exp();
        let loss = w_r.clone() * losses.l_r.clone()
            + w_c.clone() * losses.l_c.clone()
            + (s_r + s_c).mul_scalar(0.5);
        let values = read_all(vec![loss.clone(), losses.l_r, losses.l_c, w_r, w_c])?;
        Ok(Weighted {
            loss,
            diagnostics: Diagnostics {
                loss: values[0][0],
                l_r: values[1][0],
                l_c: values[2][0],
                w_r: Some(values[3][0]),
                w_c: Some(values[4][0]),
                ..Diagnostics::default()
            },
        })
    }

    fn save(&self, dir: &std::path::Path) -> Result<(), DaoError> {
        self.adam.save_with(&self.log_variances, dir)
    }

    fn load(&mut self, dir: &std::path::Path) -> Result<(), DaoError> {
        self.log_variances = self.adam.load_with(self.log_variances.clone(), dir)?;
        Ok(())
    }

    fn update(&mut self, grads: &Gradients) {
        self.log_variances = self.adam.step(self.log_variances.clone(), grads);
    }
}
