//! `cargo xtask compare`: our `bench --json` results beside the PyTorch peer's
//! (`scripts/peer-bench.sh --json FILE`), as the Markdown table BENCHMARKS.md keeps, and each of
//! the speed issue's targets checked on them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The targets on the CPU.
const TRAINING_MAX: f64 = 1.0;
const INFERENCE_MIN: f64 = 1.2;
const MEMORY_MAX: f64 = 0.5;
const DAO_MAX: f64 = 1.05;
const LORA_TIME_MAX: f64 = 0.7;
const LORA_PEAK_MAX: f64 = 0.6;

/// Below this CPU use PyTorch's cores were shared for part of its run (its own script's rule).
const PEER_UTIL_MIN: f64 = 0.85;

/// One measurement of ours (`xtask bench --json`'s `results`).
#[derive(Debug, Clone, PartialEq)]
struct Ours {
    model: String,
    mode: String,
    step_ms: Option<f64>,
    sentences_per_s: Option<f64>,
    peak_mib: f64,
    by_round: Option<f64>,
}

/// One of PyTorch's (`peer_bench.py`'s JSON list).
#[derive(Debug, Clone, PartialEq)]
struct Peer {
    model: String,
    setting: String,
    median_ms: f64,
    sentences_per_s: f64,
    peak_mib: f64,
    cpu_util: f64,
}

/// Reads the files, prints the table and the targets' lines.
pub fn run(ours: &[PathBuf], peer: &[PathBuf]) -> Result<()> {
    let mut mine = Vec::new();
    for path in ours {
        mine.extend(ours_of(&read_json(path)?).with_context(|| in_file(path))?);
    }
    let mut theirs = Vec::new();
    for path in peer {
        theirs.extend(peer_of(&read_json(path)?).with_context(|| in_file(path))?);
    }
    let (table, targets) = compare(&mine, &theirs);
    if table.len() <= 2 {
        bail!(
            "no measurement of ours has a PyTorch counterpart (same model; modes constant, dao, \
             lora8-dao, infer and their -bf16 forms against const, dao, lora8, infer)"
        );
    }
    println!("{}", table.join("\n"));
    println!();
    println!("{}", targets.join("\n"));
    Ok(())
}

fn in_file(path: &Path) -> String {
    format!("in {}", path.display())
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Our measurements (errors and modes without a step or throughput left out).
fn ours_of(json: &Value) -> Result<Vec<Ours>> {
    let results = json["results"].as_array().context(
        "no `results` list: expected the output of `cargo xtask bench --json` (redirected to a file)",
    )?;
    let mut out = Vec::new();
    for (i, r) in results.iter().enumerate() {
        let text = |key: &str| {
            r[key]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("result {i} has no `{key}`"))
        };
        let (model, mode) = (text("model")?, text("mode")?);
        // PyTorch's peer runs f32: a pure half-precision run (`--dtype bf16`) has no
        // counterpart, nor does a failed measurement.
        if r["error"].is_string() || r["dtype"].as_str().is_some_and(|d| d != "f32") {
            continue;
        }
        let number = |key: &str| r[key].as_f64().filter(|v| v.is_finite() && *v > 0.0);
        let (step_ms, sentences_per_s) = (number("step_ms"), number("sentences_per_s"));
        let Some(peak) = number("peak_mem_bytes") else {
            continue;
        };
        if step_ms.is_none() && sentences_per_s.is_none() {
            continue;
        }
        out.push(Ours {
            model,
            mode,
            step_ms,
            sentences_per_s,
            peak_mib: peak / (1024.0 * 1024.0),
            by_round: number("vs_constant_by_round"),
        });
    }
    Ok(out)
}

/// PyTorch's measurements.
fn peer_of(json: &Value) -> Result<Vec<Peer>> {
    let rows = json
        .as_array()
        .context("not a list: expected the file written by `scripts/peer-bench.sh --json FILE`")?;
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let text = |key: &str| {
                r[key]
                    .as_str()
                    .map(str::to_owned)
                    .with_context(|| format!("row {i} has no `{key}`"))
            };
            let number = |key: &str| {
                r[key]
                    .as_f64()
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .with_context(|| format!("row {i} has no positive `{key}`"))
            };
            Ok(Peer {
                model: text("model")?,
                setting: text("setting")?,
                median_ms: 1e3 * number("median_s")?,
                sentences_per_s: number("sent_per_s")?,
                peak_mib: number("peak_rss_mib")?,
                cpu_util: r["cpu_util"].as_f64().unwrap_or(1.0),
            })
        })
        .collect()
}

