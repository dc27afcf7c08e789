//! Whole runs on the tiny RoBERTa fixture and 60 rows of the finsent data: the loss goes down,
//! every run-folder file is there, resume is bit-exact, and a finished run evaluates, predicts
//! and exports consistently.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use encoder::{ModelFolder, TextTokenizer};
use trainer::{ConfigSources, RunConfig, RunDir, TrainOptions};

/// burn's flex backend seeds one process-wide generator (`Device::seed`), so runs in
/// parallel test threads would draw from each other's stream: the tests take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Fixture {
    _serial: std::sync::MutexGuard<'static, ()>,
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
}

/// A temp folder with `train.jsonl` (60 rows of finsent) and `valid.jsonl` (the next 20).
fn fixture(test: &str) -> Option<Fixture> {
    let model = testkit::shared_file(test, "fixtures/tiny-roberta/config.json")?
        .parent()
        .unwrap()
        .to_path_buf();
    let data = testkit::shared_file(test, "data/finsent/train.jsonl")?;
    let text = std::fs::read_to_string(data).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::write(root.join("train.jsonl"), lines[..60].join("\n")).unwrap();
    std::fs::write(root.join("valid.jsonl"), lines[60..80].join("\n")).unwrap();
    Some(Fixture {
        _serial: SERIAL.lock().unwrap_or_else(|e| e.into_inner()),
        _dir: dir,
        root,
        model,
    })
}

/// A small run config: batch 10, 2 epochs, lr 1e-3, warm-up 2, texts cut to 48 tokens.
fn config(f: &Fixture, extra: &[&str]) -> RunConfig {
    let file = f.root.join("run.toml");
    std::fs::write(
        &file,
        format!(
            "[model]\npath = {:?}\nmax_len = 48\n[data]\ntrain = {:?}\nvalid = {:?}\n\
             input = \"text+target\"\n[train]\nepochs = 2\nbatch_size = 10\nlr = 1e-3\n\
             warmup_steps = 2\nseed = 7\n",
            f.model,
            relative_from_here(&f.root.join("train.jsonl")),
            f.root.join("valid.jsonl")
        ),
    )
    .unwrap();
    let sources = ConfigSources {
        file: Some(file),
        env: Default::default(),
        overrides: extra.iter().map(|s| s.to_string()).collect(),
    };
    RunConfig::load_from(&sources).unwrap()
}

/// `path` (absolute) as a path relative to the working directory: the training file is named
/// so, as a user's config would, and the run's `config.toml` must hold it made absolute.
fn relative_from_here(path: &Path) -> PathBuf {
    let here = std::env::current_dir().unwrap();
    let up = here.components().count() - 1; // all but the root
    let mut relative: PathBuf = std::iter::repeat_n("..", up).collect();
    relative.push(path.strip_prefix("/").unwrap());
    assert!(relative.is_relative() && relative.is_file(), "{relative:?}");
    relative
}

fn run_to_end(config: &RunConfig, out: &Path) -> trainer::TrainSummary {
    let summary = trainer::train(config, out, &TrainOptions::default()).unwrap();
    assert!(summary.finished);
    summary
}

fn csv_header(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string()
}

/// Mean training loss of the first and last `k` steps.
fn first_and_last_loss(run: &Path, k: usize) -> (f64, f64) {
    let steps = RunDir::open(run).unwrap().read_steps().unwrap();
    let mean = |rows: &[trainer::StepRow]| {
        rows.iter().map(|r| r.loss_reg.unwrap()).sum::<f64>() / rows.len() as f64
    };
    (mean(&steps[..k]), mean(&steps[steps.len() - k..]))
}

fn check_run_folder(run: &Path, epochs: usize, steps: usize) {
    for file in [
        "config.toml",
        "metrics.csv",
        "steps.csv",
        "report.md",
        "checkpoints/last/model.bpk",
        "checkpoints/last/optimizer.safetensors",
        "checkpoints/last/state.json",
        "checkpoints/best/model.bpk",
        "checkpoints/best/state.json",
    ] {
        assert!(
            run.join(file).is_file(),
            "{file} missing in {}",
            run.display()
        );
    }
    // Its config names every file absolutely, so the run opens from any working directory.
    let saved = RunDir::open(run).unwrap().read_config().unwrap();
    assert!(saved.model.path.is_absolute(), "{:?}", saved.model.path);
    assert!(saved.data.train.is_absolute(), "{:?}", saved.data.train);
    assert_eq!(
        csv_header(&run.join("metrics.csv")),
        trainer::EpochRow::COLUMNS.join(",")
    );
    assert_eq!(
        csv_header(&run.join("steps.csv")),
        trainer::StepRow::COLUMNS.join(",")
    );
    let dir = RunDir::open(run).unwrap();
    let rows = dir.read_epochs().unwrap();
    assert_eq!(rows.len(), epochs);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.epoch as usize, i + 1);
        assert!(row.mse.is_finite() && row.mse > 0.0, "{row:?}");
        assert!((row.rmse - row.mse.sqrt()).abs() < 1e-9, "{row:?}");
        assert!((0.0..=1.0).contains(&row.accuracy), "{row:?}");
        // Weighted recall equals accuracy (DAO-SPEC "Metrics").
        assert!((row.recall - row.accuracy).abs() < 1e-12, "{row:?}");
        assert!(row.seconds > 0.0);
    }
    let steps_rows = dir.read_steps().unwrap();
    assert_eq!(steps_rows.len(), steps);
    for (i, row) in steps_rows.iter().enumerate() {
        assert_eq!(row.step as usize, i + 1);
    }
    let state = trainer::read_state(&run.join("checkpoints/last")).unwrap();
    assert!(state.finished);
    assert_eq!(state.global_step as usize, steps);
}

