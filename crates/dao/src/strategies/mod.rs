//! The weighting strategies, one file per method, all behind [`crate::LossWeighting`].

mod baselines;
mod dao;
mod dwa;
mod gradnorm;
mod uncertainty;

pub use self::dao::{dao_objective, Dao, DaoTerms, GradBalanceOnly, ImbalanceOnly};
pub use baselines::{Constant, RegressionOnly};
pub use dwa::DynamicWeightAverage;
pub use gradnorm::GradNorm;
pub use uncertainty::{LogVariances, Uncertainty};

use burn::tensor::Tensor;

use crate::error::DaoError;
use crate::targets::{check_scalar, ClassTargets};
use crate::weighting::StepInput;

/// The heads on the real H: L_r, L_c and the batch's targets.
pub(crate) struct PlainLosses {
    pub l_r: Tensor<1>,
    pub l_c: Tensor<1>,
    pub targets: ClassTargets,
}

pub(crate) fn plain_losses(input: &mut StepInput<'_>) -> Result<PlainLosses, DaoError> {
    let (outputs, targets) = dao::real_outputs(input)?;
    let l_r = check_scalar(outputs.regression_loss)?;
    let l_c = targets.cross_entropy(outputs.logits)?.mean;
    Ok(PlainLosses { l_r, l_c, targets })
}

/// A strategy with parameters of its own (`name`) refuses a device without autodiff, where
/// they would silently never learn.
pub(crate) fn check_learns_on(
    device: &burn::tensor::Device,
    name: &'static str,
) -> Result<(), DaoError> {
    if device.is_autodiff() {
        Ok(())
    } else {
        Err(DaoError::NotAutodiffDevice(name))
    }
}

impl crate::config::StrategyConfig {
    /// Builds the configured strategy on `device` (the training device: autodiff).
    ///
    /// # Errors
    /// An invalid configuration, or a strategy with parameters of its own (`dao`,
    /// `uncertainty`, `dao-imbalance-only`) on a device without autodiff, where they would
    /// silently never learn.
    pub fn build(
        &self,
        device: &burn::tensor::Device,
    ) -> Result<Box<dyn crate::LossWeighting>, DaoError> {
        use crate::config::StrategyConfig as S;
        self.validate()?;
        // The constructors of the strategies that learn check the device themselves.
        Ok(match self {
            S::RegressionOnly => Box::new(RegressionOnly),
            S::Constant(c) => Box::new(Constant::new(c.clone())?),
            S::Dao(c) => Box::new(Dao::new(c.clone(), device)?),
            S::Uncertainty(c) => Box::new(Uncertainty::new(c.clone(), device)?),
            S::Dwa(c) => Box::new(DynamicWeightAverage::new(c.clone())?),
            S::Gradnorm(c) => Box::new(GradNorm::new(c.clone())?),
            S::DaoGradBalanceOnly(c) => Box::new(GradBalanceOnly::new(c.clone())),
            S::DaoImbalanceOnly(c) => Box::new(ImbalanceOnly::new(c.clone(), device)?),
        })
    }
}
