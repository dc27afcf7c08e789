//! Pair encoding (text, target) through both tokenizer families' templates, batches as
//! tensors, and the on-disk token cache.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use data::{BatchOptions, Dataset, Example, InputMode, TokenCache, TokenizedSet};
use encoder::{ModelFolder, TextTokenizer};

fn dataset(rows: &[(&str, &str, f32)]) -> Dataset {
    Dataset {
        path: PathBuf::from("memory.jsonl"),
        examples: rows
            .iter()
            .enumerate()
            .map(|(i, &(text, target, score))| Example {
                text: text.into(),
                target: Some(target.into()),
                score,
                class: data::score_class(score, &data::ClassThresholds::default()),
                line: i as u64 + 1,
            })
            .collect(),
        rejected: 0,
        rejected_file: None,
    }
}

fn tokenizer(dir: &Path, max_len: usize) -> (ModelFolder, TextTokenizer) {
    let folder = ModelFolder::open(dir, None).unwrap();
    let tokenizer = TextTokenizer::from_file(&folder.tokenizer, &folder.config, max_len).unwrap();
    (folder, tokenizer)
}

const TEXT: &str = "Barclays shares fall after profit warning";
const TARGET: &str = "Barclays";

#[test]
fn roberta_pair_template() {
    let Some(dir) = testkit::shared_file("roberta_pair", "fixtures/tiny-roberta") else {
        return;
    };
    let (_, tok) = tokenizer(&dir, 128);
    let set = TokenizedSet::new(
        &dataset(&[(TEXT, TARGET, -0.4)]),
        &tok,
        InputMode::TextTarget,
        None,
    )
    .unwrap();
    let a = tok.encode(TEXT, None).unwrap().ids;
    let b = tok.encode(TARGET, None).unwrap().ids;
    // `<s> a </s></s> b </s>`: <s> = 0, </s> = 2.
    let (a_body, b_body) = (&a[1..a.len() - 1], &b[1..b.len() - 1]);
    let mut expected = vec![0];
    expected.extend_from_slice(a_body);
    expected.extend_from_slice(&[2, 2]);
    expected.extend_from_slice(b_body);
    expected.push(2);
    let row = &set.rows[0];
    assert_eq!(row.ids, expected);
    let specials: Vec<usize> = row
        .ids
        .iter()
        .enumerate()
        .filter(|(_, &id)| id == 0 || id == 2)
        .map(|(i, _)| i)
        .collect();
    let n = row.ids.len();
    assert_eq!(specials, [0, a_body.len() + 1, a_body.len() + 2, n - 1]);
    // RoBERTa has one token type: all zero.
    assert!(row.type_ids.iter().all(|&t| t == 0));
    // Text alone: the single template.
    let single = TokenizedSet::new(
        &dataset(&[(TEXT, TARGET, -0.4)]),
        &tok,
        InputMode::Text,
        None,
    )
    .unwrap();
    assert_eq!(single.rows[0].ids, a);
}

#[test]
fn bert_pair_template() {
    let Some(dir) = testkit::minilm_dir("bert_pair") else {
        return;
    };
    let (_, tok) = tokenizer(&dir, 128);
    let set = TokenizedSet::new(
        &dataset(&[(TEXT, TARGET, 0.3)]),
        &tok,
        InputMode::TextTarget,
        None,
    )
    .unwrap();
    let row = &set.rows[0];
    let a = tok.encode(TEXT, None).unwrap().ids;
    let a_body = &a[1..a.len() - 1];
    // `[CLS] a [SEP] b [SEP]`: [CLS] = 101, [SEP] = 102; type ids 0 through the first [SEP], then 1.
    assert_eq!(row.ids[0], 101);
    assert_eq!(&row.ids[1..=a_body.len()], a_body);
    let first_sep = a_body.len() + 1;
    assert_eq!(row.ids[first_sep], 102);
    assert_eq!(*row.ids.last().unwrap(), 102);
    assert_eq!(row.ids.iter().filter(|&&id| id == 102).count(), 2);
    let expected_types: Vec<u32> = (0..row.ids.len())
        .map(|i| u32::from(i > first_sep))
        .collect();
    assert_eq!(row.type_ids, expected_types);
    // "barclays" lower-cased by the BERT normalizer, as its own word pieces.
    let b = tok.encode(TARGET, None).unwrap().ids;
    assert_eq!(
        &row.ids[first_sep + 1..row.ids.len() - 1],
        &b[1..b.len() - 1]
    );
}

#[test]
fn pair_truncation_keeps_the_specials() {
    let Some(dir) = testkit::shared_file("pair_truncation", "fixtures/tiny-roberta") else {
        return;
    };
    let (_, tok) = tokenizer(&dir, 12);
    let long = "Shares of the bank fell sharply after the quarterly profit warning on Monday";
    let set = TokenizedSet::new(
        &dataset(&[(long, TARGET, 0.1)]),
        &tok,
        InputMode::TextTarget,
        None,
    )
    .unwrap();
    let ids = &set.rows[0].ids;
    assert_eq!(ids.len(), 12);
    assert_eq!((ids[0], ids[11]), (0, 2));
    assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 3);
}

