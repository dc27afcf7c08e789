//! LoRA on the encoder against PEFT: tiny-roberta + the `tiny-roberta-lora` adapter give
//! `lora_golden.json`'s `tiny_roberta` states; merged equals unmerged; a fresh adapter
//! changes nothing; saving and reloading the adapter is lossless.

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use encoder::{Encoder, EncoderError, EncoderInput, ModelFolder};
use lora::LoraConfig;
use serde_json::Value;

struct Fixtures {
    base: PathBuf,
    adapter: PathBuf,
    golden: Value,
    lora: Value,
}

fn fixtures(test: &str) -> Option<Fixtures> {
    Some(Fixtures {
        base: testkit::shared_file(test, "fixtures/tiny-roberta")?,
        adapter: testkit::shared_file(test, "fixtures/tiny-roberta-lora")?,
        golden: testkit::read_json(&testkit::shared_file(test, "fixtures/golden.json")?),
        lora: testkit::read_json(&testkit::shared_file(test, "fixtures/lora_golden.json")?),
    })
}

fn input(golden: &Value, device: &Device) -> EncoderInput {
    let int = |key: &str| {
        let (shape, data) = testkit::tensor_i64(&golden[key]);
        Tensor::<2, Int>::from_data(TensorData::new(data, shape), device)
    };
    let input_ids = int("input_ids");
    let token_type_ids = input_ids.zeros_like();
    EncoderInput {
        input_ids,
        attention_mask: int("attention_mask"),
        token_type_ids,
    }
}

fn states(encoder: &Encoder, golden: &Value, device: &Device) -> (Vec<f32>, Vec<f32>) {
    let out = encoder.forward(input(golden, device));
    let v = |t: TensorData| t.try_into_vec::<f32>().unwrap();
    (
        v(out.last_hidden_state.into_data()),
        v(out.first_token.into_data()),
    )
}

fn base_encoder(f: &Fixtures, device: &Device) -> Encoder {
    ModelFolder::open(&f.base, None)
        .unwrap()
        .load_encoder(device)
        .unwrap()
}

