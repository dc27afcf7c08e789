//! Every kind of bad input row: the error names the file and `line N`; under `skip` the good
//! rows are kept and the bad lines are written unchanged to the rejected file.

use std::path::{Path, PathBuf};

use data::{load, BadRowPolicy, DataError, LoadOptions, RowProblem};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("data-bad-rows-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn strict() -> LoadOptions {
    LoadOptions::default()
}

fn skip() -> LoadOptions {
    LoadOptions {
        on_bad_row: BadRowPolicy::Skip,
        ..LoadOptions::default()
    }
}

const GOOD: &str = r#"{"text": "Shares of Acme jumped", "target": "Acme", "score": 0.6}"#;

/// One good line, then `bad` at line 2, then another good line.
fn assert_json_line_error(case: &str, bad: &[u8], expected: &str) {
    let dir = scratch(case);
    let mut bytes = format!("{GOOD}\n").into_bytes();
    bytes.extend_from_slice(bad);
    bytes.extend_from_slice(format!("\n{GOOD}\n").as_bytes());
    let path = write(&dir, "in.jsonl", &bytes);
    let error = load(&path, &strict()).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("in.jsonl"), "{case}: {message}");
    assert!(message.contains("line 2:"), "{case}: {message}");
    assert!(
        message.contains(expected),
        "{case}: `{message}` lacks `{expected}`"
    );
    assert!(
        matches!(error, DataError::Row { line: 2, .. }),
        "{case}: {error:?}"
    );
}