#[test]
fn batches_are_padded_to_their_longest_row() {
    let Some(dir) = testkit::shared_file("batch_tensors", "fixtures/tiny-roberta") else {
        return;
    };
    let (_, tok) = tokenizer(&dir, 128);
    let rows = [
        ("Acme up", "Acme", 0.7),
        (
            "Beta shares fell sharply after the profit warning",
            "Beta",
            -0.6,
        ),
        ("Gamma flat", "Gamma", 0.0),
    ];
    let set = TokenizedSet::new(&dataset(&rows), &tok, InputMode::Text, None).unwrap();
    let lengths = set.lengths();
    let device = Device::flex();
    let batch = set.batch(&[2, 0], tok.pad_id(), &device);
    let longest = lengths[2].max(lengths[0]);
    assert_eq!(batch.input.input_ids.dims(), [2, longest]);
    assert!(longest < lengths[1]);
    let ids: Vec<i64> = batch
        .input
        .input_ids
        .into_data()
        .convert::<i64>()
        .try_into_vec()
        .unwrap();
    let mask: Vec<i64> = batch
        .input
        .attention_mask
        .into_data()
        .convert::<i64>()
        .try_into_vec()
        .unwrap();
    for (r, &row) in [2usize, 0].iter().enumerate() {
        for c in 0..longest {
            let real = c < lengths[row];
            assert_eq!(mask[r * longest + c], i64::from(real));
            let expected = if real {
                i64::from(set.rows[row].ids[c])
            } else {
                1
            };
            assert_eq!(ids[r * longest + c], expected);
        }
    }
    let scores: Vec<f32> = batch.scores.into_data().try_into_vec().unwrap();
    assert_eq!(scores, [0.0, 0.7]);
    let classes: Vec<i64> = batch
        .classes
        .into_data()
        .convert::<i64>()
        .try_into_vec()
        .unwrap();
    assert_eq!(classes, [2, 4]);

    // An epoch, resumed at its second batch, gives the same batches as the full epoch.
    let options = BatchOptions {
        batch_size: 2,
        shuffle: true,
        bucket_window: Some(2),
        seed: 9,
    };
    let full: Vec<Vec<usize>> = set
        .epoch(&options, 3, tok.pad_id(), &device)
        .map(|b| b.rows)
        .collect();
    let resumed: Vec<Vec<usize>> = set
        .epoch(&options, 3, tok.pad_id(), &device)
        .resume_at(1)
        .map(|b| b.rows)
        .collect();
    assert_eq!(full.len(), 2);
    assert_eq!(resumed, full[1..]);
    assert_eq!(full, data::epoch_plan(&lengths, &options, 3));
}

#[test]
fn token_cache_round_trip() {
    let Some(dir) = testkit::shared_file("token_cache", "fixtures/tiny-roberta") else {
        return;
    };
    let (folder, tok) = tokenizer(&dir, 64);
    let cache_dir = std::env::temp_dir().join(format!("data-token-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache_dir);
    let cache = TokenCache::new(&cache_dir, &folder).unwrap();
    let rows = dataset(&[("Acme up", "Acme", 0.7), ("Beta down", "Beta", -0.6)]);
    let fresh = TokenizedSet::new(&rows, &tok, InputMode::TextTarget, Some(&cache)).unwrap();
    let files: Vec<_> = std::fs::read_dir(&cache_dir).unwrap().collect();
    assert_eq!(files.len(), 1);
    let cached = TokenizedSet::new(&rows, &tok, InputMode::TextTarget, Some(&cache)).unwrap();
    assert_eq!(fresh, cached);
    // Another input mode is another key.
    let text_only = TokenizedSet::new(&rows, &tok, InputMode::Text, Some(&cache)).unwrap();
    assert_ne!(text_only.rows, fresh.rows);
    assert_eq!(std::fs::read_dir(&cache_dir).unwrap().count(), 2);
    // The cache is really read: a changed id in the file comes back.
    let file = files[0].as_ref().unwrap().path();
    let mut bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[..8], b"DAOTOK01");
    bytes[8 + 8 + 4] ^= 0x40; // first id of the first row (after magic, row count, length)
    std::fs::write(&file, bytes).unwrap();
    let tampered = TokenizedSet::new(&rows, &tok, InputMode::TextTarget, Some(&cache)).unwrap();
    assert_eq!(tampered.rows[0].ids[0], fresh.rows[0].ids[0] ^ 0x40);
    let _ = std::fs::remove_dir_all(&cache_dir);
}