#[test]
fn dao_run_learns_and_writes_every_file() {
    let Some(f) = fixture("dao_run_learns_and_writes_every_file") else {
        return;
    };
    // 4 epochs of 6 batches; lr high enough for the tiny model to move.
    let config = config(&f, &["train.epochs=4", "train.lr=3e-3"]);
    let out = f.root.join("run-dao");
    let started = std::time::Instant::now();
    let summary = run_to_end(&config, &out);
    eprintln!(
        "tiny DAO run: {:.2} s/epoch",
        started.elapsed().as_secs_f64() / 4.0
    );
    check_run_folder(&out, 4, 24);
    let (first, last) = first_and_last_loss(&out, 6);
    eprintln!("L_r first epoch {first:.5}, last epoch {last:.5}");
    assert!(
        last < 0.8 * first,
        "L_r did not decrease: {first} -> {last}"
    );
    let steps = RunDir::open(&out).unwrap().read_steps().unwrap();
    // DAO logs its weights: w_r + w_c = 1, λ_r + λ_c = 1, α > 0, β in (0, 1).
    for row in &steps {
        let (wr, wc) = (row.w_reg.unwrap(), row.w_cls.unwrap());
        assert!((wr + wc - 1.0).abs() < 1e-5, "{row:?}");
        assert!((row.lambda_reg.unwrap() + row.lambda_cls.unwrap() - 1.0).abs() < 1e-5);
        assert!(row.alpha.unwrap() > 0.0);
        assert!((0.0..1.0).contains(&row.beta.unwrap()));
    }
    // Warm-up: the first update has lr 0, the second lr/2.
    assert_eq!(steps[0].lr, 0.0);
    assert!((steps[1].lr - 1.5e-3).abs() < 1e-15);
    // The DAO module trains: α moved from its initial 0.1.
    assert!((steps.last().unwrap().alpha.unwrap() - 0.1).abs() > 1e-5);
    assert!(summary.report.unwrap().is_file());
}

#[test]
fn constant_and_lora_runs() {
    let Some(f) = fixture("constant_and_lora_runs") else {
        return;
    };
    let config = config(
        &f,
        &[
            "weighting.strategy=constant",
            "train.lr=3e-3",
            "train.epochs=3",
        ],
    );
    let out = f.root.join("run-constant");
    run_to_end(&config, &out);
    check_run_folder(&out, 3, 18);
    let steps = RunDir::open(&out).unwrap().read_steps().unwrap();
    for row in &steps {
        // L = 0.9 L_r + 0.1 L_c.
        let expected = 0.9 * row.loss_reg.unwrap() + 0.1 * row.loss_cls.unwrap();
        assert!((row.loss_total - expected).abs() < 1e-5, "{row:?}");
        assert_eq!(row.alpha, None);
    }
    let (first, last) = first_and_last_loss(&out, 6);
    assert!(
        last < 0.8 * first,
        "L_r did not decrease: {first} -> {last}"
    );

    let config = config_lora(&f);
    let out = f.root.join("run-lora");
    run_to_end(&config, &out);
    check_run_folder(&out, 2, 12);
    // The LoRA checkpoint holds the adapters and heads only: smaller than the full one.
    let full = std::fs::metadata(f.root.join("run-constant/checkpoints/last/model.bpk"))
        .unwrap()
        .len();
    let lora = std::fs::metadata(out.join("checkpoints/last/model.bpk"))
        .unwrap()
        .len();
    assert!(lora * 3 < full, "lora {lora} B vs full {full} B");
}

fn config_lora(f: &Fixture) -> RunConfig {
    config(f, &["train.finetune=lora", "lora.rank=4", "train.lr=1e-2"])
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let Some(f) = fixture("resumed_run_equals_uninterrupted_run") else {
        return;
    };
    for (name, extra) in [
        ("dao", vec!["train.epochs=2"]),
        (
            "lora",
            vec!["train.finetune=lora", "lora.rank=4", "train.epochs=2"],
        ),
        // The baselines with state of their own: a learned parameter and its Adam, a loss
        // history (DWA's weights change from epoch 3 on), GradNorm's weights.
        (
            "uncertainty",
            vec!["weighting.strategy=uncertainty", "train.epochs=2"],
        ),
        ("dwa", vec!["weighting.strategy=dwa", "train.epochs=3"]),
        (
            "gradnorm",
            vec!["weighting.strategy=gradnorm", "train.epochs=2"],
        ),
    ] {
        let config = config(&f, &extra);
        let whole = f.root.join(format!("whole-{name}"));
        run_to_end(&config, &whole);
        // Interrupted at step 4 of epoch 1 (a mid-epoch checkpoint), then at the end of
        // epoch 1, then resumed to the end.
        let parts = f.root.join(format!("parts-{name}"));
        for stop in [4, 6] {
            let options = TrainOptions {
                resume: stop != 4,
                stop_after_steps: Some(stop),
                ..Default::default()
            };
            let s = trainer::train(&config, &parts, &options).unwrap();
            assert!(!s.finished);
        }
        let options = TrainOptions {
            resume: true,
            ..Default::default()
        };
        assert!(trainer::train(&config, &parts, &options).unwrap().finished);

        let (a, b) = (RunDir::open(&whole).unwrap(), RunDir::open(&parts).unwrap());
        assert_eq!(
            a.read_steps().unwrap(),
            b.read_steps().unwrap(),
            "{name}: steps.csv"
        );
        let (ea, eb) = (a.read_epochs().unwrap(), b.read_epochs().unwrap());
        assert_eq!(ea.len(), config.train.epochs);
        for (x, y) in ea.iter().zip(&eb) {
            // Bit-identical metrics; only the wall time and memory may differ.
            let strip = |r: &trainer::EpochRow| trainer::EpochRow {
                seconds: 0.0,
                peak_mem_bytes: None,
                ..r.clone()
            };
            assert_eq!(strip(x), strip(y), "{name}: metrics.csv");
        }
    }
}

