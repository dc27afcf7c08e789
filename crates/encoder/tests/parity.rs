//! The encoder against Hugging Face transformers on the tiny RoBERTa fixture: tokenizer, both
//! checkpoint formats, and our own imported format.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use encoder::{
    load_weights, pad_batch, save_burnpack, Encoded, Encoder, EncoderInput, ModelFolder,
    TextTokenizer,
};
use serde_json::Value;
use testkit::{max_abs_diff, read_json, shared_file, tensor_f32, tensor_i64};

struct Golden {
    json: Value,
    folder: PathBuf,
}

fn golden(test: &str) -> Option<Golden> {
    let path = shared_file(test, "fixtures/golden.json")?;
    Some(Golden {
        json: read_json(&path),
        folder: path.parent().unwrap().join("tiny-roberta"),
    })
}

fn int_tensor(value: &Value, device: &Device) -> Tensor<2, Int> {
    let (shape, data) = tensor_i64(value);
    Tensor::from_data(TensorData::new(data, [shape[0], shape[1]]), device)
}

fn golden_input(g: &Golden, device: &Device) -> EncoderInput {
    let ids = int_tensor(&g.json["input_ids"], device);
    EncoderInput {
        token_type_ids: ids.zeros_like(),
        attention_mask: int_tensor(&g.json["attention_mask"], device),
        input_ids: ids,
    }
}

fn hidden_delta(model: &Encoder, g: &Golden, device: &Device) -> (f32, f32) {
    let out = model.forward(golden_input(g, device));
    let (_, expected) = tensor_f32(&g.json["last_hidden_state"]);
    let (_, expected_h) = tensor_f32(&g.json["H"]);
    let got: Vec<f32> = out.last_hidden_state.into_data().try_into_vec().unwrap();
    let got_h: Vec<f32> = out.first_token.into_data().try_into_vec().unwrap();
    (
        max_abs_diff(&got, &expected),
        max_abs_diff(&got_h, &expected_h),
    )
}

fn load(g: &Golden, weights: &str, device: &Device) -> Encoder {
    ModelFolder::open(&g.folder, Some(Path::new(weights)))
        .unwrap()
        .load_encoder(device)
        .unwrap()
}

#[test]
fn safetensors_checkpoint_reproduces_transformers() {
    let Some(g) = golden("safetensors_checkpoint_reproduces_transformers") else {
        return;
    };
    let device = Device::flex();
    let (dh, dh0) = hidden_delta(&load(&g, "model.safetensors", &device), &g, &device);
    eprintln!("safetensors: max |Δ| last_hidden_state {dh:e}, H {dh0:e}");
    assert!(dh <= 1e-5 && dh0 <= 1e-5, "Δ {dh} / {dh0}");
}

#[test]
fn pytorch_checkpoint_reproduces_transformers() {
    let Some(g) = golden("pytorch_checkpoint_reproduces_transformers") else {
        return;
    };
    let device = Device::flex();
    let (dh, dh0) = hidden_delta(&load(&g, "pytorch_model.bin", &device), &g, &device);
    eprintln!("pytorch .bin: max |Δ| last_hidden_state {dh:e}, H {dh0:e}");
    assert!(dh <= 1e-5 && dh0 <= 1e-5, "Δ {dh} / {dh0}");
}

#[test]
fn imported_burnpack_round_trips_exactly() {
    let Some(g) = golden("imported_burnpack_round_trips_exactly") else {
        return;
    };
    let device = Device::flex();
    let model = load(&g, "model.safetensors", &device);
    let dir = tempdir("burnpack");
    let path = dir.join("model.bpk");
    save_burnpack(&model, &path).unwrap();
    let mut reloaded = Encoder::new(model.config(), &device);
    load_weights(&mut reloaded, &path).unwrap();
    let input = golden_input(&g, &device);
    let a: Vec<f32> = model
        .forward(input.clone())
        .last_hidden_state
        .into_data()
        .try_into_vec()
        .unwrap();
    let b: Vec<f32> = reloaded
        .forward(input)
        .last_hidden_state
        .into_data()
        .try_into_vec()
        .unwrap();
    assert_eq!(a, b, "the imported model must compute bit-identical states");
}