/// PyTorch's setting for one of our modes (its f32 one for our `-bf16` forms).
fn peer_setting(mode: &str) -> Option<&'static str> {
    match mode.strip_suffix("-bf16").unwrap_or(mode) {
        "constant" => Some("const"),
        "dao" => Some("dao"),
        "lora8-dao" => Some("lora8"),
        "infer" => Some("infer"),
        _ => None,
    }
}

/// The table's lines, then the targets' lines.
fn compare(ours: &[Ours], peer: &[Peer]) -> (Vec<String>, Vec<String>) {
    let mut table = vec![
        "| model | mode | ours | PyTorch | ratio | ours peak MiB | PyTorch RSS MiB | memory ratio |"
            .to_owned(),
        "|---|---|---:|---:|---:|---:|---:|---:|".to_owned(),
    ];
    let mut targets = Vec::new();
    let mut models: Vec<&str> = Vec::new();
    for o in ours {
        if !models.contains(&o.model.as_str()) {
            models.push(&o.model);
        }
    }
    for model in models {
        let find = |mode: &str| ours.iter().find(|o| o.model == model && o.mode == mode);
        let mut training = Vec::new();
        let mut memory = Vec::new();
        let mut inference = None;
        for o in ours.iter().filter(|o| o.model == model) {
            let Some(p) = peer_setting(&o.mode)
                .and_then(|s| peer.iter().find(|p| p.model == model && p.setting == s))
            else {
                continue;
            };
            let shared = if p.cpu_util < PEER_UTIL_MIN {
                format!(
                    " (PyTorch's CPU use {:.2}: its cores were shared)",
                    p.cpu_util
                )
            } else {
                String::new()
            };
            let memory_ratio = o.peak_mib / p.peak_mib;
            let (ours_cell, peer_cell, ratio_cell) = match (o.step_ms, o.sentences_per_s) {
                (Some(step), _) => {
                    let ratio = step / p.median_ms;
                    if !o.mode.ends_with("-bf16") {
                        training.push((o.mode.as_str(), ratio));
                    }
                    (
                        format!("{step:.0} ms"),
                        format!("{:.0} ms", p.median_ms),
                        format!("**{ratio:.2}**"),
                    )
                }
                (None, Some(sentences)) => {
                    let ratio = sentences / p.sentences_per_s;
                    if o.mode == "infer" {
                        inference = Some(ratio);
                    }
                    (
                        format!("{sentences:.1} sent/s"),
                        format!("{:.1} sent/s", p.sentences_per_s),
                        format!("**{ratio:.2}×**"),
                    )
                }
                (None, None) => continue,
            };
            if !o.mode.ends_with("-bf16") {
                memory.push((o.mode.as_str(), memory_ratio));
            }
            table.push(format!(
                "| {model} | {} | {ours_cell} | {peer_cell} | {ratio_cell} | {:.0} | {:.0} | **{memory_ratio:.2}**{shared} |",
                o.mode, o.peak_mib, p.peak_mib
            ));
        }
        targets.extend(every_within(
            model,
            "training step",
            "PyTorch's time",
            &training,
            TRAINING_MAX,
        ));
        if let Some(ratio) = inference {
            targets.push(format!(
                "{model}: inference ≥ {INFERENCE_MIN}× PyTorch's throughput: {ratio:.2}× — {}",
                verdict(ratio >= INFERENCE_MIN)
            ));
        }
        targets.extend(every_within(
            model,
            "peak memory",
            "PyTorch's RSS",
            &memory,
            MEMORY_MAX,
        ));
        // A mode's row with its step time, where it has one.
        let timed = |mode: &str| find(mode).and_then(|o| Some((o, o.step_ms?)));
        let Some((constant, constant_step)) = timed("constant") else {
            continue;
        };
        for (mode, what, max) in [
            ("dao", "DAO", DAO_MAX),
            ("lora8-dao", "LoRA r=8", LORA_TIME_MAX),
        ] {
            let Some((o, step)) = timed(mode) else {
                continue;
            };
            let ratio = step / constant_step;
            let by_round = o
                .by_round
                .map_or(String::new(), |r| format!(" ({r:.3} round by round)"));
            targets.push(format!(
                "{model}: {what} ≤ {max}× the constant step's time: {ratio:.3}{by_round} — {}",
                verdict(ratio <= max)
            ));
            if mode == "lora8-dao" {
                let peak = o.peak_mib / constant.peak_mib;
                targets.push(format!(
                    "{model}: LoRA r=8 ≤ {LORA_PEAK_MAX}× the constant step's peak: {peak:.3} — {}",
                    verdict(peak <= LORA_PEAK_MAX)
                ));
            }
        }
    }
    (table, targets)
}

