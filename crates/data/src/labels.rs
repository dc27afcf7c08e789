//! The 5-class label derived from the score (DAO-SPEC.md, Data).

use crate::config::ClassThresholds;

/// Number of sentiment classes.
pub const NUM_CLASSES: usize = 5;

/// What each class stands for, from the most negative scores (0) to the most positive (4).
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "very negative",
    "negative",
    "neutral",
    "positive",
    "very positive",
];

/// The class `z` of a score `y`, boundaries exactly as DAO-SPEC.md writes them, in f32:
/// `4` if `y > t3`; `3` if `t2 < y ≤ t3`; `2` if `t1 ≤ y ≤ t2`; `1` if `t0 ≤ y < t1`;
/// `0` if `y < t0` (defaults `t = [-0.5, -0.049, 0.049, 0.5]`).
pub fn score_class(y: f32, thresholds: &ClassThresholds) -> u8 {
    let [t0, t1, t2, t3] = thresholds.0;
    if y > t3 {
        4
    } else if y > t2 {
        3
    } else if y >= t1 {
        2
    } else if y >= t0 {
        1
    } else {
        0
    }
}

/// How many of `classes` fall in each class.
pub fn class_counts(classes: impl IntoIterator<Item = u8>) -> [usize; NUM_CLASSES] {
    let mut counts = [0; NUM_CLASSES];
    for c in classes {
        counts[c as usize] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(y: f32) -> u8 {
        score_class(y, &ClassThresholds::default())
    }

    #[test]
    fn boundaries_fall_where_the_spec_writes_them() {
        // ±0.5: 0.5 is class 3 (y ≤ 0.5), -0.5 is class 1 (-0.5 ≤ y).
        assert_eq!(class(0.5), 3);
        assert_eq!(class(-0.5), 1);
        // ±0.049: both inside the neutral class 2.
        assert_eq!(class(0.049), 2);
        assert_eq!(class(-0.049), 2);
        // The next f32 beyond each boundary changes class.
        let up = |x: f32| f32::from_bits(x.to_bits() + 1);
        assert_eq!(class(up(0.5)), 4);
        assert_eq!(class(-up(0.5)), 0);
        assert_eq!(class(up(0.049)), 3);
        assert_eq!(class(-up(0.049)), 1);
        // Ends and middle.
        assert_eq!(class(1.0), 4);
        assert_eq!(class(-1.0), 0);
        assert_eq!(class(0.0), 2);
        assert_eq!(class(0.05), 3);
        assert_eq!(class(-0.05), 1);
    }

    #[test]
    fn parsed_decimal_scores_compare_in_f32() {
        // "0.049" read as f64 then rounded to f32 equals the f32 threshold: class 2. In f64
        // the same comparison against 0.049f32 (≈ 0.04899999871) would put it in class 3.
        let y: f64 = "0.049".parse().unwrap();
        assert!(y > f64::from(0.049f32));
        assert_eq!(class(y as f32), 2);
        let y: f64 = "-0.049".parse().unwrap();
        assert_eq!(class(y as f32), 2);
    }

    #[test]
    fn custom_thresholds_apply() {
        let t = ClassThresholds([-0.6, -0.1, 0.1, 0.6]);
        assert_eq!(score_class(0.1, &t), 2);
        assert_eq!(score_class(0.6, &t), 3);
        assert_eq!(score_class(-0.6, &t), 1);
        assert_eq!(score_class(-0.61, &t), 0);
        assert_eq!(score_class(0.3, &t), 3);
    }

    #[test]
    fn counts_per_class() {
        assert_eq!(class_counts([0, 4, 4, 2, 3, 3, 3]), [1, 0, 1, 3, 2]);
    }
}