#[test]
fn config_errors_name_the_key() {
    let Some(f) = fixture("config_errors_name_the_key") else {
        return;
    };
    let _ = config(&f, &[]);
    let file = f.root.join("run.toml");
    for (overrides, key) in [
        (vec!["train.lrr=1"], "train.lrr"),
        (vec!["train.epochs=two"], "train.epochs"),
    ] {
        let sources = ConfigSources {
            file: Some(file.clone()),
            env: Default::default(),
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
        };
        let text = RunConfig::load_from(&sources).unwrap_err().to_string();
        assert!(text.contains(&format!("`{key}`")), "{text}");
    }
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_checkpoint() {
    let Some(f) = fixture("non_finite_loss_stops_and_keeps_the_last_checkpoint") else {
        return;
    };
    for strategy in ["dao", "constant"] {
        // An absurd learning rate: the weights blow up within a step or two of the first
        // update, after a checkpoint at every step.
        let strategy = format!("weighting.strategy={strategy}");
        let bad = [strategy.as_str(), "train.lr=1e30", "train.warmup_steps=0"];
        let every_step = [&bad[..], &["train.checkpoint_every_steps=1"]].concat();
        let out = f.root.join(format!("nan-{strategy}"));
        let text = trainer::train(&config(&f, &every_step), &out, &TrainOptions::default())
            .unwrap_err()
            .to_string();
        let failed: u64 = text
            .strip_prefix("step ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|step| step.parse().ok())
            .unwrap_or_else(|| panic!("{text}"));
        assert!((2..=3).contains(&failed), "{text}");
        assert!(
            text.contains("the last good checkpoint is in checkpoints/last"),
            "{text}"
        );
        // The checkpoint is the last step whose loss was finite, not a later one.
        let last = out.join("checkpoints/last");
        assert_eq!(trainer::read_state(&last).unwrap().global_step, failed - 1);

        // Without a checkpoint before it, the message does not promise one.
        let out = f.root.join(format!("nan-none-{strategy}"));
        let text = trainer::train(&config(&f, &bad), &out, &TrainOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("no checkpoint was written before it"),
            "{text}"
        );
        assert!(!out.join("checkpoints/last").exists());
    }
}

/// `--resume` continues the run its config.toml describes: a changed learning rate or LoRA
/// switched on is refused with the keys named and nothing written; a finished run is left as
/// it is; a folder that holds any file of a run takes no fresh run.
/// A resumed run must see the rows it started with; a damaged `state.json` is refused; a
/// crash between the two renames of a checkpoint leaves `.best.old`, which `evaluate` reads
/// and `--resume` puts back.
#[test]
fn resume_checks_the_data_and_the_state_and_recovers_a_checkpoint() {
    let Some(f) = fixture("resume_checks_the_data_and_the_state") else {
        return;
    };
    let train_file = f.root.join("train-copy.jsonl");
    std::fs::copy(f.root.join("train.jsonl"), &train_file).unwrap();
    let on_copy = format!("data.train={}", train_file.display());
    let cfg = config(&f, &["train.epochs=2", &on_copy]);
    let out = f.root.join("run");
    let stop = TrainOptions {
        stop_after_steps: Some(8),
        ..Default::default()
    };
    assert!(!trainer::train(&cfg, &out, &stop).unwrap().finished);
    let resume = TrainOptions {
        resume: true,
        ..Default::default()
    };
    let original = std::fs::read_to_string(&train_file).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let before = std::fs::read(out.join("steps.csv")).unwrap();
    // One row fewer; then as many rows, one score changed.
    let one_fewer = lines[1..].join("\n");
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    let mut changed = first.clone();
    changed["score"] = (first["score"].as_f64().unwrap() * 0.5).into();
    let rescored = std::iter::once(changed.to_string())
        .chain(lines[1..].iter().map(|l| l.to_string()))
        .collect::<Vec<_>>()
        .join("\n");
    for (data, expected) in [
        (&one_fewer, "training: 59 rows now, 60 when the run started"),
        (&rescored, "training: 60 rows now, 60 when the run started"),
    ] {
        std::fs::write(&train_file, data).unwrap();
        let text = trainer::train(&cfg, &out, &resume).unwrap_err().to_string();
        assert!(
            text.contains("the data differs") && text.contains(expected),
            "{text}"
        );
        assert_eq!(std::fs::read(out.join("steps.csv")).unwrap(), before);
    }
    std::fs::write(&train_file, &original).unwrap();

    // Every file of a checkpoint is recorded with its length in state.json.
    let last = out.join("checkpoints/last");
    let recorded = trainer::read_state(&last).unwrap().files.unwrap();
    let mut on_disk: Vec<String> = std::fs::read_dir(&last)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "state.json")
        .collect();
    on_disk.sort();
    assert_eq!(recorded.keys().cloned().collect::<Vec<_>>(), on_disk);
    for (name, digest) in &recorded {
        assert_eq!(
            digest.bytes,
            std::fs::metadata(last.join(name)).unwrap().len()
        );
    }
    // A byte flipped in the weights, the optimizer state cut short: refused by name, and
    // nothing written; the same for the best checkpoint's weights read by evaluate.
    let device = burn::tensor::Device::flex();
    let options = trainer::InferenceOptions::default();
    let damage = |path: &Path, cut: bool| {
        let whole = std::fs::read(path).unwrap();
        let mut bytes = whole.clone();
        if cut {
            bytes.truncate(bytes.len() - 1);
        } else {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x10;
        }
        std::fs::write(path, bytes).unwrap();
        whole
    };
    for (file, cut) in [("model.bpk", false), ("optimizer.safetensors", true)] {
        let path = last.join(file);
        let whole = damage(&path, cut);
        let text = trainer::train(&cfg, &out, &resume).unwrap_err().to_string();
        assert!(
            text.contains(&path.display().to_string())
                && text.contains("the file is damaged")
                && text.contains("restore checkpoints/last from a copy"),
            "{text}"
        );
        assert_eq!(std::fs::read(out.join("steps.csv")).unwrap(), before);
        std::fs::write(&path, whole).unwrap();
    }
    let best_weights = out.join("checkpoints/best/model.bpk");
    let whole = damage(&best_weights, false);
    let text = trainer::evaluate_run(&out, "best", None, &device, &options)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains(&best_weights.display().to_string())
            && text.contains("damaged")
            && text.contains("(--checkpoint last)"),
        "{text}"
    );
    // The other checkpoint still reads; a name that is neither is refused.
    assert!(trainer::evaluate_run(&out, "last", None, &device, &options).is_ok());
    let text = trainer::evaluate_run(&out, "middle", None, &device, &options)
        .unwrap_err()
        .to_string();
    assert!(text.contains("no checkpoint `middle`"), "{text}");
    std::fs::write(&best_weights, whole).unwrap();
    // A damaged state.json naming a file outside the checkpoint is not followed there, and a
    // pipe in place of the weights is refused, not read without end.
    let last_state = last.join("state.json");
    let healthy = std::fs::read_to_string(&last_state).unwrap();
    let mut outside: serde_json::Value = serde_json::from_str(&healthy).unwrap();
    outside["files"]["../../config.toml"] = serde_json::json!({"bytes": 1, "crc32": "00000000"});
    std::fs::write(&last_state, outside.to_string()).unwrap();
    let text = trainer::train(&cfg, &out, &resume).unwrap_err().to_string();
    assert!(
        text.contains("names \"../../config.toml\", not a file of the checkpoint"),
        "{text}"
    );
    std::fs::write(&last_state, &healthy).unwrap();
    #[cfg(unix)]
    {
        let weights = last.join("model.bpk");
        let kept = f.root.join("model.bpk.kept");
        std::fs::rename(&weights, &kept).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&weights).status();
        assert!(made.unwrap().success());
        let text = trainer::evaluate_run(&out, "last", None, &device, &options)
            .unwrap_err()
            .to_string();
        assert!(text.contains("not a regular file"), "{text}");
        std::fs::remove_file(&weights).unwrap();
        std::fs::rename(&kept, &weights).unwrap();
    }

    // A state.json edited past the run's end.
    let state_file = out.join("checkpoints/last/state.json");
    let state = std::fs::read_to_string(&state_file).unwrap();
    let mut damaged: serde_json::Value = serde_json::from_str(&state).unwrap();
    damaged["epoch"] = 99.into();
    std::fs::write(&state_file, damaged.to_string()).unwrap();
    let text = trainer::train(&cfg, &out, &resume).unwrap_err().to_string();
    assert!(
        text.contains("state.json") && text.contains("is no position of this run"),
        "{text}"
    );
    std::fs::write(&state_file, &state).unwrap();

    // A checkpoint of a version that recorded no digests resumes as before.
    let mut legacy: serde_json::Value = serde_json::from_str(&state).unwrap();
    legacy.as_object_mut().unwrap().remove("files").unwrap();
    std::fs::write(&state_file, legacy.to_string()).unwrap();

    // The best checkpoint caught between its two renames (after epoch 1).
    let checkpoints = out.join("checkpoints");
    std::fs::rename(checkpoints.join("best"), checkpoints.join(".best.old")).unwrap();
    std::fs::create_dir(checkpoints.join(".best.tmp")).unwrap();
    let metrics = trainer::evaluate_run(&out, "best", None, &device, &options).unwrap();
    assert!(metrics.mse.is_finite());
    assert!(trainer::train(&cfg, &out, &resume).unwrap().finished);
    let mut names: Vec<String> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["best", "last"]);
    // And the run is the one it would have been without any of this.
    let whole = f.root.join("whole");
    run_to_end(&cfg, &whole);
    assert_eq!(
        std::fs::read(out.join("steps.csv")).unwrap(),
        std::fs::read(whole.join("steps.csv")).unwrap()
    );
}