/// The line of a target every mode's ratio must meet (`None` without any).
fn every_within(
    model: &str,
    what: &str,
    against: &str,
    ratios: &[(&str, f64)],
    max: f64,
) -> Option<String> {
    let worst = ratios.iter().map(|(_, r)| *r).reduce(f64::max)?;
    let listed: Vec<String> = ratios
        .iter()
        .map(|(mode, r)| format!("{mode} {r:.2}"))
        .collect();
    Some(format!(
        "{model}: {what} ≤ {max}× {against}: {} — {}",
        listed.join(", "),
        verdict(worst <= max)
    ))
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ours() -> Value {
        json!({"device": "cpu", "results": [
            {"model": "minilm", "mode": "constant", "dtype": "f32", "step_ms": 400.0,
             "peak_mem_bytes": 440.0 * 1048576.0},
            {"model": "minilm", "mode": "dao", "dtype": "f32", "step_ms": 412.0,
             "peak_mem_bytes": 430.0 * 1048576.0, "vs_constant_by_round": 1.01},
            {"model": "minilm", "mode": "lora8-dao", "dtype": "f32", "step_ms": 290.0,
             "peak_mem_bytes": 250.0 * 1048576.0, "vs_constant_by_round": 0.69},
            {"model": "minilm", "mode": "infer", "dtype": "f32", "step_ms": 0.0,
             "sentences_per_s": 100.0, "peak_mem_bytes": 150.0 * 1048576.0},
            {"model": "minilm", "mode": "lora64-dao", "dtype": "f32", "step_ms": 300.0,
             "peak_mem_bytes": 260.0 * 1048576.0},
            {"model": "minilm", "mode": "infer-bf16", "dtype": "f32", "error": "no AMX"},
            {"model": "minilm", "mode": "constant", "dtype": "bf16", "step_ms": 100.0,
             "peak_mem_bytes": 300.0 * 1048576.0}
        ]})
    }

    fn peer() -> Value {
        json!([
            {"model": "minilm", "setting": "const", "median_s": 0.8, "sent_per_s": 12.5,
             "peak_rss_mib": 1700.0, "cpu_util": 0.95},
            {"model": "minilm", "setting": "dao", "median_s": 0.824, "sent_per_s": 12.1,
             "peak_rss_mib": 1720.0, "cpu_util": 0.80},
            {"model": "minilm", "setting": "lora8", "median_s": 0.725, "sent_per_s": 13.8,
             "peak_rss_mib": 1730.0, "cpu_util": 0.95},
            {"model": "minilm", "setting": "infer", "median_s": 0.4, "sent_per_s": 80.0,
             "peak_rss_mib": 1000.0, "cpu_util": 1.0}
        ])
    }

    #[test]
    fn each_mode_beside_pytorch_and_each_target_checked() {
        let (table, targets) = compare(&ours_of(&ours()).unwrap(), &peer_of(&peer()).unwrap());
        // Header, rule, and the four f32 modes with a counterpart (not lora64-dao, not the
        // error, not the bf16 run).
        assert_eq!(table.len(), 6, "{table:#?}");
        assert_eq!(
            table[2],
            "| minilm | constant | 400 ms | 800 ms | **0.50** | 440 | 1700 | **0.26** |"
        );
        assert!(table[3].starts_with("| minilm | dao | 412 ms | 824 ms | **0.50** |"));
        assert!(table[3].ends_with("(PyTorch's CPU use 0.80: its cores were shared) |"));
        assert_eq!(
            table[5],
            "| minilm | infer | 100.0 sent/s | 80.0 sent/s | **1.25×** | 150 | 1000 | **0.15** |"
        );
        assert_eq!(
            targets,
            [
                "minilm: training step ≤ 1× PyTorch's time: constant 0.50, dao 0.50, lora8-dao 0.40 — met",
                "minilm: inference ≥ 1.2× PyTorch's throughput: 1.25× — met",
                "minilm: peak memory ≤ 0.5× PyTorch's RSS: constant 0.26, dao 0.25, lora8-dao 0.14, infer 0.15 — met",
                "minilm: DAO ≤ 1.05× the constant step's time: 1.030 (1.010 round by round) — met",
                "minilm: LoRA r=8 ≤ 0.7× the constant step's time: 0.725 (0.690 round by round) — NOT met",
                "minilm: LoRA r=8 ≤ 0.6× the constant step's peak: 0.568 — met",
            ]
        );
    }

    #[test]
    fn files_of_the_wrong_kind_are_named_errors() {
        let error = ours_of(&peer()).unwrap_err().to_string();
        assert!(error.contains("cargo xtask bench --json"), "{error}");
        let error = peer_of(&ours()).unwrap_err().to_string();
        assert!(error.contains("peer-bench.sh"), "{error}");
        let error = peer_of(&json!([{"model": "minilm", "setting": "const"}]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("row 0 has no positive `median_s`"),
            "{error}"
        );
    }
}
