//! Configuration of every weighting strategy, serde-readable so a trainer can pick one from a
//! config file or a bare name.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::DaoError;

/// With respect to what the task gradients g_r, g_c of DAO step 1 are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GradNormWrt {
    /// ∂L/∂H, H the shared representation `[batch, d]` (the spec's default): the heads run twice
    /// more, on two detached copies of H, and one small backward runs through them: nearly free.
    #[default]
    Representation,
    /// ∂L/∂θ over every shared trainable parameter (the paper's notation): two extra forward and
    /// backward passes of the shared trunk per step (burn has no `retain_graph`).
    SharedParameters,
}

/// DAO's own settings (DAO-SPEC steps 1–5). Defaults are the spec's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaoConfig {
    /// Width of the weight network's hidden layer (step 3, FC1: 2 → hidden).
    pub hidden: usize,
    /// Learning rate of the DAO module's own Adam (step 5), no schedule.
    pub lr: f64,
    /// Initial α of the imbalance loss (step 2), > 0.
    pub alpha_init: f32,
    /// Initial β of the imbalance loss (step 2), in (0, 1).
    pub beta_init: f32,
    /// Whether α and β are trained; `false` freezes them at their initial values.
    pub learn_alpha_beta: bool,
    /// What the gradient norms of step 1 are taken with respect to.
    pub grad_norm_wrt: GradNormWrt,
}

impl Default for DaoConfig {
    fn default() -> Self {
        Self {
            hidden: 16,
            lr: 1e-3,
            alpha_init: 0.1,
            beta_init: 0.5,
            learn_alpha_beta: true,
            grad_norm_wrt: GradNormWrt::Representation,
        }
    }
}

impl DaoConfig {
    /// Checks every field's domain.
    pub fn validate(&self) -> Result<(), DaoError> {
        if self.hidden == 0 {
            return Err(DaoError::InvalidConfig("dao.hidden must be > 0".into()));
        }
        check_lr("dao.lr", self.lr)?;
        check_alpha_beta(self.alpha_init, self.beta_init)
    }
}

/// Constant weights: `L = (1 − w_c) L_r + w_c L_c` (the paper's baseline).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConstantConfig {
    /// The classification weight, in [0, 1]; the paper's headline baseline uses 0.1.
    pub w_c: f32,
}

impl Default for ConstantConfig {
    fn default() -> Self {
        Self { w_c: 0.1 }
    }
}

/// Uncertainty weighting (Kendall, Gal, Cipolla 2018).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UncertaintyConfig {
    /// Learning rate of the log-variances' own Adam.
    pub lr: f64,
}

impl Default for UncertaintyConfig {
    fn default() -> Self {
        Self { lr: 1e-3 }
    }
}

/// Dynamic weight averaging (Liu, Johns, Davison 2019).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DwaConfig {
    /// Softmax temperature T (the paper uses 2).
    pub temperature: f32,
}

impl Default for DwaConfig {
    fn default() -> Self {
        Self { temperature: 2.0 }
    }
}

/// GradNorm (Chen, Badrinarayanan, Lee, Rabinovich 2018).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GradNormConfig {
    /// Asymmetry α (the paper's default range is 0.12–3; 1.5 is common).
    pub alpha: f32,
    /// Step size of the plain gradient step on the task weights.
    pub lr: f32,
    /// What the per-task gradient norms are taken with respect to.
    pub grad_norm_wrt: GradNormWrt,
}

impl Default for GradNormConfig {
    fn default() -> Self {
        Self {
            alpha: 1.5,
            lr: 0.025,
            grad_norm_wrt: GradNormWrt::Representation,
        }
    }
}

/// DAO ablation: gradient balance only, `L = λ_r L_r + λ_c L_c` (step 1 alone).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GradBalanceOnlyConfig {
    /// What the gradient norms are taken with respect to.
    pub grad_norm_wrt: GradNormWrt,
}

/// DAO ablation: imbalance loss only, `L = (1 − w_c) L_r + w_c L_imb` (step 2 alone, in place of
/// L_c in the constant baseline).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImbalanceOnlyConfig {
    /// The constant classification weight.
    pub w_c: f32,
    /// Learning rate of α, β's own Adam.
    pub lr: f64,
    /// Initial α, > 0.
    pub alpha_init: f32,
    /// Initial β, in (0, 1).
    pub beta_init: f32,
    /// Whether α and β are trained.
    pub learn_alpha_beta: bool,
}

impl Default for ImbalanceOnlyConfig {
    fn default() -> Self {
        let dao = DaoConfig::default();
        Self {
            w_c: ConstantConfig::default().w_c,
            lr: dao.lr,
            alpha_init: dao.alpha_init,
            beta_init: dao.beta_init,
            learn_alpha_beta: dao.learn_alpha_beta,
        }
    }
}

/// Which weighting strategy a run uses, with its settings. In a config file the `strategy` key
/// names it and the remaining keys are that strategy's fields (all optional):
///
/// ```
/// let cfg: dao::StrategyConfig =
///     serde_json::from_str(r#"{"strategy": "dao", "hidden": 16, "grad_norm_wrt": "representation"}"#).unwrap();
/// assert_eq!(cfg.name(), "dao");
/// assert_eq!(dao::StrategyConfig::from_name("constant").unwrap(), dao::StrategyConfig::Constant(Default::default()));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "kebab-case")]
pub enum StrategyConfig {
    /// `L = L_r`.
    RegressionOnly,
    /// `L = (1 − w_c) L_r + w_c L_c`.
    Constant(ConstantConfig),
    /// DAO, DAO-SPEC steps 1–5.
    Dao(DaoConfig),
    /// Homoscedastic uncertainty weighting.
    Uncertainty(UncertaintyConfig),
    /// Dynamic weight averaging.
    Dwa(DwaConfig),
    /// GradNorm.
    Gradnorm(GradNormConfig),
    /// DAO step 1 alone.
    DaoGradBalanceOnly(GradBalanceOnlyConfig),
    /// DAO step 2 alone.
    DaoImbalanceOnly(ImbalanceOnlyConfig),
}

