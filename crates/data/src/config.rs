//! The `[data]` section of a run config.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// What the encoder sees of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum InputMode {
    /// The text alone.
    #[default]
    #[serde(rename = "text")]
    Text,
    /// Text and target as a sentence pair through the tokenizer's pair template
    /// (`<s> text </s></s> target </s>`, `[CLS] text [SEP] target [SEP]`): needed to tell apart
    /// the rows of one text that scores several targets differently.
    #[serde(rename = "text+target")]
    TextTarget,
}

impl InputMode {
    /// Parses `text` or `text+target` (the config spelling).
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "text" => Some(Self::Text),
            "text+target" => Some(Self::TextTarget),
            _ => None,
        }
    }
}

/// What to do with a row that fails validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadRowPolicy {
    /// Stop at the first bad row with an error naming its line.
    #[default]
    Error,
    /// Keep the good rows; write each bad line unchanged to `<input stem>.rejected.<ext>` and
    /// report how many.
    Skip,
}

impl BadRowPolicy {
    /// Parses `error` or `skip`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "error" => Some(Self::Error),
            "skip" => Some(Self::Skip),
            _ => None,
        }
    }
}

/// The four class boundaries `[t0, t1, t2, t3]` of the 5-class label (DAO-SPEC.md, Data),
/// compared in f32: class 4 if `y > t3`; 3 if `t2 < y ≤ t3`; 2 if `t1 ≤ y ≤ t2`;
/// 1 if `t0 ≤ y < t1`; 0 if `y < t0`. Default `[-0.5, -0.049, 0.049, 0.5]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClassThresholds(pub [f32; 4]);

impl Default for ClassThresholds {
    fn default() -> Self {
        Self([-0.5, -0.049, 0.049, 0.5])
    }
}

/// The data section of a run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Training file (JSON Lines, CSV or TSV).
    pub train: PathBuf,
    /// Validation file; when absent, a seeded split of `train` by unique text.
    pub valid: Option<PathBuf>,
    /// Fraction of the unique texts of `train` held out for validation when `valid` is absent.
    pub valid_fraction: f32,
    /// Seed of the split and of the batch order.
    pub seed: u64,
    /// `text` or `text+target`.
    pub input: InputMode,
    /// `error` or `skip`.
    pub on_bad_row: BadRowPolicy,
    pub text_field: String,
    pub score_field: String,
    /// Optional per row, except with `input = "text+target"`.
    pub target_field: String,
    /// Truncation length in tokens, special tokens included.
    pub max_len: usize,
    /// Shuffle the rows every epoch.
    pub shuffle: bool,
    /// Length-bucketed batching: rows sorted by length within windows of
    /// `bucket_window` batches (after the shuffle), so batches carry little padding.
    pub bucket: bool,
    /// Batches per sorting window when `bucket` is on.
    pub bucket_window: usize,
    /// Folder for the on-disk token cache (keyed by tokenizer and data hash); none = memory only.
    pub cache_dir: Option<PathBuf>,
    pub thresholds: ClassThresholds,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: PathBuf::new(),
            valid: None,
            valid_fraction: 0.1,
            seed: 42,
            input: InputMode::Text,
            on_bad_row: BadRowPolicy::Error,
            text_field: "text".into(),
            score_field: "score".into(),
            target_field: "target".into(),
            max_len: 512,
            shuffle: true,
            bucket: false,
            bucket_window: 50,
            cache_dir: None,
            thresholds: ClassThresholds::default(),
        }
    }
}

impl DataConfig {
    /// Checks the values serde cannot: ranges, order of thresholds, non-empty names.
    pub fn validate(&self) -> Result<(), DataError> {
        let fail = |m: String| Err(DataError::Config(m));
        if self.train.as_os_str().is_empty() {
            return fail("`train` is required".into());
        }
        if self.valid.is_none() && !(self.valid_fraction > 0.0 && self.valid_fraction < 1.0) {
            return fail(format!(
                "valid_fraction {} must be in (0, 1)",
                self.valid_fraction
            ));
        }
        for (name, value) in [
            ("text_field", &self.text_field),
            ("score_field", &self.score_field),
            ("target_field", &self.target_field),
        ] {
            if value.is_empty() {
                return fail(format!("{name} is empty"));
            }
        }
        if self.max_len < 2 {
            return fail(format!("max_len {} must be at least 2", self.max_len));
        }
        if self.bucket && self.bucket_window == 0 {
            return fail("bucket_window must be at least 1".into());
        }
        self.thresholds.validate()
    }

    /// The loader options of this config.
    pub fn load_options(&self) -> crate::LoadOptions {
        crate::LoadOptions {
            text_field: self.text_field.clone(),
            score_field: self.score_field.clone(),
            target_field: self.target_field.clone(),
            require_target: self.input == InputMode::TextTarget,
            on_bad_row: self.on_bad_row,
            thresholds: self.thresholds,
            rejected_dir: None,
            rejected_file: None,
        }
    }
}

impl ClassThresholds {
    /// Checks that the boundaries are finite and strictly increasing.
    pub fn validate(&self) -> Result<(), DataError> {
        let t = self.0;
        if t.iter().any(|v| !v.is_finite()) || !(t[0] < t[1] && t[1] < t[2] && t[2] < t[3]) {
            return Err(DataError::Config(format!(
                "thresholds {t:?} must be finite and strictly increasing"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_field_and_rejects_unknown_ones() {
        let config: DataConfig = serde_json::from_str(
            r#"{"train": "t.jsonl", "valid": "v.csv", "input": "text+target",
                "on_bad_row": "skip", "max_len": 128, "bucket": true, "bucket_window": 20,
                "thresholds": [-0.6, -0.1, 0.1, 0.6], "text_field": "sentence"}"#,
        )
        .unwrap();
        assert_eq!(config.input, InputMode::TextTarget);
        assert_eq!(config.on_bad_row, BadRowPolicy::Skip);
        assert_eq!(config.thresholds, ClassThresholds([-0.6, -0.1, 0.1, 0.6]));
        assert_eq!(config.text_field, "sentence");
        assert_eq!(config.score_field, "score");
        assert_eq!((config.valid_fraction, config.seed), (0.1, 42));
        config.validate().unwrap();

        let unknown = serde_json::from_str::<DataConfig>(r#"{"train": "t", "bogus": 1}"#);
        assert!(unknown.unwrap_err().to_string().contains("bogus"));
        assert!(serde_json::from_str::<DataConfig>(r#"{"input": "target"}"#).is_err());
    }

    #[test]
    fn validate_names_the_bad_value() {
        let base = DataConfig {
            train: "t.jsonl".into(),
            ..DataConfig::default()
        };
        base.validate().unwrap();
        let bad = |c: DataConfig, what: &str| {
            let message = c.validate().unwrap_err().to_string();
            assert!(message.contains(what), "{message}");
        };
        bad(
            DataConfig {
                valid_fraction: 1.0,
                ..base.clone()
            },
            "valid_fraction",
        );
        bad(
            DataConfig {
                max_len: 1,
                ..base.clone()
            },
            "max_len",
        );
        bad(
            DataConfig {
                thresholds: ClassThresholds([-0.5, 0.1, 0.049, 0.5]),
                ..base.clone()
            },
            "increasing",
        );
        bad(
            DataConfig {
                train: PathBuf::new(),
                ..base
            },
            "train",
        );
    }
}
