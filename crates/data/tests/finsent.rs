//! The real data in shared/data/finsent: row counts and class distribution as its README
//! states them, checked against an independent count of the raw JSON; the split by text;
//! load + tokenize speed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use data::{
    load, split_by_text, text_key, DataConfig, Dataset, InputMode, LoadOptions, TokenizedSet,
};
use encoder::{ModelFolder, TextTokenizer};

fn finsent(test: &str, file: &str) -> Option<PathBuf> {
    testkit::shared_file(test, &format!("data/finsent/{file}"))
}

/// Class of a score written as decimal text, by a separate route: the score is compared as
/// f32 with the thresholds, without the crate's parser or label code.
fn class_of_raw(score: &str) -> usize {
    let y: f32 = score.parse().expect("score parses");
    match y {
        y if y > 0.5 => 4,
        y if y > 0.049 => 3,
        y if y >= -0.049 => 2,
        y if y >= -0.5 => 1,
        _ => 0,
    }
}

/// Rows and class counts from the raw text: the number after `"score": ` on each line.
fn raw_counts(path: &Path) -> (usize, [usize; 5]) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut counts = [0; 5];
    let mut rows = 0;
    for line in text.lines() {
        let at = line.find("\"score\": ").expect("score key") + "\"score\": ".len();
        let number: String = line[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || matches!(c, '-' | '.' | 'e' | 'E' | '+'))
            .collect();
        counts[class_of_raw(&number)] += 1;
        rows += 1;
    }
    (rows, counts)
}

fn class_counts(dataset: &Dataset) -> [usize; 5] {
    data::class_counts(dataset.examples.iter().map(|e| e.class))
}

#[test]
fn rows_and_classes_match_the_readme() {
    let Some(train_path) = finsent("finsent_rows", "train.jsonl") else {
        return;
    };
    let valid_path = train_path.with_file_name("valid.jsonl");
    let options = LoadOptions {
        require_target: true,
        ..LoadOptions::default()
    };
    let train = load(&train_path, &options).unwrap();
    let valid = load(&valid_path, &options).unwrap();

    // README: train 2198 rows, 1885 unique texts, classes 195/590/120/1029/264;
    // valid 229 rows, 199 unique texts, classes 24/73/12/90/30.
    assert_eq!((train.len(), train.rejected), (2198, 0));
    assert_eq!((valid.len(), valid.rejected), (229, 0));
    assert_eq!(class_counts(&train), [195, 590, 120, 1029, 264]);
    assert_eq!(class_counts(&valid), [24, 73, 12, 90, 30]);
    assert_eq!(raw_counts(&train_path), (2198, [195, 590, 120, 1029, 264]));
    assert_eq!(raw_counts(&valid_path), (229, [24, 73, 12, 90, 30]));
    let stats = data::DatasetStats::of(&train);
    assert_eq!(stats.unique_texts, 1885);
    assert_eq!(data::DatasetStats::of(&valid).unique_texts, 199);
    // README: mean 0.078, std 0.394, min -0.989, max 1.000.
    assert!(
        (stats.score_mean - 0.078).abs() < 5e-4,
        "{}",
        stats.score_mean
    );
    assert!(
        (stats.score_std - 0.394).abs() < 5e-4,
        "{}",
        stats.score_std
    );
    assert_eq!((stats.score_min, stats.score_max), (-0.989, 1.0));
    // README: scores 0.5 twice and -0.5 once, on the sides the thresholds state.
    let at = |y: f32| {
        train
            .examples
            .iter()
            .chain(&valid.examples)
            .filter(|e| e.score == y)
            .map(|e| e.class)
            .collect::<Vec<_>>()
    };
    assert_eq!(at(0.5), [3, 3]);
    assert_eq!(at(-0.5), [1]);
    // The shipped split keeps every text on one side.
    let keys = |d: &Dataset| {
        d.examples
            .iter()
            .map(|e| text_key(&e.text))
            .collect::<HashSet<_>>()
    };
    assert!(keys(&train).is_disjoint(&keys(&valid)));
}

#[test]
fn seeded_split_of_train_never_shares_a_text() {
    let Some(train_path) = finsent("finsent_split", "train.jsonl") else {
        return;
    };
    let train = load(&train_path, &LoadOptions::default()).unwrap();
    let (a_train, a_valid) = split_by_text(train.examples.clone(), 0.1, 42).unwrap();
    let (b_train, b_valid) = split_by_text(train.examples.clone(), 0.1, 42).unwrap();
    assert_eq!(a_train, b_train);
    assert_eq!(a_valid, b_valid);
    assert_eq!(a_train.len() + a_valid.len(), 2198);
    let keys = |rows: &[data::Example]| {
        rows.iter()
            .map(|e| text_key(&e.text))
            .collect::<HashSet<_>>()
    };
    let (tk, vk) = (keys(&a_train), keys(&a_valid));
    assert!(tk.is_disjoint(&vk));
    // 1885 unique texts: round(188.5) = 189 held out (f32 0.1 is a hair above 0.1).
    assert_eq!(vk.len(), 189);
    assert_eq!(tk.len(), 1885 - 189);

    // Through the config: no validation file, so the same split.
    let config = DataConfig {
        train: train_path.clone(),
        ..DataConfig::default()
    };
    let splits = data::load_splits(&config, None).unwrap();
    assert!(splits.split_from_train);
    assert_eq!(splits.valid.examples, a_valid);
}

#[test]
fn load_and_tokenize_speed() {
    let Some(train_path) = finsent("finsent_speed", "train.jsonl") else {
        return;
    };
    let Some(model) = testkit::shared_file("finsent_speed", "fixtures/tiny-roberta") else {
        return;
    };
    let folder = ModelFolder::open(&model, None).unwrap();
    let tokenizer = TextTokenizer::from_file(&folder.tokenizer, &folder.config, 128).unwrap();
    let start = Instant::now();
    let dataset = load(&train_path, &LoadOptions::default()).unwrap();
    let loaded = start.elapsed();
    let set = TokenizedSet::new(&dataset, &tokenizer, InputMode::TextTarget, None).unwrap();
    let total = start.elapsed();
    assert_eq!(set.len(), 2198);
    let profile = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    eprintln!(
        "finsent train ({profile} build): load {:.1} ms ({:.0} rows/s), load+tokenize {:.1} ms ({:.0} rows/s)",
        loaded.as_secs_f64() * 1e3,
        2198.0 / loaded.as_secs_f64(),
        total.as_secs_f64() * 1e3,
        2198.0 / total.as_secs_f64()
    );
}