/// A run stopped before its first epoch ended has no `best` checkpoint: reading it says so
/// and names `last`, which reads.
#[test]
fn a_run_without_a_best_checkpoint_points_to_its_last() {
    let Some(f) = fixture("a_run_without_a_best_checkpoint") else {
        return;
    };
    let cfg = config(&f, &["train.epochs=2"]);
    let out = f.root.join("run");
    let stop = TrainOptions {
        stop_after_steps: Some(2),
        ..Default::default()
    };
    assert!(!trainer::train(&cfg, &out, &stop).unwrap().finished);
    let device = burn::tensor::Device::flex();
    let options = trainer::InferenceOptions::default();
    let text = trainer::evaluate_run(&out, "best", None, &device, &options)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains(
            "checkpoints/best: not there (no epoch has ended yet with a value of \
             train.best_metric); --checkpoint last reads the other one"
        ),
        "{text}"
    );
    let metrics = trainer::evaluate_run(&out, "last", None, &device, &options).unwrap();
    assert!(metrics.mse.is_finite());
}

/// `evaluate --data` on a file named like the run's training or validation file keeps its
/// rejected lines apart: the records training kept of its own rejected rows are never
/// replaced.
#[test]
fn evaluate_on_another_file_keeps_the_runs_rejected_lines() {
    let Some(f) = fixture("evaluate_on_another_file_keeps_the_runs_rejected_lines") else {
        return;
    };
    let valid = std::fs::read_to_string(f.root.join("valid.jsonl")).unwrap();
    for name in ["train.jsonl", "valid.jsonl"] {
        let path = f.root.join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}\nnot json in {name}\n")).unwrap();
    }
    let cfg = config(&f, &["train.epochs=1", "data.on_bad_row=skip"]);
    let out = f.root.join("run");
    run_to_end(&cfg, &out);
    let records = ["train.rejected.jsonl", "valid.rejected.jsonl"].map(|name| {
        let record = std::fs::read_to_string(out.join(name)).unwrap();
        assert!(record.contains("not json in"), "{name}: {record}");
        (name, record)
    });

    let other = f.root.join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    let device = burn::tensor::Device::flex();
    for name in ["train", "valid"] {
        let file = other.join(format!("{name}.jsonl"));
        std::fs::write(&file, format!("{valid}\nnot json elsewhere\n")).unwrap();
        let metrics =
            trainer::evaluate_run(&out, "best", Some(&file), &device, &Default::default()).unwrap();
        assert_eq!(metrics.n, 20);
        for (kept, record) in &records {
            assert_eq!(&std::fs::read_to_string(out.join(kept)).unwrap(), record);
        }
        let evaluated = out.join(format!("{name}.evaluate.rejected.jsonl"));
        let evaluated = std::fs::read_to_string(evaluated).unwrap();
        assert!(evaluated.contains("not json elsewhere"), "{evaluated}");
    }
}