#[test]
fn peft_adapter_reproduces_transformers() {
    let Some(f) = fixtures("peft_adapter") else {
        return;
    };
    let device = Device::flex();
    let adapted = base_encoder(&f, &device)
        .load_peft_adapter(&f.adapter)
        .unwrap();

    let mut wrapped = adapted.lora_modules();
    let mut expected: Vec<String> = f.lora["tiny_roberta"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    wrapped.sort();
    expected.sort();
    assert_eq!(wrapped, expected);

    let (_, want_states) = testkit::tensor_f32(&f.lora["tiny_roberta"]["last_hidden_state"]);
    let (_, want_h) = testkit::tensor_f32(&f.lora["tiny_roberta"]["H"]);
    let (got_states, got_h) = states(&adapted, &f.golden, &device);
    println!(
        "LoRA tiny-roberta: last_hidden_state max |Δ| = {:e}, H max |Δ| = {:e}",
        testkit::max_abs_diff(&got_states, &want_states),
        testkit::max_abs_diff(&got_h, &want_h)
    );
    testkit::assert_close("last_hidden_state", &got_states, &want_states, 1e-5, 0.0);
    testkit::assert_close("H", &got_h, &want_h, 1e-5, 0.0);
    // The adapter matters: the base encoder's H differs.
    let (_, base_h) = states(&base_encoder(&f, &device), &f.golden, &device);
    assert!(testkit::max_abs_diff(&base_h, &want_h) > 1e-3);

    let merged = adapted.merge_lora().unwrap();
    assert!(merged.lora_modules().is_empty());
    let (merged_states, _) = states(&merged, &f.golden, &device);
    println!(
        "merged vs unmerged: max |Δ| = {:e}",
        testkit::max_abs_diff(&merged_states, &got_states)
    );
    testkit::assert_close("merged states", &merged_states, &got_states, 1e-5, 0.0);
    testkit::assert_close("merged vs PEFT", &merged_states, &want_states, 1e-5, 0.0);
}

#[test]
fn fresh_adapter_changes_nothing_and_counts_parameters() {
    let Some(f) = fixtures("fresh_adapter") else {
        return;
    };
    let device = Device::flex();
    let base = base_encoder(&f, &device);
    let total_base = burn::module::Module::num_params(&base);
    let (base_states, _) = states(&base, &f.golden, &device);
    let adapted = base.apply_lora(&LoraConfig::with_rank(8)).unwrap();
    let (states_after, _) = states(&adapted, &f.golden, &device);
    assert_eq!(states_after, base_states, "B = 0: bit-identical output");

    // Per layer, r·(in + out): 4 × 8·(64 + 64) + 8·(64 + 128) + 8·(128 + 64) = 7168; 2 layers.
    let count = adapted.trainable_parameters();
    println!("tiny-roberta LoRA r = 8: {count}");
    assert_eq!(count.trainable, 14_336);
    assert_eq!(count.total, total_base + 14_336);
    assert_eq!(adapted.lora_modules().len(), 12);

    // Targets by PEFT names: `dense` is the three dense projections only.
    let dense = base_encoder(&f, &device)
        .apply_lora(&LoraConfig {
            targets: vec!["dense".into()],
            ..LoraConfig::with_rank(2)
        })
        .unwrap();
    assert_eq!(dense.lora_modules().len(), 6);
    assert!(dense.lora_modules().iter().all(|m| m.ends_with(".dense")));
    let err = base_encoder(&f, &device)
        .apply_lora(&LoraConfig {
            targets: vec!["qkv".into()],
            ..LoraConfig::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("qkv"), "{err}");
    let err = base_encoder(&f, &device)
        .apply_lora(&LoraConfig {
            rank: 0,
            ..LoraConfig::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("rank"), "{err}");
}

#[test]
fn saved_adapter_reloads_to_the_same_function() {
    let Some(f) = fixtures("adapter_roundtrip") else {
        return;
    };
    let device = Device::flex();
    let adapted = base_encoder(&f, &device)
        .load_peft_adapter(&f.adapter)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("lora-roundtrip-{}", std::process::id()));
    let config = LoraConfig {
        rank: 4,
        alpha: 4.0,
        targets: vec!["query".into(), "key".into(), "value".into(), "dense".into()],
        ..LoraConfig::default()
    };
    adapted.save_peft_adapter(&dir, &config).unwrap();

    // Same keys and shapes as PEFT's own file.
    let keys = |p: PathBuf| {
        let bytes = std::fs::read(p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut k: Vec<(String, Vec<usize>)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.shape().to_vec()))
            .collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(dir.join(encoder::ADAPTER_WEIGHTS)),
        keys(f.adapter.join(encoder::ADAPTER_WEIGHTS))
    );
    let reloaded = base_encoder(&f, &device).load_peft_adapter(&dir).unwrap();
    let (a, _) = states(&adapted, &f.golden, &device);
    let (b, _) = states(&reloaded, &f.golden, &device);
    assert_eq!(a, b);

    // A target this encoder does not have is named; a file with adapters for projections the
    // config does not target is refused.
    let text = std::fs::read_to_string(dir.join(encoder::ADAPTER_CONFIG)).unwrap();
    let mut json: Value = serde_json::from_str(&text).unwrap();
    json["target_modules"] =
        serde_json::json!(["query", "key", "value", "dense", "word_embeddings"]);
    std::fs::write(dir.join(encoder::ADAPTER_CONFIG), json.to_string()).unwrap();
    let err = base_encoder(&f, &device)
        .load_peft_adapter(&dir)
        .unwrap_err();
    assert!(err.to_string().contains("word_embeddings"), "{err}");
    json["target_modules"] = serde_json::json!(["query"]);
    std::fs::write(dir.join(encoder::ADAPTER_CONFIG), json.to_string()).unwrap();
    let err = base_encoder(&f, &device)
        .load_peft_adapter(&dir)
        .unwrap_err();
    assert!(
        matches!(&err, EncoderError::Checkpoint { message, .. } if message.contains("lora_")),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
