//! The LoRA settings ([`LoraConfig`]) and the subset of PEFT's `adapter_config.json` we read
//! and write ([`PeftAdapterConfig`]).

use serde::{Deserialize, Serialize};

use crate::LoraError;

/// How every adapted projection is adapted, and which projections are.
///
/// `targets` are names the model resolves (the `encoder` crate accepts its aliases `query`,
/// `key`, `value`, `attention_output`, `intermediate`, `output` and PEFT-style module-name
/// suffixes such as `dense`); this crate never interprets them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// `r`, the rank of the update `BA` (≥ 1).
    pub rank: usize,
    /// `α_lora`; the update is scaled by `α/r` (or `α/√r` with rsLoRA).
    pub alpha: f64,
    /// Dropout probability on the adapter's input only, in `[0, 1)`.
    pub dropout: f64,
    /// Which projections get an adapter.
    pub targets: Vec<String>,
    /// rsLoRA: scale by `α/√r` instead of `α/r`.
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    /// The paper's setting at its smallest rank: `r = α = 8`, dropout 0.05, every attention
    /// and feed-forward projection.
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 8.0,
            dropout: 0.05,
            targets: [
                "query",
                "key",
                "value",
                "attention_output",
                "intermediate",
                "output",
            ]
            .map(String::from)
            .to_vec(),
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// A config of rank `rank` with `α = rank` (scaling 1, as in the paper) and the default
    /// dropout and targets.
    pub fn with_rank(rank: usize) -> Self {
        Self {
            rank,
            alpha: rank as f64,
            ..Self::default()
        }
    }

    /// Checks every field, naming the first that is out of range.
    pub fn validate(&self) -> Result<(), LoraError> {
        self.validate_adapter()?;
        let bad = |m: String| Err(LoraError::InvalidConfig(m));
        if self.targets.is_empty() {
            return bad("targets is empty: name at least one projection".into());
        }
        if let Some(t) = self.targets.iter().find(|t| t.trim().is_empty()) {
            return bad(format!("target {t:?} is blank"));
        }
        Ok(())
    }

    /// Checks what one adapter uses (rank, α, dropout): [`LoraLinear::with_adapter`] on a
    /// single layer needs no `targets`, which only say which layers of a model to adapt.
    ///
    /// [`LoraLinear::with_adapter`]: crate::LoraLinear::with_adapter
    pub fn validate_adapter(&self) -> Result<(), LoraError> {
        let bad = |m: String| Err(LoraError::InvalidConfig(m));
        if self.rank == 0 {
            return bad("rank must be at least 1".into());
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return bad(format!("alpha must be finite and > 0, got {}", self.alpha));
        }
        if !self.dropout.is_finite() || !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    /// The factor of the update: `α/r`, or `α/√r` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

/// PEFT's `target_modules`: a list of module-name suffixes, or one regular expression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PeftTargets {
    /// Module-name suffixes (`["query", "value"]`): a module is adapted when its name ends
    /// with one of them.
    List(Vec<String>),
    /// One regular expression over the modules' names (PEFT's form; refused here by
    /// [`PeftAdapterConfig::to_lora_config`]: list the names instead).
    Regex(String),
}

/// The fields of PEFT's `adapter_config.json` (LoRA) that decide the function; others are
/// ignored on read. Fields PEFT writes but we cannot honour (DoRA, per-module ranks, trained
/// biases, `fan_in_fan_out`) make [`PeftAdapterConfig::to_lora_config`] fail rather than load
/// a different function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftAdapterConfig {
    /// `"LORA"` (any other adapter type is refused).
    pub peft_type: String,
    /// The rank r.
    pub r: usize,
    /// α: the update is scaled by α / r (α / √r with `use_rslora`).
    pub lora_alpha: f64,
    /// Dropout on the adapter's input while training.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Which modules carry an adapter.
    pub target_modules: PeftTargets,
    /// Rank-stabilised scaling, α / √r.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA (weight-decomposed LoRA): refused when true.
    #[serde(default)]
    pub use_dora: bool,
    /// Which biases train (`"none"`; anything else is refused).
    #[serde(default = "bias_none")]
    pub bias: String,
    /// Weights stored `[in, out]` (GPT-2's `Conv1D`): refused when true.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Whole modules saved beside the adapter (our heads).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Per-module ranks: refused when not empty.
    #[serde(default)]
    pub rank_pattern: serde_json::Map<String, serde_json::Value>,
    /// Per-module α: refused when not empty.
    #[serde(default)]
    pub alpha_pattern: serde_json::Map<String, serde_json::Value>,
    /// The base model the adapter was trained on (informative).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Whether PEFT saved it for inference only (informative).
    #[serde(default)]
    pub inference_mode: bool,
}