impl StrategyConfig {
    /// Every strategy name, as config strings spell them.
    pub const NAMES: [&'static str; 8] = [
        "regression-only",
        "constant",
        "dao",
        "uncertainty",
        "dwa",
        "gradnorm",
        "dao-grad-balance-only",
        "dao-imbalance-only",
    ];

    /// The strategy of that name with its default settings.
    pub fn from_name(name: &str) -> Result<Self, DaoError> {
        Ok(match name.trim() {
            "regression-only" => Self::RegressionOnly,
            "constant" => Self::Constant(ConstantConfig::default()),
            "dao" => Self::Dao(DaoConfig::default()),
            "uncertainty" => Self::Uncertainty(UncertaintyConfig::default()),
            "dwa" => Self::Dwa(DwaConfig::default()),
            "gradnorm" => Self::Gradnorm(GradNormConfig::default()),
            "dao-grad-balance-only" => Self::DaoGradBalanceOnly(GradBalanceOnlyConfig::default()),
            "dao-imbalance-only" => Self::DaoImbalanceOnly(ImbalanceOnlyConfig::default()),
            other => return Err(DaoError::UnknownStrategy(other.to_string())),
        })
    }

    /// The config-string name of this strategy.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RegressionOnly => "regression-only",
            Self::Constant(_) => "constant",
            Self::Dao(_) => "dao",
            Self::Uncertainty(_) => "uncertainty",
            Self::Dwa(_) => "dwa",
            Self::Gradnorm(_) => "gradnorm",
            Self::DaoGradBalanceOnly(_) => "dao-grad-balance-only",
            Self::DaoImbalanceOnly(_) => "dao-imbalance-only",
        }
    }

    /// Checks every field's domain.
    pub fn validate(&self) -> Result<(), DaoError> {
        match self {
            Self::RegressionOnly | Self::DaoGradBalanceOnly(_) => Ok(()),
            Self::Constant(c) => check_unit("constant.w_c", c.w_c),
            Self::Dao(c) => c.validate(),
            Self::Uncertainty(c) => check_lr("uncertainty.lr", c.lr),
            Self::Dwa(c) => {
                if c.temperature.is_finite() && c.temperature > 0.0 {
                    Ok(())
                } else {
                    Err(DaoError::InvalidConfig(format!(
                        "dwa.temperature must be > 0, got {}",
                        c.temperature
                    )))
                }
            }
            Self::Gradnorm(c) => {
                check_lr("gradnorm.lr", f64::from(c.lr))?;
                if c.alpha.is_finite() && c.alpha >= 0.0 {
                    Ok(())
                } else {
                    Err(DaoError::InvalidConfig(format!(
                        "gradnorm.alpha must be >= 0, got {}",
                        c.alpha
                    )))
                }
            }
            Self::DaoImbalanceOnly(c) => {
                check_unit("dao-imbalance-only.w_c", c.w_c)?;
                check_lr("dao-imbalance-only.lr", c.lr)?;
                check_alpha_beta(c.alpha_init, c.beta_init)
            }
        }
    }
}

impl FromStr for StrategyConfig {
    type Err = DaoError;

    fn from_str(name: &str) -> Result<Self, DaoError> {
        Self::from_name(name)
    }
}

fn check_lr(what: &str, lr: f64) -> Result<(), DaoError> {
    if lr.is_finite() && lr > 0.0 {
        Ok(())
    } else {
        Err(DaoError::InvalidConfig(format!(
            "{what} must be > 0, got {lr}"
        )))
    }
}

fn check_unit(what: &str, w: f32) -> Result<(), DaoError> {
    if (0.0..=1.0).contains(&w) {
        Ok(())
    } else {
        Err(DaoError::InvalidConfig(format!(
            "{what} must be in [0, 1], got {w}"
        )))
    }
}

fn check_alpha_beta(alpha: f32, beta: f32) -> Result<(), DaoError> {
    // α = softplus(a) > 0 and β = sigmoid(b) ∈ (0, 1): other initial values have no raw parameter.
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(DaoError::InvalidConfig(format!(
            "alpha_init must be > 0 (α = softplus(a)), got {alpha}"
        )));
    }
    if !(beta > 0.0 && beta < 1.0) {
        return Err(DaoError::InvalidConfig(format!(
            "beta_init must be in (0, 1) (β = sigmoid(b)), got {beta}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        for name in StrategyConfig::NAMES {
            let cfg = StrategyConfig::from_name(name).unwrap();
            assert_eq!(cfg.name(), name);
            cfg.validate().unwrap();
        }
        assert!(matches!(
            StrategyConfig::from_name("dao2"),
            Err(DaoError::UnknownStrategy(_))
        ));
    }

    #[test]
    fn defaults_are_the_spec_values() {
        let c = DaoConfig::default();
        assert_eq!(
            (c.hidden, c.lr, c.alpha_init, c.beta_init),
            (16, 1e-3, 0.1, 0.5)
        );
        assert!(c.learn_alpha_beta);
        assert_eq!(c.grad_norm_wrt, GradNormWrt::Representation);
    }

    #[test]
    fn out_of_domain_values_are_errors() {
        let bad = DaoConfig {
            beta_init: 1.0,
            ..DaoConfig::default()
        };
        assert!(matches!(bad.validate(), Err(DaoError::InvalidConfig(_))));
        let bad = StrategyConfig::Constant(ConstantConfig { w_c: 1.5 });
        assert!(bad.validate().is_err());
    }
}