#[test]
fn resume_refuses_another_configuration_and_writes_nothing() {
    let Some(f) = fixture("resume_refuses_another_configuration_and_writes_nothing") else {
        return;
    };
    let config_now = config(&f, &["train.epochs=1"]);
    let out = f.root.join("run");
    let options = TrainOptions {
        stop_after_steps: Some(3),
        ..Default::default()
    };
    assert!(
        !trainer::train(&config_now, &out, &options)
            .unwrap()
            .finished
    );
    let files = |names: &[&str]| -> Vec<Vec<u8>> {
        names
            .iter()
            .map(|n| std::fs::read(out.join(n)).unwrap())
            .collect()
    };
    let kept = ["config.toml", "steps.csv", "checkpoints/last/model.bpk"];
    let before = files(&kept);
    let resume = TrainOptions {
        resume: true,
        ..Default::default()
    };
    for (extra, key) in [
        (
            vec!["train.epochs=1", "train.lr=2e-3"],
            "train.lr = 0.001 → 0.002",
        ),
        (
            vec!["train.epochs=1", "train.finetune=lora"],
            "train.finetune = \"full\" → \"lora\"",
        ),
        (vec!["train.epochs=2"], "train.epochs = 1 → 2"),
    ] {
        let text = trainer::train(&config(&f, &extra), &out, &resume)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains(key) && text.contains("nothing was changed"),
            "{text}"
        );
        assert_eq!(files(&kept), before, "{key}");
    }
    // Where the files lie and the device may change (the data moved): resumed to the end.
    let moved = f.root.join("moved-valid.jsonl");
    std::fs::copy(f.root.join("valid.jsonl"), &moved).unwrap();
    let moved_config = config(
        &f,
        &["train.epochs=1", &format!("data.valid={}", moved.display())],
    );
    assert!(
        trainer::train(&moved_config, &out, &resume)
            .unwrap()
            .finished
    );
    let saved = RunDir::open(&out).unwrap().read_config().unwrap();
    assert_eq!(saved.data.valid.as_deref(), Some(moved.as_path()));

    // A finished run resumed: nothing trained, nothing rewritten but its config.
    let done = files(&["steps.csv", "metrics.csv", "checkpoints/last/model.bpk"]);
    assert!(
        trainer::train(&moved_config, &out, &resume)
            .unwrap()
            .finished
    );
    assert_eq!(
        files(&["steps.csv", "metrics.csv", "checkpoints/last/model.bpk"]),
        done
    );

    // A folder with only a config.toml (or a report) of a run: no fresh run over it.
    let other = f.root.join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("config.toml"), "kept").unwrap();
    let text = trainer::train(&config_now, &other, &TrainOptions::default())
        .unwrap_err()
        .to_string();
    assert!(text.contains("already holds a run"), "{text}");
    assert_eq!(
        std::fs::read_to_string(other.join("config.toml")).unwrap(),
        "kept"
    );
    // A fresh run that fails before its first step (its validation file is not there) leaves
    // no run behind: once fixed, the same folder takes it.
    let retry = f.root.join("retry");
    let missing = format!("data.valid={}", f.root.join("absent.jsonl").display());
    let broken = config(&f, &["train.epochs=1", &missing]);
    let text = trainer::train(&broken, &retry, &TrainOptions::default())
        .unwrap_err()
        .to_string();
    assert!(text.contains("absent.jsonl"), "{text}");
    assert!(!trainer::holds_run(&retry));
    assert!(
        !trainer::train(&config_now, &retry, &options)
            .unwrap()
            .finished
    );
    // A file for a run folder: refused, the file as it was.
    let file = f.root.join("train.jsonl");
    let rows = std::fs::read(&file).unwrap();
    let text = trainer::train(&config_now, &file, &TrainOptions::default())
        .unwrap_err()
        .to_string();
    assert!(text.contains("is a file"), "{text}");
    assert_eq!(std::fs::read(&file).unwrap(), rows);
    // And --resume where there is no run: refused before anything is made.
    let nowhere = f.root.join("nowhere");
    let text = trainer::train(&config_now, &nowhere, &resume)
        .unwrap_err()
        .to_string();
    assert!(text.contains("not a run folder"), "{text}");
    assert!(!nowhere.exists());
}

/// A run gives the same numbers on one thread as on three, bit for bit: every parallel sum of
/// the CPU step adds its parts in a fixed order (full fine-tuning and LoRA).
#[test]
fn a_run_is_the_same_on_one_thread_as_on_three() {
    let Some(f) = fixture("a_run_is_the_same_on_one_thread_as_on_three") else {
        return;
    };
    for (name, extra) in [
        ("full", vec!["train.epochs=1"]),
        (
            "lora",
            vec!["train.epochs=1", "train.finetune=lora", "lora.rank=4"],
        ),
    ] {
        let config = config(&f, &extra);
        let on = |threads: usize| {
            let out = f.root.join(format!("{name}-{threads}"));
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| run_to_end(&config, &out));
            let steps = std::fs::read_to_string(out.join(RunDir::STEPS)).unwrap();
            // The weights, through what they compute (the checkpoint files differ in their
            // parameters' random ids).
            let device = Device::flex();
            let options = Default::default();
            let metrics = trainer::evaluate_run(&out, "last", None, &device, &options).unwrap();
            (steps, metrics)
        };
        let (steps, metrics) = on(1);
        let (steps_3, metrics_3) = on(3);
        assert_eq!(steps_3, steps, "{name}: the losses parted");
        assert_eq!(metrics_3, metrics, "{name}: the weights parted");
    }
}

