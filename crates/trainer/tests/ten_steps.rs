//! Ten whole training steps of ours against the PyTorch reference of the method, step by step
//! (`reference/ten_steps.json`, made by `reference/ten_steps.py` in float64 from the same
//! starting weights): constant weights, DAO, and DAO with LoRA, on tiny-roberta with every
//! dropout at 0 and one batch of 16 rows per epoch (one of them longer than `max_len`). Each
//! step's losses, λ, w, α, β and learning rate, and the validation MSE after the tenth, must
//! agree to float32 rounding: the optimizers' states, the schedule and DAO's own Adam are in
//! every step after the first.

use std::path::{Path, PathBuf};

use serde_json::Value;
use trainer::{ConfigSources, RunConfig, RunDir, StepRow};

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference")
}

/// tiny-roberta with its hidden and attention dropout at 0, in a fresh folder.
fn model_without_dropout(fixture: &Path, root: &Path) -> PathBuf {
    let model = root.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for name in ["tokenizer.json", "model.safetensors"] {
        std::fs::copy(fixture.join(name), model.join(name)).unwrap();
    }
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(fixture.join("config.json")).unwrap()).unwrap();
    config["hidden_dropout_prob"] = 0.0.into();
    config["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    model
}

fn run_config(model: &Path, extra: &[&str]) -> RunConfig {
    let reference = reference_dir();
    let mut overrides: Vec<String> = vec![
        format!("model.path={}", model.display()),
        format!(
            "data.train={}",
            reference.join("ten_steps_train.jsonl").display()
        ),
        format!(
            "data.valid={}",
            reference.join("ten_steps_valid.jsonl").display()
        ),
    ];
    overrides.extend(extra.iter().map(|s| s.to_string()));
    RunConfig::load_from(&ConfigSources {
        file: Some(reference.join("ten_steps.toml")),
        env: Default::default(),
        overrides,
    })
    .unwrap()
}

/// The columns of `steps.csv` the reference has (those of DAO only where it ran DAO).
type Field = (&'static str, fn(&StepRow) -> Option<f64>);
const FIELDS: [Field; 11] = [
    ("lr", |r| Some(r.lr)),
    ("loss_total", |r| Some(r.loss_total)),
    ("loss_reg", |r| r.loss_reg),
    ("loss_cls", |r| r.loss_cls),
    ("loss_imb", |r| r.loss_imb),
    ("lambda_reg", |r| r.lambda_reg),
    ("lambda_cls", |r| r.lambda_cls),
    ("w_reg", |r| r.w_reg),
    ("w_cls", |r| r.w_cls),
    ("alpha", |r| r.alpha),
    ("beta", |r| r.beta),
];

fn close(what: &str, got: f64, want: f64) {
    let tolerance = 1e-7 + 1e-5 * want.abs();
    assert!(
        (got - want).abs() <= tolerance,
        "{what}: ours {got}, PyTorch {want} (|Δ| {:e})",
        (got - want).abs()
    );
}

#[test]
fn ten_steps_match_the_pytorch_reference() {
    let Some(fixture) = testkit::shared_file(
        "ten_steps_match_the_pytorch_reference",
        "fixtures/tiny-roberta",
    ) else {
        return;
    };
    let reference: Value =
        serde_json::from_slice(&std::fs::read(reference_dir().join("ten_steps.json")).unwrap())
            .unwrap();
    let root = std::env::temp_dir().join(format!("trainer-ten-steps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let model = model_without_dropout(&fixture, &root);
    for (mode, extra) in [
        ("constant", vec!["weighting.strategy=constant"]),
        ("dao", vec!["weighting.strategy=dao"]),
        (
            "lora",
            vec!["weighting.strategy=dao", "train.finetune=lora"],
        ),
    ] {
        let out = root.join(mode);
        trainer::train(&run_config(&model, &extra), &out, &Default::default()).unwrap();
        let run = RunDir::open(&out).unwrap();
        let steps = run.read_steps().unwrap();
        let expected = reference[mode]["rows"].as_array().unwrap();
        assert_eq!(steps.len(), 10, "{mode}");
        assert_eq!(expected.len(), 10, "{mode}");
        for (ours, theirs) in steps.iter().zip(expected) {
            let step = ours.step;
            assert_eq!(theirs["step"], step, "{mode}");
            let mut compared = 0;
            for (name, value) in FIELDS {
                let Some(want) = theirs.get(name).and_then(Value::as_f64) else {
                    continue;
                };
                let got = value(ours).unwrap_or_else(|| panic!("{mode} step {step}: no {name}"));
                close(&format!("{mode} step {step} {name}"), got, want);
                compared += 1;
            }
            assert!(compared >= 6, "{mode} step {step}: {compared} values");
        }
        // The weights moved (the loss fell), so the later steps test the updates.
        let (first, last) = (steps[0].loss_total, steps[9].loss_total);
        assert!(last < 0.97 * first, "{mode}: loss {first} → {last}");
        let epochs = run.read_epochs().unwrap();
        let mse = epochs.last().unwrap().mse;
        close(
            &format!("{mode} validation MSE"),
            mse,
            reference[mode]["metrics"]["mse"].as_f64().unwrap(),
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}
