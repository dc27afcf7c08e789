//! `cli train` stopped by Ctrl-C: it says how to go on, and the run goes on from there.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{cli, scratch};

#[cfg(unix)]
#[test]
fn interrupted_run_says_how_to_resume_and_resumes() {
    let Some(model) = testkit::shared_file("interrupted_run", "fixtures/tiny-roberta") else {
        return;
    };
    let dir = scratch("train-interrupted");
    let demo = std::fs::read_to_string(testkit::repo_root().join("data/demo.jsonl")).unwrap();
    let rows: Vec<&str> = demo.lines().take(80).collect();
    std::fs::write(dir.join("train.jsonl"), rows.join("\n")).unwrap();
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\npath = {:?}\nmax_len = 32\n[data]\ntrain = {:?}\n\
             [train]\nepochs = 20\nbatch_size = 8\ncheckpoint_every_steps = 1\n\
             best_metric = \"accuracy\"\n",
            model,
            dir.join("train.jsonl")
        ),
    )
    .unwrap();
    let out = dir.join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_cli"))
        .args(["train", "--config", config.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stopped once a checkpoint is there, well before the 20 epochs (200 steps) are done.
    let started = Instant::now();
    while !out.join("checkpoints/last/state.json").is_file() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let hint = format!("`cli train --resume --out {}`", out.display());
    assert!(stderr.contains(&hint), "{stderr}");
    // The hint works: the run goes on from its checkpoint to the end.
    let resumed = cli(&["train", "--resume", "--out", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{text}");
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(
        metrics.lines().count(),
        21,
        "a header and 20 epochs: {metrics}"
    );
    // Each checkpoint evaluates to the validation MSE its epoch logged: `last` the 20th
    // epoch's, `best` that of the first epoch of the highest accuracy (train.best_metric).
    let header: Vec<&str> = metrics.lines().next().unwrap().split(',').collect();
    let logged = |name: &str| -> Vec<f64> {
        let column = header.iter().position(|&c| c == name).unwrap();
        metrics
            .lines()
            .skip(1)
            .map(|line| line.split(',').nth(column).unwrap().parse().unwrap())
            .collect()
    };
    let (mse, accuracy) = (logged("mse"), logged("accuracy"));
    let highest = accuracy.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let best = accuracy.iter().position(|&a| a == highest).unwrap();
    assert_ne!(
        best, 19,
        "the test needs a last epoch that is not the best: {metrics}"
    );
    for (checkpoint, expected) in [("last", mse[19]), ("best", mse[best])] {
        let run = out.to_str().unwrap();
        let output = cli(&[
            "evaluate",
            "--run",
            run,
            "--checkpoint",
            checkpoint,
            "--json",
        ]);
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let found = json["mse"].as_f64().unwrap();
        assert!(
            (found - expected).abs() <= 1e-12,
            "{checkpoint}: {found} against {expected}"
        );
    }
}