/// A run whose validation rows were split off its training file: `evaluate` makes the same
/// split again and scores the same rows as training did, with the data files in place or not.
#[test]
fn evaluate_a_run_validated_on_a_split_of_its_training_file() {
    let Some(f) = fixture("evaluate_a_run_validated_on_a_split_of_its_training_file") else {
        return;
    };
    let mut config = config(&f, &["train.epochs=1"]);
    config.data.valid = None;
    let out = f.root.join("run");
    let summary = run_to_end(&config, &out);
    let row = &summary.epochs[0];
    let device = Device::flex();

    let metrics = trainer::evaluate_run(&out, "best", None, &device, &Default::default()).unwrap();
    let splits = data::load_splits(&config.data_config(), None).unwrap();
    assert_eq!(metrics.n, splits.valid.len());
    assert!(metrics.n > 0 && metrics.n < 60, "{}", metrics.n);
    assert!(
        (metrics.mse - row.mse).abs() < 1e-6,
        "{} vs {}",
        metrics.mse,
        row.mse
    );
    assert_eq!(metrics.accuracy, row.accuracy);

    // The split needs the training file: gone, evaluate names it.
    std::fs::remove_file(f.root.join("train.jsonl")).unwrap();
    let text = trainer::evaluate_run(&out, "best", None, &device, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(text.contains("train.jsonl"), "{text}");
}

#[test]
fn evaluate_predict_and_export_round_trip() {
    let Some(f) = fixture("evaluate_predict_and_export_round_trip") else {
        return;
    };
    let config = config_lora(&f);
    let out = f.root.join("run");
    let summary = run_to_end(&config, &out);
    let device = Device::flex();

    // evaluate = the best epoch's row of metrics.csv.
    let metrics = trainer::evaluate_run(&out, "best", None, &device, &Default::default()).unwrap();
    let best = summary.best_epoch.unwrap() as usize;
    let row = &summary.epochs[best - 1];
    assert!(
        (metrics.mse - row.mse).abs() < 1e-6,
        "{} vs {}",
        metrics.mse,
        row.mse
    );
    assert_eq!(metrics.accuracy, row.accuracy);
    assert_eq!(metrics.n, 20);

    // Batches run their rows sorted by length: each row's outputs come back in row order, and
    // equal (to float rounding) those of the same rows run all in one batch, in file order
    // within it. One batch pads to the longest row, batches of 7 to lengths near each row's.
    let (saved, model) = trainer::SentimentModel::from_run(&out, "best", None, &device).unwrap();
    let folder = ModelFolder::open(&saved.model.path, None).unwrap();
    let tokenizer = TextTokenizer::from_file(&folder.tokenizer, &folder.config, 48).unwrap();
    let rows = data::load(&f.root.join("valid.jsonl"), &Default::default()).unwrap();
    let set = data::TokenizedSet::new(&rows, &tokenizer, saved.data_config().input, None).unwrap();
    let lengths = set.lengths();
    assert!(lengths.windows(2).any(|w| w[0] < w[1]) && lengths.windows(2).any(|w| w[0] > w[1]));
    let hidden = trainer::RowsProgress::new(false, set.len(), "test");
    let evaluate = |batch_size| {
        let pad = tokenizer.pad_id();
        trainer::evaluate_set(&model, &set, batch_size, pad, &device, &hidden).unwrap()
    };
    let (one_metrics, one) = evaluate(set.len());
    let (sorted_metrics, sorted) = evaluate(7);
    let delta = testkit::max_abs_diff(&sorted.scores, &one.scores)
        .max(testkit::max_abs_diff(&sorted.logits, &one.logits));
    assert!(
        delta < 1e-6,
        "sorted batches differ from one batch by {delta}"
    );
    let mse_delta = (sorted_metrics.mse - one_metrics.mse).abs();
    assert!(
        mse_delta < 1e-7,
        "sorted batches' MSE differs by {mse_delta}"
    );
    assert_eq!(sorted_metrics.accuracy, one_metrics.accuracy);
    assert_eq!(sorted_metrics.n, one_metrics.n);

    // predict: one line per input, in order, probabilities summing to 1.
    let valid = std::fs::read_to_string(f.root.join("valid.jsonl")).unwrap();
    let input = f.root.join("input.jsonl");
    let inputs: Vec<&str> = valid.lines().take(5).collect();
    std::fs::write(&input, inputs.join("\n")).unwrap();
    let output = f.root.join("pred.jsonl");
    assert_eq!(
        trainer::predict_file(&out, "best", &input, &output, &device, &Default::default()).unwrap(),
        5
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for (i, (line, input)) in lines.iter().zip(&inputs).enumerate() {
        let input: serde_json::Value = serde_json::from_str(input).unwrap();
        assert_eq!(line["text"], input["text"]);
        assert_eq!(line["target"], input["target"]);
        // Each line's score is its own row's (the rows ran sorted by length).
        let score = line["score"].as_f64().unwrap() as f32;
        assert!((score - one.scores[i]).abs() < 1e-6, "line {i}: {score}");
        let p: Vec<f64> = line["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(p.len(), 5);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        let argmax = (0..5).fold(0, |b, k| if p[k] > p[b] { k } else { b });
        assert_eq!(line["class"].as_u64().unwrap() as usize, argmax);
        // The names themselves are checked by `cli data stats`'s test.
        assert_eq!(line["label"].as_str().unwrap(), data::CLASS_NAMES[argmax]);
    }

    // Two rows a batch (not the run's ten): the same lines to float rounding.
    let pairs_output = f.root.join("pred-pairs.jsonl");
    let two_a_batch = trainer::InferenceOptions {
        batch_size: Some(2),
        ..Default::default()
    };
    trainer::predict_file(&out, "best", &input, &pairs_output, &device, &two_a_batch).unwrap();
    let pairs: Vec<serde_json::Value> = std::fs::read_to_string(&pairs_output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(pairs.len(), 5);
    for (i, (pair, line)) in pairs.iter().zip(&lines).enumerate() {
        assert_eq!(pair["text"], line["text"]);
        let score = pair["score"].as_f64().unwrap() as f32;
        assert!((score - one.scores[i]).abs() < 1e-6, "line {i}: {score}");
    }

    // export: the folder loads back through ModelFolder with the same outputs.
    let exported = f.root.join("export");
    trainer::export_run(&out, "best", None, &exported, &device).unwrap();
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "heads.safetensors",
    ] {
        assert!(exported.join(file).is_file(), "{file}");
    }
    // The tokenizer files tokenize as the run did: no fixed padding, cut at its max_len (48),
    // which transformers reads as model_max_length.
    let json = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(exported.join(name)).unwrap()).unwrap()
    };
    assert_eq!(json("tokenizer_config.json")["model_max_length"], 48);
    let tokenizer_json = json("tokenizer.json");
    assert_eq!(tokenizer_json["truncation"]["max_length"], 48);
    assert!(tokenizer_json["padding"].is_null());
    let (_, model) = trainer::SentimentModel::from_run(&out, "best", None, &device).unwrap();
    let folder = ModelFolder::open(&exported, None).unwrap();
    let encoder = folder.load_encoder(&device).unwrap();
    let heads = heads::MultiTaskHeads::from_file(
        &exported.join("heads.safetensors"),
        &config.heads_config(),
        64,
        &device,
    )
    .unwrap();
    let tokenizer = TextTokenizer::from_file(&folder.tokenizer, &folder.config, 48).unwrap();
    let rows: Vec<encoder::Encoded> = inputs
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            tokenizer
                .encode(v["text"].as_str().unwrap(), v["target"].as_str())
                .unwrap()
        })
        .collect();
    let refs: Vec<&encoder::Encoded> = rows.iter().collect();
    let input = encoder::pad_batch(&refs, tokenizer.pad_id(), &device);
    let expected = model.forward(input.clone(), None);
    let h = encoder.first_token(input);
    let actual = heads.forward(h);
    let v = |t: burn::tensor::Tensor<2>| t.into_data().try_into_vec::<f32>().unwrap();
    let d_scores = testkit::max_abs_diff(&v(actual.scores), &v(expected.scores));
    let d_logits = testkit::max_abs_diff(&v(actual.logits), &v(expected.logits));
    eprintln!("export round trip: max |Δ| scores {d_scores:e}, logits {d_logits:e}");
    assert!(d_scores < 1e-5 && d_logits < 1e-5);
    // predict's scores are the model's.
    let predicted: Vec<f32> = lines
        .iter()
        .map(|l| l["score"].as_f64().unwrap() as f32)
        .collect();
    assert!(
        testkit::max_abs_diff(
            &predicted,
            &v(model
                .forward(encoder::pad_batch(&refs, tokenizer.pad_id(), &device), None)
                .scores)
        ) < 1e-5
    );

    // The run and its model folder moved (the run's config naming folders that are not there,
    // the model copied elsewhere): refused with what to do, then found where it is now, with
    // the same predictions; evaluating a file of its own needs none of the run's data files.
    let moved = f.root.join("moved-run");
    copy_folder(&out, &moved);
    let model_now = f.root.join("moved-model");
    copy_folder(&f.model, &model_now);
    let mut saved = RunDir::open(&moved).unwrap().read_config().unwrap();
    saved.model.path = f.root.join("gone");
    saved.data.train = f.root.join("gone-train.jsonl");
    saved.data.valid = Some(f.root.join("gone-valid.jsonl"));
    RunDir::open(&moved).unwrap().write_config(&saved).unwrap();
    let input = f.root.join("input.jsonl");
    let moved_output = f.root.join("moved-pred.jsonl");
    let moved_model = trainer::InferenceOptions {
        model_folder: Some(model_now.clone()),
        ..Default::default()
    };
    let predict = |options: &trainer::InferenceOptions| {
        trainer::predict_file(&moved, "best", &input, &moved_output, &device, options)
    };
    let text = predict(&Default::default()).unwrap_err().to_string();
    assert!(text.contains("gone") && text.contains("--model"), "{text}");
    assert_eq!(predict(&moved_model).unwrap(), 5);
    assert_eq!(
        std::fs::read_to_string(&moved_output).unwrap(),
        std::fs::read_to_string(&output).unwrap()
    );
    let moved_metrics = trainer::evaluate_run(
        &moved,
        "best",
        Some(&f.root.join("valid.jsonl")),
        &device,
        &moved_model,
    )
    .unwrap();
    assert_eq!(
        (moved_metrics.mse, moved_metrics.n),
        (metrics.mse, metrics.n)
    );
    let text = trainer::evaluate_run(&moved, "best", None, &device, &moved_model)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("gone-valid.jsonl") && text.contains("--data"),
        "{text}"
    );
    // The run's own validation file is all its evaluation reads.
    saved.data.valid = Some(f.root.join("valid.jsonl"));
    RunDir::open(&moved).unwrap().write_config(&saved).unwrap();
    let own = trainer::evaluate_run(&moved, "best", None, &device, &moved_model).unwrap();
    assert_eq!((own.mse, own.n), (metrics.mse, metrics.n));

    // Exporting into the model's own folder would replace the weights the run is trained
    // from: refused, the folder as it was. Into an earlier export: replaced whole.
    let before: Vec<Vec<u8>> = ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .map(|name| std::fs::read(model_now.join(name)).unwrap())
        .collect();
    let text = trainer::export_run(&moved, "best", Some(&model_now), &model_now, &device)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("the model the run was trained from"),
        "{text}"
    );
    for (name, bytes) in ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .zip(&before)
    {
        assert_eq!(
            &std::fs::read(model_now.join(name)).unwrap(),
            bytes,
            "{name}"
        );
    }
    assert!(!model_now.join(trainer::HEADS_FILE).exists());
    let first_export = std::fs::read(exported.join("model.safetensors")).unwrap();
    trainer::export_run(&moved, "best", Some(&model_now), &exported, &device).unwrap();
    let again = std::fs::read(exported.join("model.safetensors")).unwrap();
    // The same tensors (burn's header lists its metadata in no fixed order).
    let data = |file: &[u8]| {
        let header = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
        file[8 + header..].to_vec()
    };
    assert_eq!(
        (again.len(), data(&again)),
        (first_export.len(), data(&first_export))
    );
    let names: Vec<String> = std::fs::read_dir(&exported)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 5, "{names:?}");

    // Bad input lines are refused before the model loads (from a folder with nothing in it
    // here), naming the line; nothing is written.
    let empty = f.root.join("empty-model");
    std::fs::create_dir(&empty).unwrap();
    let no_model = trainer::InferenceOptions {
        model_folder: Some(empty),
        ..Default::default()
    };
    let first = inputs[0];
    let without_target = r#"{"text": "Shares rose"}"#;
    for (lines, expected) in [
        (vec![first, "not json"], "input.jsonl: line 2: not JSON"),
        (
            vec![first, "", r#"{"text": " ", "target": "X"}"#],
            "input.jsonl: line 3: empty text",
        ),
        (
            vec![r#"{"target": "X"}"#],
            "input.jsonl: line 1: missing field `text`",
        ),
        (
            vec![without_target],
            "input.jsonl: line 1: missing field `target`",
        ),
        (vec!["", " "], "input.jsonl: no rows"),
    ] {
        std::fs::write(&input, lines.join("\n")).unwrap();
        let unwritten = f.root.join("unwritten.jsonl");
        let text = trainer::predict_file(&moved, "best", &input, &unwritten, &device, &no_model)
            .unwrap_err()
            .to_string();
        assert!(text.contains(expected), "{expected:?}: {text}");
        assert!(!unwritten.exists());
    }
    // A good input gets as far as that folder.
    std::fs::write(&input, first).unwrap();
    let text = trainer::predict_file(&moved, "best", &input, &output, &device, &no_model)
        .unwrap_err()
        .to_string();
    assert!(text.contains("empty-model"), "{text}");
    // A byte-order mark before the first line is not part of its JSON.
    std::fs::write(&input, format!("\u{feff}{first}")).unwrap();
    assert_eq!(
        trainer::predict_file(&out, "best", &input, &output, &device, &Default::default()).unwrap(),
        1
    );
    // The same texts as CSV (a blank line passed over, a score column not read): the same
    // predictions as from JSON Lines.
    let csv = f.root.join("input.csv");
    let mut table = String::from("target,score,text\n");
    for (i, line) in inputs.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let quoted = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let text = v["text"].as_str().unwrap();
        table += &format!(
            "{},x,{}\n",
            quoted(v["target"].as_str().unwrap()),
            quoted(text)
        );
        if i == 1 {
            table += "\n";
        }
    }
    std::fs::write(&csv, table).unwrap();
    let from_csv = f.root.join("pred-csv.jsonl");
    assert_eq!(
        trainer::predict_file(&out, "best", &csv, &from_csv, &device, &Default::default()).unwrap(),
        5
    );
    assert_eq!(
        std::fs::read_to_string(&from_csv).unwrap(),
        std::fs::read_to_string(&moved_output).unwrap()
    );
}

