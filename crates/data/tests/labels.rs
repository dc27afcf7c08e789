//! The class map against the labels the PyTorch reference derived from the same scores
//! (`fixtures/dao_golden.json` cases, boundary scores 0.5, 0.049, −0.049, −0.5 among them, and
//! `golden.json`'s `dao_step`).

use data::{score_class, ClassThresholds};
use testkit::{read_json, shared_file, tensor_f32, tensor_i64};

#[test]
fn classes_match_the_reference_labels() {
    let Some(dao_golden) = shared_file(
        "classes_match_the_reference_labels",
        "fixtures/dao_golden.json",
    ) else {
        return;
    };
    let Some(golden) = shared_file("classes_match_the_reference_labels", "fixtures/golden.json")
    else {
        return;
    };
    let dao_golden = read_json(&dao_golden);
    let golden = read_json(&golden);
    let mut pairs: Vec<(Vec<f32>, Vec<i64>)> = dao_golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            (
                tensor_f32(&case["inputs"]["y"]).1,
                tensor_i64(&case["labels"]).1,
            )
        })
        .collect();
    let step = &golden["dao_step"];
    pairs.push((tensor_f32(&step["y"]).1, tensor_i64(&step["labels"]).1));
    let thresholds = ClassThresholds::default();
    let mut compared = 0;
    for (scores, labels) in &pairs {
        assert_eq!(scores.len(), labels.len());
        for (y, label) in scores.iter().zip(labels) {
            assert_eq!(i64::from(score_class(*y, &thresholds)), *label, "y = {y}");
            compared += 1;
        }
    }
    assert_eq!(compared, 34, "three cases of 10 and the step's 4");
    let boundaries = pairs[0]
        .0
        .iter()
        .filter(|y| [0.5, 0.049, -0.049, -0.5].contains(*y));
    assert_eq!(boundaries.count(), 4, "every boundary score is among them");
}