#[test]
fn json_lines_bad_rows_name_their_line() {
    assert_json_line_error("not-json", b"{\"text\": \"a\", \"score\": ", "not JSON");
    assert_json_line_error("not-object", b"[1, 2]", "not a JSON object");
    assert_json_line_error("no-text", br#"{"score": 0.1}"#, "missing field `text`");
    assert_json_line_error("no-score", br#"{"text": "a"}"#, "missing field `score`");
    assert_json_line_error(
        "null-score",
        br#"{"text": "a", "score": null}"#,
        "missing field `score`",
    );
    assert_json_line_error(
        "nan-score",
        br#"{"text": "a", "score": "NaN"}"#,
        "not a finite number",
    );
    assert_json_line_error(
        "inf-score",
        br#"{"text": "a", "score": "-inf"}"#,
        "not a finite number",
    );
    assert_json_line_error(
        "word-score",
        br#"{"text": "a", "score": "up"}"#,
        "not a finite number",
    );
    assert_json_line_error(
        "bool-score",
        br#"{"text": "a", "score": true}"#,
        "must be a number",
    );
    assert_json_line_error(
        "high-score",
        br#"{"text": "a", "score": 1.5}"#,
        "outside [-1, 1]",
    );
    assert_json_line_error(
        "low-score",
        br#"{"text": "a", "score": -1.001}"#,
        "outside [-1, 1]",
    );
    assert_json_line_error(
        "empty-text",
        br#"{"text": "  ", "score": 0.1}"#,
        "empty text",
    );
    assert_json_line_error(
        "number-text",
        br#"{"text": 5, "score": 0.1}"#,
        "must be a string",
    );
    assert_json_line_error(
        "utf8",
        b"{\"text\": \"caf\xE9\", \"score\": 0.1}",
        "invalid UTF-8",
    );
    assert_json_line_error("blank", b"   ", "blank line");
}

#[test]
fn json_error_does_not_leak_serde_line_numbers() {
    let dir = scratch("serde-line");
    let path = write(
        &dir,
        "in.jsonl",
        format!("{GOOD}\n{GOOD}\n{GOOD}\n{{oops}}\n").as_bytes(),
    );
    let message = load(&path, &strict()).unwrap_err().to_string();
    assert!(message.contains("line 4: not JSON"), "{message}");
    assert!(!message.contains("line 1"), "{message}");
}

#[test]
fn text_target_input_requires_a_target() {
    let dir = scratch("target");
    let path = write(
        &dir,
        "in.jsonl",
        format!("{GOOD}\n{{\"text\": \"b\", \"score\": 0.2, \"target\": null}}\n").as_bytes(),
    );
    assert_eq!(load(&path, &strict()).unwrap().len(), 2);
    let options = LoadOptions {
        require_target: true,
        ..strict()
    };
    let message = load(&path, &options).unwrap_err().to_string();
    assert!(
        message.contains("line 2: missing field `target`"),
        "{message}"
    );
    // Present but empty: said so, not called missing.
    let path = write(
        &dir,
        "empty.jsonl",
        format!("{GOOD}\n{{\"text\": \"b\", \"score\": 0.2, \"target\": \" \"}}\n").as_bytes(),
    );
    let message = load(&path, &options).unwrap_err().to_string();
    assert!(message.contains("line 2: empty `target`"), "{message}");
}

#[test]
fn empty_dataset_is_an_error() {
    let dir = scratch("empty");
    let path = write(&dir, "in.jsonl", b"");
    let error = load(&path, &strict()).unwrap_err();
    assert!(matches!(error, DataError::Empty { .. }), "{error:?}");
    // Only bad rows under `skip`: still empty, and the message says where they went.
    let path = write(&dir, "bad.jsonl", b"{\"text\": \"a\"}\n");
    let message = load(&path, &skip()).unwrap_err().to_string();
    assert!(message.contains("no rows (1 rejected, see"), "{message}");
    let path = write(&dir, "head.csv", b"text,score\n");
    assert!(matches!(
        load(&path, &strict()).unwrap_err(),
        DataError::Empty { .. }
    ));
}

#[test]
fn skip_keeps_good_rows_and_writes_bad_lines_unchanged() {
    let dir = scratch("skip");
    let out = dir.join("run");
    let bad_lines: [&[u8]; 4] = [
        b"not json at all",
        b"{\"text\": \"x\", \"score\": 2}\r",
        b"{\"text\": \"caf\xE9\", \"score\": 0.1}",
        b"{\"text\": \"\", \"score\": 0.1}",
    ];
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"\xEF\xBB\xBF"); // a BOM is tolerated
    bytes.extend_from_slice(format!("{GOOD}\n").as_bytes());
    for bad in bad_lines {
        bytes.extend_from_slice(bad);
        bytes.extend_from_slice(format!("\n{GOOD}\r\n").as_bytes());
    }
    bytes.extend_from_slice(b"{\"text\": \"last, no newline\", \"score\": 9}");
    let path = write(&dir, "train.jsonl", &bytes);

    let options = LoadOptions {
        rejected_dir: Some(out.clone()),
        ..skip()
    };
    let dataset = load(&path, &options).unwrap();
    assert_eq!(dataset.len(), 5);
    assert_eq!(dataset.rejected, 5);
    assert!(dataset
        .examples
        .iter()
        .all(|e| e.text == "Shares of Acme jumped"));
    assert_eq!(
        dataset.examples.iter().map(|e| e.line).collect::<Vec<_>>(),
        [1, 3, 5, 7, 9]
    );
    let rejected_file = out.join("train.rejected.jsonl");
    assert_eq!(
        dataset.rejected_file.as_deref(),
        Some(rejected_file.as_path())
    );
    let mut expected = Vec::new();
    for bad in bad_lines {
        expected.extend_from_slice(bad);
        expected.push(b'\n');
    }
    expected.extend_from_slice(b"{\"text\": \"last, no newline\", \"score\": 9}\n");
    assert_eq!(std::fs::read(&rejected_file).unwrap(), expected);

    // Without an output folder the file goes beside the input; a clean rerun removes it.
    let dataset = load(&path, &skip()).unwrap();
    let beside = dir.join("train.rejected.jsonl");
    assert_eq!(dataset.rejected_file.as_deref(), Some(beside.as_path()));
    let clean = write(&dir, "train.jsonl", format!("{GOOD}\n").as_bytes());
    let dataset = load(&clean, &skip()).unwrap();
    assert_eq!((dataset.rejected, dataset.rejected_file), (0, None));
    assert!(!beside.exists());
}

#[test]
fn csv_rows_validated_with_record_lines() {
    let dir = scratch("csv");
    let csv = "\u{feff}id,text,target,score\n\
               1,\"Acme, Inc. beats estimates\",Acme,0.7\n\
               2,\"A quoted\nmulti-line text\",Beta,-0.2\n\
               3,Too few fields\n\
               4,Gamma falls,Gamma,NaN\n\
               5,Delta flat,,0.0\n\
               6,,Eps,0.1\n\
               7,Zeta up,Zeta,1.2\n\
               8,Eta,Eta,0.1,extra\n";
    let path = write(&dir, "rows.csv", csv.as_bytes());
    let message = load(&path, &strict()).unwrap_err().to_string();
    assert!(
        message.contains("rows.csv: line 5: too few fields: 2, the header has 4"),
        "{message}"
    );

    let dataset = load(&path, &skip()).unwrap();
    let kept: Vec<(u64, &str, Option<&str>, f32)> = dataset
        .examples
        .iter()
        .map(|e| (e.line, e.text.as_str(), e.target.as_deref(), e.score))
        .collect();
    assert_eq!(
        kept,
        [
            (2, "Acme, Inc. beats estimates", Some("Acme"), 0.7),
            (3, "A quoted\nmulti-line text", Some("Beta"), -0.2),
            (7, "Delta flat", None, 0.0),
        ]
    );
    assert_eq!(dataset.rejected, 5);
    let rejected = std::fs::read_to_string(dir.join("rows.rejected.csv")).unwrap();
    assert_eq!(
        rejected,
        "id,text,target,score\n3,Too few fields\n4,Gamma falls,Gamma,NaN\n6,,Eps,0.1\n\
         7,Zeta up,Zeta,1.2\n8,Eta,Eta,0.1,extra\n"
    );
    // The rejected file reads back as CSV with the same header.
    let again = load(&dir.join("rows.rejected.csv"), &skip())
        .unwrap_err()
        .to_string();
    assert!(again.contains("no rows (5 rejected"), "{again}");
}

#[test]
fn crlf_csv_rejected_file_keeps_its_line_ends() {
    let dir = scratch("crlf");
    let path = write(
        &dir,
        "e.csv",
        b"text,target,score\r\nok,A,0.1\r\nbad,row,2\r\n",
    );
    let dataset = load(&path, &skip()).unwrap();
    assert_eq!((dataset.len(), dataset.rejected), (1, 1));
    assert_eq!(
        std::fs::read(dir.join("e.rejected.csv")).unwrap(),
        b"text,target,score\r\nbad,row,2\r\n"
    );
}

#[test]
fn csv_each_problem_named() {
    let dir = scratch("csv-each");
    let case = |name: &str, row: &[u8], expected: &str| {
        let mut bytes = b"text,score\nfine,0.1\n".to_vec();
        bytes.extend_from_slice(row);
        let path = write(&dir, &format!("{name}.csv"), &bytes);
        let error = load(&path, &strict()).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("line 3: "), "{name}: {message}");
        assert!(
            message.contains(expected),
            "{name}: `{message}` lacks `{expected}`"
        );
    };
    case("nan", b"x,nan\n", "not a finite number");
    case("inf", b"x,inf\n", "not a finite number");
    case("range", b"x,-3\n", "outside [-1, 1]");
    case("empty-score", b"x,\n", "missing field `score`");
    case("empty-text", b" ,0.2\n", "empty text");
    case("utf8", b"caf\xE9,0.2\n", "invalid UTF-8");
    case("few", b"lonely\n", "too few fields");
    // A quote never closed takes the rest of the file into one field: said so.
    case(
        "open-quote",
        b"\"never closed,0.2\nnext,0.3\n",
        "if a quote opened here is never closed, it takes the lines below",
    );

    let path = write(&dir, "header.csv", b"sentence,score\nx,0.1\n");
    let message = load(&path, &strict()).unwrap_err().to_string();
    assert!(
        message.contains("line 1: the header has no column `text`"),
        "{message}"
    );
}

