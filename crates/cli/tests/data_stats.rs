//! `cli data stats` as a user runs it: the figures of a small file computed here by hand, a
//! malformed file that ends with an error naming the line (exit code 1, no panic), and
//! `--on-bad-row skip` keeping the rejected line in a side file.

mod common;

use common::{cli, scratch};

/// The value after `label` on the line that starts with it.
fn field<'a>(stdout: &'a str, label: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{stdout}"))
        .trim()
}

#[test]
fn stats_of_a_small_file() {
    let dir = scratch("data-stats");
    let file = dir.join("small.jsonl");
    let rows = [
        ("profits soar", 0.8),
        ("profits soar", 0.6), // same text twice
        ("shares slip", -0.3),
        ("flat quarter", 0.0),
        ("guidance cut", -0.9),
    ];
    let text: String = rows
        .iter()
        .map(|(t, s)| format!("{{\"text\": \"{t}\", \"score\": {s}}}\n"))
        .collect();
    std::fs::write(&file, text).unwrap();
    let run = cli(&["data", "stats", "--data", file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    assert_eq!(field(&stdout, "rows"), "5");
    assert_eq!(field(&stdout, "unique texts"), "4");
    let scores: Vec<f64> = rows.iter().map(|r| r.1).collect();
    let mean = scores.iter().sum::<f64>() / 5.0;
    let std = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / 5.0).sqrt();
    let expected = format!("mean {mean:.4}  std {std:.4}  min -0.900  max 0.800");
    assert_eq!(field(&stdout, "score"), expected);
    // Classes by DAO-SPEC eq. 4: -0.9 → 0, -0.3 → 1, 0.0 → 2, none in 3, 0.8 and 0.6 → 4.
    let names = [
        "very negative",
        "negative",
        "neutral",
        "positive",
        "very positive",
    ];
    for (class, count) in [(0, 1), (1, 1), (2, 1), (3, 0), (4, 2)] {
        let line = field(&stdout, &format!("  class {class} {}", names[class]));
        assert!(
            line.starts_with(&count.to_string()),
            "class {class}: {line}"
        );
    }
}

#[test]
fn a_bad_row_names_its_line_or_is_set_aside() {
    let dir = scratch("data-bad");
    let file = dir.join("bad.jsonl");
    let bad_line = "{\"text\": \"too happy\", \"score\": 1.5}";
    std::fs::write(
        &file,
        format!("{{\"text\": \"fine\", \"score\": 0.1}}\n{bad_line}\n"),
    )
    .unwrap();

    let run = cli(&["data", "stats", "--data", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("bad.jsonl: line 2: score 1.5 is outside [-1, 1]"),
        "{stderr}"
    );

    let run = cli(&[
        "data",
        "stats",
        "--data",
        file.to_str().unwrap(),
        "--on-bad-row",
        "skip",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(field(&stdout, "rows"), "1");
    let rejected = std::fs::read_to_string(dir.join("bad.rejected.jsonl")).unwrap();
    assert_eq!(
        rejected.trim_end(),
        bad_line,
        "the rejected line, byte for byte"
    );
}
