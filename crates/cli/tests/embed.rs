//! `cli embed` as a user runs it: output order and values against transformers' H, and bad
//! input that must end with an error (exit code 1), never a panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{cli, scratch};
use testkit::{max_abs_diff, read_json, shared_file, tensor_f32};

fn assert_clean_failure(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in: {stderr}"
    );
}

/// `cli embed --model MODEL --input INPUT --output OUTPUT EXTRA…`.
fn embed(model: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    cli(&args)
}

fn write_inputs(dir: &Path, golden: &serde_json::Value) -> PathBuf {
    let input = dir.join("in.jsonl");
    let lines: Vec<String> = golden["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| serde_json::json!({ "text": s, "id": 7 }).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    input
}

#[test]
fn embed_writes_h_in_input_order() {
    let Some(golden_path) = shared_file("embed_writes_h_in_input_order", "fixtures/golden.json")
    else {
        return;
    };
    let golden = read_json(&golden_path);
    let model = golden_path.parent().unwrap().join("tiny-roberta");
    let dir = scratch("embed-order");
    let input = write_inputs(&dir, &golden);
    let output = dir.join("out.jsonl");
    // Batch size 3 with 4 rows: two batches padded differently, order kept.
    let run = embed(&model, &input, &output, &["--batch-size", "3"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(&output).unwrap();
    let got: Vec<f32> = text
        .lines()
        .flat_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            v["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(text.lines().count(), 4);
    let (_, expected) = tensor_f32(&golden["H"]);
    let delta = max_abs_diff(&got, &expected);
    assert!(delta <= 1e-5, "max |Δ| {delta}");

    // The same texts as TSV: the same file out.
    let tsv = dir.join("in.tsv");
    let rows: Vec<String> = golden["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("7\t{}", s.as_str().unwrap()))
        .collect();
    std::fs::write(&tsv, format!("id\ttext\n{}\n", rows.join("\n"))).unwrap();
    let from_tsv = dir.join("out-tsv.jsonl");
    let run = embed(&model, &tsv, &from_tsv, &["--batch-size", "3"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(std::fs::read_to_string(&from_tsv).unwrap(), text);
}

#[test]
fn embed_reports_bad_input_lines() {
    let Some(golden_path) = shared_file("embed_reports_bad_input_lines", "fixtures/golden.json")
    else {
        return;
    };
    let model = golden_path.parent().unwrap().join("tiny-roberta");
    let dir = scratch("embed-bad");
    let output = dir.join("out.jsonl");
    for (content, expected) in [
        ("{\"text\": \"fine\"}\n{not json\n", "line 2: not JSON"),
        (
            "{\"text\": \"fine\"}\n{\"txt\": \"x\"}\n",
            "line 2: missing field `text`",
        ),
        ("{\"text\": \"   \"}\n", "line 1: empty text"),
    ] {
        let input = dir.join("in.jsonl");
        std::fs::write(&input, content).unwrap();
        assert_clean_failure(&embed(&model, &input, &output, &[]), expected);
        assert!(!output.exists(), "no partial output on failure");
    }
}

#[test]
fn embed_reports_broken_model_folders() {
    let Some(model) = shared_file(
        "embed_reports_broken_model_folders",
        "fixtures/tiny-roberta",
    ) else {
        return;
    };
    let dir = scratch("embed-folder");
    let input = dir.join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"Revenue was flat.\"}\n").unwrap();
    let output = dir.join("out.jsonl");
    let broken = dir.join("model");
    std::fs::create_dir_all(&broken).unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(model.join(name), broken.join(name)).unwrap();
    }
    let run = |model: &Path, extra: &[&str]| embed(model, &input, &output, extra);
    assert_clean_failure(&run(&broken, &[]), "tokenizer.json not found");
    assert_clean_failure(&run(&dir.join("absent"), &[]), "model folder not found");
    // A run folder (its config.toml) is pointed to `export`.
    let run_folder = dir.join("run");
    std::fs::create_dir_all(&run_folder).unwrap();
    std::fs::write(run_folder.join("config.toml"), "[model]\n").unwrap();
    assert_clean_failure(
        &run(&run_folder, &[]),
        "is a run folder, not a model folder",
    );
    assert_clean_failure(&run(&model, &["--device", "tpu"]), "unknown device `tpu`");
    assert_clean_failure(
        &run(&model, &["--max-len", "4096"]),
        "--max-len 4096: the model in",
    );
}

#[test]
fn embed_never_writes_over_its_input_or_a_folder() {
    let Some(model) = shared_file(
        "embed_never_writes_over_its_input_or_a_folder",
        "fixtures/tiny-roberta",
    ) else {
        return;
    };
    let dir = scratch("embed-outputs");
    let input = dir.join("in.jsonl");
    let text = "{\"text\": \"Revenue was flat.\"}\n";
    std::fs::write(&input, text).unwrap();

    // The input itself, by its name and through a link: refused, the input as it was.
    let link = dir.join("link.jsonl");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    for output in [&input, &link] {
        assert_clean_failure(&embed(&model, &input, output, &[]), "is the input");
        assert_eq!(std::fs::read_to_string(&input).unwrap(), text);
    }
    // A folder: refused, and no temporary file left beside it.
    let folder = dir.join("out");
    std::fs::create_dir(&folder).unwrap();
    assert_clean_failure(&embed(&model, &input, &folder, &[]), "is a folder");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");

    // A link to another file: that file gets the embeddings, the link stays a link.
    let target = dir.join("target.jsonl");
    std::fs::write(&target, "old\n").unwrap();
    let to_target = dir.join("to-target.jsonl");
    std::os::unix::fs::symlink(&target, &to_target).unwrap();
    let output = embed(&model, &input, &to_target, &[]);
    assert!(output.status.success(), "{output:?}");
    assert!(std::fs::symlink_metadata(&to_target)
        .unwrap()
        .file_type()
        .is_symlink());
    let written = std::fs::read_to_string(&target).unwrap();
    assert!(written.starts_with("{\"embedding\":["), "{written}");
}

/// Without `--max-len`, a folder's `tokenizer_config.json` `model_max_length` cuts the texts
/// (what transformers does, and what an exported run's folder says), and its "no limit"
/// value of 10³⁰ leaves the model's own limit.
#[test]
fn embed_cuts_at_the_folders_model_max_length() {
    let Some(model) = shared_file("embed_model_max_length", "fixtures/tiny-roberta") else {
        return;
    };
    let dir = scratch("embed-model-max-length");
    let folder = dir.join("model");
    std::fs::create_dir_all(&folder).unwrap();
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(model.join(name), folder.join(name)).unwrap();
    }
    let input = dir.join("in.jsonl");
    let long = "shares of the company rose sharply after the results beat every estimate";
    std::fs::write(&input, format!("{}\n", serde_json::json!({ "text": long }))).unwrap();
    let run = |model: &Path, name: &str, extra: &[&str]| -> String {
        let output = dir.join(name);
        let result = embed(model, &input, &output, extra);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(result.status.success(), "{stderr}");
        std::fs::read_to_string(&output).unwrap()
    };
    let whole = run(&model, "whole.jsonl", &[]);
    let cut = run(&model, "cut.jsonl", &["--max-len", "6"]);
    assert_ne!(whole, cut, "the text must be longer than 6 tokens");
    std::fs::write(
        folder.join("tokenizer_config.json"),
        r#"{"model_max_length": 6}"#,
    )
    .unwrap();
    assert_eq!(run(&folder, "by-config.jsonl", &[]), cut);
    // An explicit --max-len still wins.
    assert_eq!(run(&folder, "explicit.jsonl", &["--max-len", "128"]), whole);
    std::fs::write(
        folder.join("tokenizer_config.json"),
        r#"{"model_max_length": 6.0}"#,
    )
    .unwrap();
    assert_eq!(run(&folder, "float.jsonl", &[]), cut);
    std::fs::write(
        folder.join("tokenizer_config.json"),
        r#"{"model_max_length": 1000000000000000019884624838656}"#,
    )
    .unwrap();
    assert_eq!(run(&folder, "no-limit.jsonl", &[]), whole);
    // Values that are no length, and a file that is not JSON: the model's own limit, said.
    for (i, settings) in [
        r#"{"model_max_length": 1}"#,
        r#"{"model_max_length": "6"}"#,
        "{",
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(folder.join("tokenizer_config.json"), settings).unwrap();
        let output = dir.join(format!("odd-{i}.jsonl"));
        let result = embed(&folder, &input, &output, &[]);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(result.status.success(), "{stderr}");
        assert!(
            stderr.contains("tokenizer_config.json"),
            "{settings}: {stderr}"
        );
        assert_eq!(
            std::fs::read_to_string(&output).unwrap(),
            whole,
            "{settings}"
        );
    }
}
