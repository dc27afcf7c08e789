//! The one place where the run configuration's sections become the model crates' own configs
//! (`data::DataConfig`, `lora::LoraConfig`, `heads::HeadsConfig`, `dao::StrategyConfig`). The
//! TOML keys stay those of [`RunConfig`]; the crates never see the file.

use crate::config::{BadRowPolicy, GradNormWrt, InputMode, RunConfig, WeightingStrategy};

impl RunConfig {
    /// The `data` crate's config: `[data]` plus `model.max_len`, the run seed for the split
    /// and the batch order.
    pub fn data_config(&self) -> data::DataConfig {
        data::DataConfig {
            train: self.data.train.clone(),
            valid: self.data.valid.clone(),
            valid_fraction: self.data.valid_fraction as f32,
            seed: self.train.seed,
            input: match self.data.input {
                InputMode::Text => data::InputMode::Text,
                InputMode::TextTarget => data::InputMode::TextTarget,
            },
            on_bad_row: match self.data.on_bad_row {
                BadRowPolicy::Error => data::BadRowPolicy::Error,
                BadRowPolicy::Skip => data::BadRowPolicy::Skip,
            },
            text_field: self.data.text_field.clone(),
            score_field: self.data.score_field.clone(),
            target_field: self.data.target_field.clone(),
            thresholds: data::ClassThresholds(self.data.thresholds),
            max_len: self.model.max_len,
            ..data::DataConfig::default()
        }
    }

    /// The `lora` crate's config (`alpha` resolved to `rank` when absent).
    pub fn lora_config(&self) -> lora::LoraConfig {
        lora::LoraConfig {
            rank: self.lora.rank,
            alpha: self.lora.alpha(),
            dropout: self.lora.dropout,
            targets: self.lora.targets.clone(),
            ..lora::LoraConfig::default()
        }
    }

    /// The `heads` crate's config (5 classes, DAO-SPEC "Data").
    pub fn heads_config(&self) -> heads::HeadsConfig {
        heads::HeadsConfig {
            hidden: self.heads.hidden,
            dropout: self.heads.dropout,
            ..heads::HeadsConfig::default()
        }
    }

    /// The `dao` crate's strategy config from `[weighting]` and `[dao]`.
    pub fn strategy_config(&self) -> dao::StrategyConfig {
        let wrt = match self.dao.grad_norm_wrt {
            GradNormWrt::Representation => dao::GradNormWrt::Representation,
            GradNormWrt::SharedParameters => dao::GradNormWrt::SharedParameters,
        };
        let dao_config = dao::DaoConfig {
            hidden: self.dao.hidden,
            lr: self.dao.lr,
            alpha_init: self.dao.alpha_init as f32,
            beta_init: self.dao.beta_init as f32,
            learn_alpha_beta: self.dao.learn_alpha_beta,
            grad_norm_wrt: wrt,
        };
        let w_c = self.weighting.constant_w_cls as f32;
        match self.weighting.strategy {
            WeightingStrategy::RegressionOnly => dao::StrategyConfig::RegressionOnly,
            WeightingStrategy::Constant => {
                dao::StrategyConfig::Constant(dao::ConstantConfig { w_c })
            }
            WeightingStrategy::Dao => dao::StrategyConfig::Dao(dao_config),
            WeightingStrategy::Uncertainty => {
                dao::StrategyConfig::Uncertainty(dao::UncertaintyConfig { lr: self.dao.lr })
            }
            WeightingStrategy::Dwa => dao::StrategyConfig::Dwa(dao::DwaConfig {
                temperature: self.weighting.dwa_temperature as f32,
            }),
            WeightingStrategy::GradNorm => dao::StrategyConfig::Gradnorm(dao::GradNormConfig {
                alpha: self.weighting.gradnorm_alpha as f32,
                grad_norm_wrt: wrt,
                ..dao::GradNormConfig::default()
            }),
            WeightingStrategy::DaoGradBalanceOnly => {
                dao::StrategyConfig::DaoGradBalanceOnly(dao::GradBalanceOnlyConfig {
                    grad_norm_wrt: wrt,
                })
            }
            WeightingStrategy::DaoImbalanceOnly => {
                dao::StrategyConfig::DaoImbalanceOnly(dao::ImbalanceOnlyConfig {
                    w_c,
                    lr: dao_config.lr,
                    alpha_init: dao_config.alpha_init,
                    beta_init: dao_config.beta_init,
                    learn_alpha_beta: dao_config.learn_alpha_beta,
                })
            }
        }
    }
}
