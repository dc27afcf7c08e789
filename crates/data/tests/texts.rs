//! `load_texts`: the texts `predict` and `embed` score, from the training formats without a
//! score; every bad row an error naming its line, whatever the bad-row policy.

use std::path::{Path, PathBuf};

use data::{load, load_texts, BadRowPolicy, DataError, LoadOptions, TextRow};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("data-texts-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn row(text: &str, target: Option<&str>, line: u64) -> TextRow {
    TextRow {
        text: text.into(),
        target: target.map(String::from),
        line,
    }
}

fn error_of(path: &Path, options: &LoadOptions) -> String {
    load_texts(path, options).unwrap_err().to_string()
}

#[test]
fn json_lines_need_no_score_and_pass_over_blank_lines() {
    let dir = scratch("jsonl");
    let path = write(
        &dir,
        "in.jsonl",
        "\u{feff}{\"text\": \"Shares rose\", \"target\": \"Acme\"}\n\
         \n\
         {\"text\": \"Profit fell\", \"score\": 7}\n  \n\
         {\"text\": \"Flat\", \"target\": \"\", \"score\": \"not read\"}\n",
    );
    assert_eq!(
        load_texts(&path, &LoadOptions::default()).unwrap(),
        [
            row("Shares rose", Some("Acme"), 1),
            row("Profit fell", None, 3),
            row("Flat", None, 5),
        ]
    );
}

#[test]
fn csv_and_tsv_need_no_score_column() {
    let dir = scratch("delimited");
    // A quoted text over two lines: the next record starts on line 4.
    let csv = write(
        &dir,
        "in.csv",
        "id,text,target\n1,\"Revenue, as expected\",Acme\n2,\"Two\nlines\",\n\n3,Last,Beta\n",
    );
    assert_eq!(
        load_texts(&csv, &LoadOptions::default()).unwrap(),
        [
            row("Revenue, as expected", Some("Acme"), 2),
            row("Two\nlines", None, 3),
            row("Last", Some("Beta"), 6),
        ]
    );
    let options = LoadOptions {
        text_field: "headline".into(),
        ..LoadOptions::default()
    };
    let tsv = write(&dir, "in.tsv", "headline\tsource\nOil slipped\tnews\n");
    assert_eq!(
        load_texts(&tsv, &options).unwrap(),
        [row("Oil slipped", None, 2)]
    );
    let message = error_of(&tsv, &LoadOptions::default());
    assert!(
        message.contains("in.tsv") && message.contains("no column `text`"),
        "{message}"
    );
}

#[test]
fn the_texts_of_training_rows_are_the_training_loaders() {
    let dir = scratch("same");
    let path = write(
        &dir,
        "train.jsonl",
        "{\"text\": \"Up\", \"target\": \"A\", \"score\": 0.5}\n\
         {\"text\": \"Down\", \"score\": -0.25}\n\
         {\"text\": \"Flat\", \"target\": \"B\", \"score\": 0}\n",
    );
    let examples = load(&path, &LoadOptions::default()).unwrap().examples;
    let texts = load_texts(&path, &LoadOptions::default()).unwrap();
    assert_eq!(texts.len(), examples.len());
    for (text, example) in texts.iter().zip(&examples) {
        assert_eq!(
            (&text.text, &text.target, text.line),
            (&example.text, &example.target, example.line)
        );
    }
}

#[test]
fn every_bad_row_is_an_error_even_under_skip() {
    let dir = scratch("bad");
    let skip = LoadOptions {
        on_bad_row: BadRowPolicy::Skip,
        ..LoadOptions::default()
    };
    let pairs = LoadOptions {
        require_target: true,
        ..skip.clone()
    };
    for (name, content, options, expected) in [
        (
            "a.jsonl",
            "{\"text\": \"ok\"}\nnot json\n",
            &skip,
            "line 2: not JSON",
        ),
        (
            "b.jsonl",
            "{\"text\": \" \"}\n",
            &skip,
            "line 1: empty text",
        ),
        (
            "c.jsonl",
            "{\"txt\": \"x\"}\n",
            &skip,
            "line 1: missing field `text`",
        ),
        (
            "d.jsonl",
            "{\"text\": 3}\n",
            &skip,
            "line 1: field `text` must be a string",
        ),
        (
            "e.jsonl",
            "{\"text\": \"x\"}\n",
            &pairs,
            "line 1: missing field `target`",
        ),
        (
            "f.csv",
            "text,target\nok,A\n,B\n",
            &skip,
            "line 3: empty text",
        ),
        (
            "g.csv",
            "text,target\nok,A\nx,B,C\n",
            &skip,
            "line 3: malformed CSV",
        ),
    ] {
        let path = write(&dir, name, content);
        let message = error_of(&path, options);
        assert!(
            message.contains(name) && message.contains(expected),
            "{name}: `{message}` lacks `{expected}`"
        );
        // Nothing was set aside: an error, not a rejected file.
        let rejected = data::rejected_path(&path, None);
        assert!(!rejected.exists(), "{}", rejected.display());
    }
}

#[test]
fn a_file_with_no_rows_is_an_error() {
    let dir = scratch("empty");
    for (name, content) in [("a.jsonl", "\n  \n"), ("b.csv", "text\n\n")] {
        let path = write(&dir, name, content);
        let error = load_texts(&path, &LoadOptions::default()).unwrap_err();
        assert!(
            matches!(error, DataError::Empty { .. }),
            "{name}: {error:?}"
        );
    }
    let path = write(&dir, "c.txt", "a text\n");
    let error = load_texts(&path, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(error, DataError::UnknownFormat { .. }),
        "{error:?}"
    );
}
