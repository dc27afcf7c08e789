//! `load_splits`: an explicit validation file, or a seeded split by text; rejected rows go to
//! the run's output folder.

use std::path::PathBuf;

use data::{load_splits, text_key, BadRowPolicy, DataConfig};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("data-splits-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rows(n: usize, bad_every: usize) -> String {
    (0..n)
        .map(|i| {
            if bad_every > 0 && i % bad_every == bad_every - 1 {
                format!("{{\"text\": \"bad {i}\", \"score\": 3}}\n")
            } else {
                // Every text twice, with two targets and different scores.
                let y = ((i * 37) % 200) as f32 / 100.0 - 1.0;
                format!(
                    "{{\"text\": \"Headline {}\", \"target\": \"T{}\", \"score\": {y}}}\n",
                    i / 2,
                    i % 2
                )
            }
        })
        .collect()
}

#[test]
fn explicit_validation_file_and_rejects_in_output_dir() {
    let dir = scratch("explicit");
    std::fs::write(dir.join("train.jsonl"), rows(40, 10)).unwrap();
    std::fs::write(dir.join("valid.jsonl"), rows(10, 0)).unwrap();
    let out = dir.join("run");
    let config = DataConfig {
        train: dir.join("train.jsonl"),
        valid: Some(dir.join("valid.jsonl")),
        on_bad_row: BadRowPolicy::Skip,
        ..DataConfig::default()
    };
    let splits = load_splits(&config, Some(&out)).unwrap();
    assert!(!splits.split_from_train);
    assert_eq!((splits.train.len(), splits.train.rejected), (36, 4));
    assert_eq!((splits.valid.len(), splits.valid.rejected), (10, 0));
    let rejected = std::fs::read_to_string(out.join("train.rejected.jsonl")).unwrap();
    assert_eq!(rejected.lines().count(), 4);
    assert!(!dir.join("train.rejected.jsonl").exists());
}

#[test]
fn files_named_alike_keep_their_rejected_lines_apart() {
    let dir = scratch("alike");
    for (sub, bad_every) in [("a", 10), ("b", 5)] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::write(dir.join(sub).join("x.jsonl"), rows(20, bad_every)).unwrap();
    }
    let out = dir.join("run");
    let config = DataConfig {
        train: dir.join("a/x.jsonl"),
        valid: Some(dir.join("b/x.jsonl")),
        on_bad_row: BadRowPolicy::Skip,
        ..DataConfig::default()
    };
    let splits = load_splits(&config, Some(&out)).unwrap();
    assert_eq!((splits.train.rejected, splits.valid.rejected), (2, 4));
    let count = |name: &str| {
        std::fs::read_to_string(out.join(name))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(
        (count("x.rejected.jsonl"), count("x.valid.rejected.jsonl")),
        (2, 4)
    );
    assert_eq!(
        splits.valid.rejected_file.as_deref(),
        Some(out.join("x.valid.rejected.jsonl").as_path())
    );
    // The validation file loaded alone (as `evaluate` does), clean now: the training file's
    // rejected lines stay (a clean load removes its own rejected file, and only its own).
    std::fs::write(dir.join("b/x.jsonl"), rows(20, 0)).unwrap();
    let options = data::LoadOptions {
        rejected_dir: Some(out.clone()),
        ..config.load_options()
    };
    let alone = data::validation_options(&options, &dir.join("b/x.jsonl"), &config.train);
    assert_eq!(
        data::load(&dir.join("b/x.jsonl"), &alone).unwrap().rejected,
        0
    );
    assert_eq!(count("x.rejected.jsonl"), 2);
    assert!(!out.join("x.valid.rejected.jsonl").exists());
}

#[test]
fn seeded_split_keeps_texts_apart_and_is_repeatable() {
    let dir = scratch("seeded");
    std::fs::write(dir.join("train.jsonl"), rows(400, 0)).unwrap();
    let config = DataConfig {
        train: dir.join("train.jsonl"),
        ..DataConfig::default()
    };
    let a = load_splits(&config, None).unwrap();
    let b = load_splits(&config, None).unwrap();
    assert_eq!(a, b);
    assert!(a.split_from_train);
    // 200 texts, 20 to validation, each with both of its rows.
    assert_eq!((a.train.len(), a.valid.len()), (360, 40));
    let keys = |d: &data::Dataset| {
        d.examples
            .iter()
            .map(|e| text_key(&e.text))
            .collect::<std::collections::HashSet<_>>()
    };
    assert!(keys(&a.train).is_disjoint(&keys(&a.valid)));
    let other = load_splits(&DataConfig { seed: 1, ..config }, None).unwrap();
    assert_ne!(other.valid.examples, a.valid.examples);
}
