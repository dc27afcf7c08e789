//! Every experiment preset in `configs/` loads through the real loader and validates, with the
//! hyperparameters its name promises.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use trainer::{
    ConfigError, ConfigSources, Finetune, GradNormWrt, InputMode, Metric, RunConfig,
    WeightingStrategy,
};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

/// Loads a preset without this process's environment (a stray `DAO_*` must not change it).
fn load(name: &str) -> RunConfig {
    let path = configs_dir().join(name);
    RunConfig::load_from(&ConfigSources::file_only(&path)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_preset_loads_and_validates() {
    let mut names: Vec<String> = std::fs::read_dir(configs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    // quickstart + 1 regression-only + 6 constant + 1 DAO + 8 LoRA ranks + 3 on
    // Twitter-RoBERTa-large + 4 ablations + 4 finsent-minilm.
    assert!(names.len() >= 28, "{names:?}");
    for name in &names {
        let config = load(name);
        config.validate().unwrap();
        // The resolved config written to a run folder loads back identically.
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("config.toml");
        std::fs::write(&copy, config.to_toml().unwrap()).unwrap();
        let again = RunConfig::load_from(&ConfigSources::file_only(&copy)).unwrap();
        assert_eq!(again, config, "{name}");
    }
}

fn assert_paper_hyperparameters(name: &str, c: &RunConfig) {
    assert_eq!(c.train.batch_size, 10, "{name}");
    assert_eq!(c.train.lr, 1e-5, "{name}");
    assert_eq!(c.train.eps, 1e-8, "{name}");
    assert_eq!(c.train.weight_decay, 0.01, "{name}");
    assert_eq!(c.train.epochs, 100, "{name}");
    assert_eq!(c.train.seed, 42, "{name}");
    assert_eq!(c.train.warmup_steps, 100, "{name}");
    assert_eq!(c.train.grad_accum, 1, "{name}");
    assert_eq!(c.train.best_metric, Metric::Mse, "{name}");
    assert_eq!(c.model.max_len, 512, "{name}");
    assert_eq!((c.heads.hidden, c.heads.dropout), (128, 0.1), "{name}");
    assert_eq!(
        c.data.input,
        InputMode::Text,
        "{name}: a text and its score"
    );
    assert_eq!(
        c.model.path,
        PathBuf::from("models/roberta-large"),
        "{name}"
    );
    assert_eq!(
        c.data.train,
        PathBuf::from("../shared/data/finsent/train.jsonl"),
        "{name}"
    );
    assert_eq!(
        c.data.valid,
        Some(PathBuf::from("../shared/data/finsent/valid.jsonl")),
        "{name}"
    );
}

/// DAO's settings in the paper (DAO-SPEC steps 1–4), where a preset uses DAO.
fn assert_paper_dao(name: &str, c: &RunConfig) {
    assert_eq!((c.dao.lr, c.dao.hidden), (1e-3, 16), "{name}");
    assert_eq!((c.dao.alpha_init, c.dao.beta_init), (0.1, 0.5), "{name}");
    assert_eq!(c.dao.grad_norm_wrt, GradNormWrt::Representation, "{name}");
    assert!(c.dao.learn_alpha_beta, "{name}");
}

#[test]
fn paper_presets_match_the_paper() {
    let c = load("paper-regression-only.toml");
    assert_paper_hyperparameters("regression-only", &c);
    assert_eq!(c.weighting.strategy, WeightingStrategy::RegressionOnly);

    for (file, w) in [
        ("0.05", 0.05),
        ("0.10", 0.10),
        ("0.15", 0.15),
        ("0.20", 0.20),
        ("0.25", 0.25),
        ("0.30", 0.30),
    ] {
        let name = format!("paper-constant-{file}.toml");
        let c = load(&name);
        assert_paper_hyperparameters(&name, &c);
        assert_eq!(c.weighting.strategy, WeightingStrategy::Constant);
        assert_eq!(c.weighting.constant_w_cls, w, "{name}");
    }

    let c = load("paper-dao.toml");
    assert_paper_hyperparameters("dao", &c);
    assert_eq!(c.weighting.strategy, WeightingStrategy::Dao);
    assert_eq!(c.train.finetune, Finetune::Full);
    assert_paper_dao("dao", &c);

    for rank in [8, 16, 32, 64, 128, 256, 384, 512] {
        let name = format!("paper-dao-lora-r{rank}.toml");
        let c = load(&name);
        assert_paper_hyperparameters(&name, &c);
        assert_eq!(c.weighting.strategy, WeightingStrategy::Dao, "{name}");
        assert_eq!(c.train.finetune, Finetune::Lora, "{name}");
        assert_eq!(c.lora.rank, rank, "{name}");
        assert_eq!(c.lora.alpha(), rank as f64, "{name}: the paper's alpha = r");
        assert_eq!(c.lora.dropout, 0.05, "{name}");
        assert_eq!(
            c.lora.targets,
            ["query", "key", "value", "dense"],
            "{name}: every attention and feed-forward projection"
        );
        assert_paper_dao(&name, &c);
    }
}

/// The paper's second encoder: the same experiments, only the model folder differs.
#[test]
fn twitter_roberta_presets_are_the_roberta_ones_on_another_model() {
    for experiment in ["regression-only", "constant-0.10", "dao"] {
        let twitter = load(&format!("paper-twitter-{experiment}.toml"));
        assert_eq!(
            twitter.model.path,
            PathBuf::from("models/twitter-roberta-large"),
            "{experiment}"
        );
        let mut on_roberta = twitter.clone();
        on_roberta.model.path = PathBuf::from("models/roberta-large");
        assert_eq!(
            on_roberta,
            load(&format!("paper-{experiment}.toml")),
            "{experiment}"
        );
    }
}

/// Each ablation is `paper-dao.toml` with one thing changed.
#[test]
fn ablation_presets_change_one_thing_of_paper_dao() {
    let dao = load("paper-dao.toml");
    let changed = |file: &str, change: &dyn Fn(&mut RunConfig)| {
        let mut expected = dao.clone();
        change(&mut expected);
        assert_ne!(expected, dao, "{file}");
        assert_eq!(load(file), expected, "{file}");
    };
    changed("ablation-dao-grad-balance-only.toml", &|c| {
        c.weighting.strategy = WeightingStrategy::DaoGradBalanceOnly;
    });
    changed("ablation-dao-imbalance-only.toml", &|c| {
        c.weighting.strategy = WeightingStrategy::DaoImbalanceOnly;
        // The constant weight it keeps is the paper's headline baseline's, written out.
        c.weighting.constant_w_cls = 0.10;
    });
    changed("ablation-dao-shared-parameters.toml", &|c| {
        c.dao.grad_norm_wrt = GradNormWrt::SharedParameters;
    });
    changed("ablation-dao-fixed-alpha-beta.toml", &|c| {
        c.dao.learn_alpha_beta = false;
    });
    let text =
        std::fs::read_to_string(configs_dir().join("ablation-dao-imbalance-only.toml")).unwrap();
    assert!(
        text.contains("constant_w_cls = 0.10"),
        "pinned, not a default"
    );
}

#[test]
fn finsent_minilm_presets_match_results_md() {
    let expected = [
        (
            "finsent-minilm-regression-only.toml",
            WeightingStrategy::RegressionOnly,
            Finetune::Full,
        ),
        (
            "finsent-minilm-constant-0.1.toml",
            WeightingStrategy::Constant,
            Finetune::Full,
        ),
        (
            "finsent-minilm-dao.toml",
            WeightingStrategy::Dao,
            Finetune::Full,
        ),
        (
            "finsent-minilm-dao-lora-r8.toml",
            WeightingStrategy::Dao,
            Finetune::Lora,
        ),
    ];
    for (name, strategy, finetune) in expected {
        let c = load(name);
        assert_eq!(
            c.model.path,
            PathBuf::from("models/all-MiniLM-L6-v2"),
            "{name}"
        );
        assert_eq!(c.data.input, InputMode::TextTarget, "{name}");
        assert_eq!(c.train.epochs, 5, "{name}");
        assert_eq!(c.train.seed, 42, "{name}");
        assert_eq!(c.train.lr, 5e-5, "{name}");
        assert_eq!(c.train.batch_size, 10, "{name}");
        assert_eq!(c.model.max_len, 128, "{name}");
        assert_eq!(c.weighting.strategy, strategy, "{name}");
        assert_eq!(c.train.finetune, finetune, "{name}");
    }
    assert_eq!(
        load("finsent-minilm-constant-0.1.toml")
            .weighting
            .constant_w_cls,
        0.1
    );
    assert_eq!(load("finsent-minilm-dao-lora-r8.toml").lora.rank, 8);
}

#[test]
fn quickstart_is_small() {
    let c = load("quickstart.toml");
    assert_eq!(c.model.path, PathBuf::from("models/all-MiniLM-L6-v2"));
    assert_eq!(c.data.train, PathBuf::from("data/demo.jsonl"));
    assert_eq!(c.weighting.strategy, WeightingStrategy::Dao);
    assert_eq!(c.train.finetune, Finetune::Full);
    assert_eq!(c.model.max_len, 64);
    assert_eq!(c.train.batch_size, 16);
    assert_eq!(c.train.lr, 5e-5);
    assert_eq!(c.train.epochs, 2);
    // ~1000 rows, 10% held out → 57 updates per epoch: the warm-up must be a fraction of it.
    let updates =
        trainer::updates_per_run(900, c.train.batch_size, c.train.grad_accum, c.train.epochs);
    assert!(
        c.train.warmup_steps * 4 <= updates,
        "warm-up {} of {updates}",
        c.train.warmup_steps
    );
}

#[test]
fn errors_in_a_preset_name_the_key() {
    let path = configs_dir().join("quickstart.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, text.replace("lr = 5e-5", "lrr = 5e-5")).unwrap();
    let err = RunConfig::load_from(&ConfigSources::file_only(&typo)).unwrap_err();
    assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("`train.lrr`") && msg.contains("typo.toml"),
        "{msg}"
    );

    let wrong = dir.path().join("wrong.toml");
    std::fs::write(&wrong, text.replace("epochs = 2", "epochs = \"ten\"")).unwrap();
    let msg = RunConfig::load_from(&ConfigSources::file_only(&wrong))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("`train.epochs`") && msg.contains("wrong.toml"),
        "{msg}"
    );
}

#[test]
fn environment_then_set_override_a_preset() {
    let file = configs_dir().join("quickstart.toml");
    let env: BTreeMap<String, String> = [
        ("DAO_TRAIN__LR", "2e-5"),
        ("DAO_TRAIN__EPOCHS", "3"),
        ("DAO_MODEL__PATH", "models/from-env"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let sources = ConfigSources {
        file: Some(file.clone()),
        env: env.clone(),
        overrides: vec![],
    };
    let c = RunConfig::load_from(&sources).unwrap();
    assert_eq!((c.train.lr, c.train.epochs), (2e-5, 3));
    assert_eq!(c.model.path, PathBuf::from("models/from-env"));
    assert_eq!(
        c.train.batch_size, 16,
        "untouched keys keep the file's value"
    );

    let sources = ConfigSources {
        file: Some(file),
        env,
        overrides: vec!["train.epochs=1".into(), "model.path=models/from-set".into()],
    };
    let c = RunConfig::load_from(&sources).unwrap();
    assert_eq!((c.train.lr, c.train.epochs), (2e-5, 1));
    assert_eq!(c.model.path, PathBuf::from("models/from-set"));
}