/// Weights stored in half precision (as a PyTorch `.bin` of `model.half()` holds them, or a
/// burnpack saved from it) load as f32 tensors of the same values: training needs f32.
#[test]
fn half_precision_weights_load_as_f32() {
    use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
    use burn::tensor::{DType, FloatDType};
    struct ToF16;
    impl ModuleMapper for ToF16 {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            p.map(|t| t.cast(FloatDType::F16))
        }
    }
    struct Values(Vec<(DType, Vec<f32>)>);
    impl ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let t = p.val();
            let dtype = t.dtype();
            let values = t.cast(FloatDType::F32).into_data().try_into_vec().unwrap();
            self.0.push((dtype, values));
        }
    }
    let Some(g) = golden("half_precision_weights_load_as_f32") else {
        return;
    };
    let device = Device::flex();
    let half = load(&g, "model.safetensors", &device).map(&mut ToF16);
    let mut stored = Values(Vec::new());
    half.visit(&mut stored);
    assert!(stored.0.iter().all(|(dtype, _)| *dtype == DType::F16));

    let dir = tempdir("half");
    let path = dir.join("model.bpk");
    save_burnpack(&half, &path).unwrap();
    let mut reloaded = Encoder::new(half.config(), &device);
    load_weights(&mut reloaded, &path).unwrap();
    let mut loaded = Values(Vec::new());
    reloaded.visit(&mut loaded);
    assert_eq!(loaded.0.len(), stored.0.len());
    for ((dtype, values), (_, want)) in loaded.0.iter().zip(&stored.0) {
        assert_eq!(*dtype, DType::F32);
        assert_eq!(values, want, "the f16 values, exactly");
    }
}

#[test]
fn tokenizer_matches_transformers_and_padding_is_ours() {
    let Some(g) = golden("tokenizer_matches_transformers_and_padding_is_ours") else {
        return;
    };
    let folder = ModelFolder::open(&g.folder, None).unwrap();
    let tokenizer = TextTokenizer::from_file(&folder.tokenizer, &folder.config, 128).unwrap();
    let (shape, ids) = tensor_i64(&g.json["input_ids"]);
    let seq = shape[1];
    let sentences = g.json["sentences"].as_array().unwrap();
    let mut rows = Vec::new();
    for (i, sentence) in sentences.iter().enumerate() {
        let text = sentence.as_str().unwrap();
        let expected_tokens: Vec<&str> = g.json["tokens"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(
            tokenizer.tokens(text).unwrap(),
            expected_tokens,
            "sentence {i}"
        );
        let encoded = tokenizer.encode(text, None).unwrap();
        let n = encoded.ids.len();
        let expected: Vec<u32> = ids[i * seq..i * seq + n]
            .iter()
            .map(|&v| v as u32)
            .collect();
        assert_eq!(encoded.ids, expected, "ids of sentence {i}");
        rows.push(encoded);
    }
    // The batch pads to its own longest row (39 here) with id 1 and mask 0.
    let device = Device::flex();
    let refs: Vec<&Encoded> = rows.iter().collect();
    let batch = pad_batch(&refs, tokenizer.pad_id(), &device);
    let got_ids: Vec<i64> = batch
        .input_ids
        .into_data()
        .convert::<i64>()
        .try_into_vec()
        .unwrap();
    assert_eq!(got_ids, ids);
    let (_, mask) = tensor_i64(&g.json["attention_mask"]);
    let got_mask: Vec<i64> = batch
        .attention_mask
        .into_data()
        .convert::<i64>()
        .try_into_vec()
        .unwrap();
    assert_eq!(got_mask, mask);
}

#[test]
fn truncation_keeps_the_closing_special_token() {
    let Some(g) = golden("truncation_keeps_the_closing_special_token") else {
        return;
    };
    let folder = ModelFolder::open(&g.folder, None).unwrap();
    let tokenizer = TextTokenizer::from_file(&folder.tokenizer, &folder.config, 8).unwrap();
    let text = g.json["sentences"][0].as_str().unwrap();
    let encoded = tokenizer.encode(text, None).unwrap();
    assert_eq!(encoded.ids.len(), 8);
    assert_eq!(encoded.ids[0], 0, "<s> first");
    assert_eq!(encoded.ids[7], 2, "</s> last");
    // Too long for the position table (128 = 130 - offset 2).
    assert!(TextTokenizer::from_file(&folder.tokenizer, &folder.config, 129).is_err());
}

#[test]
fn padding_does_not_change_real_tokens() {
    let Some(g) = golden("padding_does_not_change_real_tokens") else {
        return;
    };
    // Row 2 ("Revenue was flat.", 12 tokens) alone, unpadded, must equal its padded row.
    let device = Device::flex();
    let model = load(&g, "model.safetensors", &device);
    let (shape, ids) = tensor_i64(&g.json["input_ids"]);
    let seq = shape[1];
    let row: Vec<i64> = ids[2 * seq..2 * seq + 12].to_vec();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(row, [1, 12]), &device);
    let out = model.forward(EncoderInput {
        attention_mask: ids.ones_like(),
        token_type_ids: ids.zeros_like(),
        input_ids: ids,
    });
    let got: Vec<f32> = out.last_hidden_state.into_data().try_into_vec().unwrap();
    let (_, expected) = tensor_f32(&g.json["last_hidden_state"]);
    let expected = &expected[2 * seq * 64..2 * seq * 64 + 12 * 64];
    let delta = max_abs_diff(&got, expected);
    assert!(delta <= 1e-5, "unpadded row differs by {delta}");
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "encoder-test-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