/// `to` made a copy of the folder `from`, sub-folders included.
fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_folder(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn gradient_accumulation_and_early_stopping() {
    let Some(f) = fixture("gradient_accumulation_and_early_stopping") else {
        return;
    };
    // 6 batches, 3 per update: 2 updates; the schedule advances per update (warm-up 2).
    let cfg = config(
        &f,
        &[
            "weighting.strategy=constant",
            "train.grad_accum=3",
            "train.epochs=1",
        ],
    );
    let out = f.root.join("accum");
    run_to_end(&cfg, &out);
    let lrs = |out: &Path| -> Vec<f64> {
        let steps = RunDir::open(out).unwrap().read_steps().unwrap();
        steps.iter().map(|r| r.lr).collect()
    };
    assert_eq!(lrs(&out), [0.0, 0.0, 0.0, 5e-4, 5e-4, 5e-4]);
    let state = trainer::read_state(&out.join("checkpoints/last")).unwrap();
    assert_eq!((state.global_step, state.updates), (6, 2));

    // 6 batches, 4 per update: the epoch's shorter last group of 2 is an update too, and the
    // cosine decay (no warm-up) spans both: 1e-3, then half of it.
    let cfg = config(
        &f,
        &[
            "weighting.strategy=constant",
            "train.grad_accum=4",
            "train.epochs=1",
            "train.warmup_steps=0",
        ],
    );
    let out = f.root.join("accum-short-group");
    run_to_end(&cfg, &out);
    assert_eq!(lrs(&out), [1e-3, 1e-3, 1e-3, 1e-3, 5e-4, 5e-4]);
    let state = trainer::read_state(&out.join("checkpoints/last")).unwrap();
    assert_eq!(state.updates, 2);
    assert_eq!(trainer::updates_per_run(60, 10, 4, 1), state.updates);

    // lr 1e-12 leaves every f32 weight unchanged, so MSE never strictly improves after
    // epoch 1: patience 1 stops after epoch 2 of 4.
    let cfg = config(
        &f,
        &[
            "weighting.strategy=constant",
            "train.lr=1e-12",
            "train.epochs=4",
            "train.early_stopping_patience=1",
        ],
    );
    let out = f.root.join("early");
    let summary = run_to_end(&cfg, &out);
    assert_eq!(summary.epochs.len(), 2);
    assert_eq!(summary.epochs[0].mse, summary.epochs[1].mse);
    assert_eq!(summary.best_epoch, Some(1));
}

#[test]
fn shared_parameter_gradient_norms() {
    let Some(f) = fixture("shared_parameter_gradient_norms") else {
        return;
    };
    let mut first = Vec::new();
    for wrt in ["representation", "shared-parameters"] {
        let cfg = config(&f, &["train.epochs=1", &format!("dao.grad_norm_wrt={wrt}")]);
        let out = f.root.join(wrt);
        run_to_end(&cfg, &out);
        first.push(RunDir::open(&out).unwrap().read_steps().unwrap()[0].clone());
    }
    // Same seed, same batch, same dropout: the same losses at step 1 (to float rounding: the
    // representation run's encoder goes through the fused CPU path, the shared-parameters run
    // through burn's graph) …
    let close = |a: Option<f64>, b: Option<f64>| {
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!((a - b).abs() <= 1e-6 * a.abs(), "{a} vs {b}");
    };
    close(first[0].loss_reg, first[1].loss_reg);
    close(first[0].loss_cls, first[1].loss_cls);
    // … but λ from gradients over the encoder's parameters instead of over H.
    let (a, b) = (first[0].lambda_reg.unwrap(), first[1].lambda_reg.unwrap());
    assert!((a - b).abs() > 1e-4, "λ_r {a} vs {b}");
    assert!((b + first[1].lambda_cls.unwrap() - 1.0).abs() < 1e-6);
}