fn bias_none() -> String {
    "none".into()
}

impl PeftAdapterConfig {
    /// Parses the text of an `adapter_config.json`.
    pub fn from_json(text: &str) -> Result<Self, LoraError> {
        serde_json::from_str(text).map_err(|e| LoraError::UnsupportedPeft(e.to_string()))
    }

    /// The equivalent [`LoraConfig`] (validated), or why there is none.
    pub fn to_lora_config(&self) -> Result<LoraConfig, LoraError> {
        let unsupported = |m: &str| Err(LoraError::UnsupportedPeft(m.into()));
        if self.peft_type != "LORA" {
            return Err(LoraError::UnsupportedPeft(format!(
                "peft_type is {:?}, only \"LORA\" is supported",
                self.peft_type
            )));
        }
        if self.use_dora {
            return unsupported("use_dora = true (DoRA)");
        }
        if self.bias != "none" {
            return unsupported("bias other than \"none\" (trained biases)");
        }
        if self.fan_in_fan_out {
            return unsupported("fan_in_fan_out = true (Conv1D-style weights)");
        }
        if !self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty() {
            return unsupported("rank_pattern / alpha_pattern (per-module ranks)");
        }
        let targets = match &self.target_modules {
            PeftTargets::List(list) => list.clone(),
            PeftTargets::Regex(_) => {
                return unsupported("target_modules given as a regular expression; list the names")
            }
        };
        let config = LoraConfig {
            rank: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets,
            use_rslora: self.use_rslora,
        };
        config.validate()?;
        Ok(config)
    }

    /// The adapter config PEFT writes for `config`, listing `modules_to_save` (the heads saved
    /// in the same file).
    pub fn from_lora_config(config: &LoraConfig, modules_to_save: &[String]) -> Self {
        Self {
            peft_type: "LORA".into(),
            r: config.rank,
            lora_alpha: config.alpha,
            lora_dropout: config.dropout,
            target_modules: PeftTargets::List(config.targets.clone()),
            use_rslora: config.use_rslora,
            use_dora: false,
            bias: bias_none(),
            fan_in_fan_out: false,
            modules_to_save: (!modules_to_save.is_empty()).then(|| modules_to_save.to_vec()),
            rank_pattern: Default::default(),
            alpha_pattern: Default::default(),
            base_model_name_or_path: None,
            inference_mode: true,
        }
    }

    /// Pretty JSON text for `adapter_config.json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a config of strings and numbers serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_is_alpha_over_rank_or_over_its_root() {
        let mut c = LoraConfig {
            rank: 16,
            alpha: 32.0,
            ..LoraConfig::default()
        };
        assert_eq!(c.scaling(), 2.0);
        c.use_rslora = true;
        assert_eq!(c.scaling(), 8.0);
    }

    #[test]
    fn validation_names_the_bad_field() {
        let cases: [(LoraConfig, &str); 4] = [
            (
                LoraConfig {
                    rank: 0,
                    ..Default::default()
                },
                "rank",
            ),
            (
                LoraConfig {
                    alpha: f64::NAN,
                    ..Default::default()
                },
                "alpha",
            ),
            (
                LoraConfig {
                    dropout: 1.0,
                    ..Default::default()
                },
                "dropout",
            ),
            (
                LoraConfig {
                    targets: vec![],
                    ..Default::default()
                },
                "targets",
            ),
        ];
        for (config, field) in cases {
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains(field), "{message}");
        }
        LoraConfig::default().validate().unwrap();
    }

    #[test]
    fn peft_config_round_trips_and_refuses_dora() {
        let config = LoraConfig::with_rank(4);
        let peft = PeftAdapterConfig::from_lora_config(&config, &["regression_head".into()]);
        let back = PeftAdapterConfig::from_json(&peft.to_json()).unwrap();
        assert_eq!(back.to_lora_config().unwrap(), config);
        assert_eq!(
            back.modules_to_save,
            Some(vec!["regression_head".to_string()])
        );
        let dora = PeftAdapterConfig {
            use_dora: true,
            ..back
        };
        assert!(dora
            .to_lora_config()
            .unwrap_err()
            .to_string()
            .contains("DoRA"));
    }
}
