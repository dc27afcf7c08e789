//! The seeded train/validation split by unique text (DAO-SPEC.md, Data: 9:1, seed 42).

use std::collections::HashMap;

use crate::error::DataError;
use crate::load::Example;
use crate::rng::SplitMix64;

/// The key under which texts count as the same: lower-cased alphanumeric characters, so that
/// case, punctuation and spacing variants of one headline stay on one side (the text itself
/// when it has no alphanumeric character).
pub fn text_key(text: &str) -> String {
    let key: String = text
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    if key.is_empty() {
        text.to_string()
    } else {
        key
    }
}

/// Splits `examples` into (train, valid) so that no text is in both: the unique texts (by
/// [`text_key`]) are shuffled with `seed` and the first `round(valid_fraction × texts)` of them
/// (at least one, never all) go to validation with every row that carries them. Rows keep
/// their file order within each part.
pub fn split_by_text(
    examples: Vec<Example>,
    valid_fraction: f32,
    seed: u64,
) -> Result<(Vec<Example>, Vec<Example>), DataError> {
    if !(valid_fraction > 0.0 && valid_fraction < 1.0) {
        return Err(DataError::Split(format!(
            "valid_fraction {valid_fraction} must be in (0, 1)"
        )));
    }
    // Unique texts in order of first appearance, so the result depends on the seed and the
    // file only, not on hash-map iteration order.
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut group_of = Vec::with_capacity(examples.len());
    for example in &examples {
        let next = ids.len();
        group_of.push(*ids.entry(text_key(&example.text)).or_insert(next));
    }
    let groups = ids.len();
    if groups < 2 {
        return Err(DataError::Split(format!(
            "{groups} unique text(s): a split needs at least 2 (or give a validation file)"
        )));
    }
    let mut order: Vec<usize> = (0..groups).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    let n_valid =
        ((groups as f64 * f64::from(valid_fraction)).round() as usize).clamp(1, groups - 1);
    let mut in_valid = vec![false; groups];
    for &g in &order[..n_valid] {
        in_valid[g] = true;
    }
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for (example, group) in examples.into_iter().zip(group_of) {
        if in_valid[group] {
            valid.push(example);
        } else {
            train.push(example);
        }
    }
    Ok((train, valid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(text: &str, line: u64) -> Example {
        Example {
            text: text.into(),
            target: None,
            score: 0.0,
            class: 2,
            line,
        }
    }

    fn rows() -> Vec<Example> {
        (0..200)
            .map(|i| row(&format!("Headline number {}", i % 70), i))
            .collect()
    }

    #[test]
    fn no_text_in_both_parts_and_fraction_of_texts() {
        let (train, valid) = split_by_text(rows(), 0.1, 42).unwrap();
        assert_eq!(train.len() + valid.len(), 200);
        let keys = |part: &[Example]| {
            part.iter()
                .map(|e| text_key(&e.text))
                .collect::<std::collections::HashSet<_>>()
        };
        let (tk, vk) = (keys(&train), keys(&valid));
        assert!(tk.is_disjoint(&vk));
        assert_eq!(vk.len(), 7); // round(70 × 0.1)
        assert_eq!(tk.len(), 63);
    }

    #[test]
    fn case_and_punctuation_variants_stay_together() {
        let mut examples = rows();
        examples.push(row("HEADLINE number 3!", 999));
        let (train, valid) = split_by_text(examples, 0.5, 1).unwrap();
        let side_of = |part: &[Example], text: &str| part.iter().any(|e| e.text == text);
        assert_eq!(
            side_of(&train, "Headline number 3"),
            side_of(&train, "HEADLINE number 3!")
        );
        assert_eq!(
            side_of(&valid, "Headline number 3"),
            side_of(&valid, "HEADLINE number 3!")
        );
    }

    #[test]
    fn same_seed_same_split_other_seed_other_split() {
        let lines = |part: Vec<Example>| part.iter().map(|e| e.line).collect::<Vec<_>>();
        let (a_train, a_valid) = split_by_text(rows(), 0.1, 42).unwrap();
        let (b_train, b_valid) = split_by_text(rows(), 0.1, 42).unwrap();
        let (_, c_valid) = split_by_text(rows(), 0.1, 43).unwrap();
        assert_eq!(lines(a_train), lines(b_train));
        let a_valid = lines(a_valid);
        assert_eq!(a_valid, lines(b_valid));
        assert_ne!(a_valid, lines(c_valid));
        // Rows keep file order within a part.
        assert!(a_valid.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_single_text_cannot_be_split() {
        let examples = vec![row("same", 1), row("same", 2)];
        let error = split_by_text(examples, 0.1, 42).unwrap_err().to_string();
        assert!(error.contains("1 unique text"), "{error}");
        assert!(split_by_text(rows(), 1.0, 42).is_err());
    }
}