#[test]
fn tsv_and_custom_field_names() {
    let dir = scratch("tsv");
    let path = write(
        &dir,
        "rows.tsv",
        b"sentence\tsentiment\tcompany\nHe said \"up\"\t0.25\tAcme\n",
    );
    let options = LoadOptions {
        text_field: "sentence".into(),
        score_field: "sentiment".into(),
        target_field: "company".into(),
        ..strict()
    };
    let dataset = load(&path, &options).unwrap();
    assert_eq!(dataset.examples[0].text, "He said \"up\"");
    assert_eq!(dataset.examples[0].target.as_deref(), Some("Acme"));
    assert_eq!(dataset.examples[0].class, 3);
    let unknown = write(&dir, "rows.xml", b"<x/>");
    assert!(matches!(
        load(&unknown, &strict()).unwrap_err(),
        DataError::UnknownFormat { .. }
    ));
}

#[test]
fn problem_values_are_typed() {
    let dir = scratch("typed");
    let path = write(&dir, "in.jsonl", br#"{"text": "a", "score": 1.25}"#);
    match load(&path, &strict()).unwrap_err() {
        DataError::Row { line, problem, .. } => {
            assert_eq!(line, 1);
            assert_eq!(problem, RowProblem::ScoreOutOfRange(1.25));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn csv_blank_lines_count_in_line_numbers() {
    let dir = scratch("csv-blank");
    let path = write(
        &dir,
        "gaps.csv",
        b"text,score\nok,0.1\n\n\r\n\"two\nlines\",5\nok2,0.2\n\nbad,x\n",
    );
    let message = load(&path, &strict()).unwrap_err().to_string();
    assert!(
        message.contains("gaps.csv: line 5: score 5 is outside"),
        "{message}"
    );
    let dataset = load(&path, &skip()).unwrap();
    let lines: Vec<u64> = dataset.examples.iter().map(|e| e.line).collect();
    assert_eq!(lines, [2, 7]);
    let rejected = std::fs::read(dir.join("gaps.rejected.csv")).unwrap();
    assert_eq!(rejected, b"text,score\n\"two\nlines\",5\nbad,x\n");
}
