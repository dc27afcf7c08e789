//! LoRA fine-tuning of encoder + heads on an autodiff device: AdamW moves only the adapters
//! (A, B) and the heads, the base weights stay bit-identical; the trainable set is exactly
//! what `trainable_parameters` counts; adapters and heads save to and load from one PEFT
//! folder.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use encoder::{Encoder, EncoderInput, ModelFolder};
use heads::{HeadsConfig, MultiTaskHeads};
use lora::LoraConfig;

#[derive(Module, Debug)]
struct Model {
    encoder: Encoder,
    heads: MultiTaskHeads,
}

/// Every float parameter's path, values and whether it tracks gradients.
#[derive(Default)]
struct Snapshot {
    path: Vec<String>,
    params: BTreeMap<String, (Vec<f32>, bool)>,
}

impl ModuleVisitor for Snapshot {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let tracked = value.is_require_grad();
        let data = value.into_data().try_into_vec::<f32>().unwrap();
        self.params.insert(self.path.join("."), (data, tracked));
    }
}

fn snapshot(model: &Model) -> BTreeMap<String, (Vec<f32>, bool)> {
    let mut s = Snapshot::default();
    model.visit(&mut s);
    s.params
}

fn batch(golden: &serde_json::Value, device: &Device) -> EncoderInput {
    let int = |key: &str| {
        let (shape, data) = testkit::tensor_i64(&golden[key]);
        Tensor::<2, Int>::from_data(TensorData::new(data, shape), device)
    };
    let input_ids = int("input_ids");
    EncoderInput {
        token_type_ids: input_ids.zeros_like(),
        input_ids,
        attention_mask: int("attention_mask"),
    }
}

/// `L_r + L_c` (the constant-weight loss with equal weights), heads evaluated once.
fn loss(model: &Model, input: EncoderInput, device: &Device) -> Tensor<1> {
    let h = model.encoder.first_token(input);
    let masks = model.heads.sample_dropout_masks(h.dims()[0], device);
    let out = model.heads.forward_with_masks(h, masks.as_ref());
    let y = Tensor::<2>::from_data(
        TensorData::new(vec![0.62f32, -0.3, 0.0, -0.71], [4, 1]),
        device,
    );
    let one_hot = Tensor::<2>::from_data(
        TensorData::new(
            [
                0f32, 0., 0., 0., 1., 0., 1., 0., 0., 0., 0., 0., 1., 0., 0., 1., 0., 0., 0., 0.,
            ]
            .to_vec(),
            [4, 5],
        ),
        device,
    );
    let l_r = (out.scores - y).powi_scalar(2).mean();
    let l_c = (log_softmax(out.logits, 1) * one_hot)
        .sum_dim(1)
        .mean()
        .neg();
    l_r + l_c
}

#[test]
fn adamw_moves_only_adapters_and_heads() {
    let (Some(base), Some(heads_file), Some(golden)) = (
        testkit::shared_file("lora_training", "fixtures/tiny-roberta"),
        testkit::shared_file("lora_training", "fixtures/heads.safetensors"),
        testkit::shared_file("lora_training", "fixtures/golden.json"),
    ) else {
        return;
    };
    let golden = testkit::read_json(&golden);
    let device = Device::flex().autodiff();
    let config = LoraConfig::with_rank(4);
    let encoder = ModelFolder::open(&base, None)
        .unwrap()
        .load_encoder(&device)
        .unwrap()
        .apply_lora(&config)
        .unwrap();
    let heads =
        MultiTaskHeads::from_file(&heads_file, &HeadsConfig::default(), 64, &device).unwrap();
    let mut model = Model { encoder, heads };
    let before = snapshot(&model);

    // What tracks gradients is exactly the adapters and the heads.
    let tracked: usize = before
        .values()
        .filter(|(_, t)| *t)
        .map(|(v, _)| v.len())
        .sum();
    let count = model.encoder.trainable_parameters();
    assert_eq!(
        count.trainable,
        2 * (4 * 4 * (64 + 64) + 2 * 4 * (64 + 128))
    );
    assert_eq!(tracked, count.trainable + model.heads.num_parameters());
    for (path, (_, t)) in &before {
        let should = path.contains(".adapter.") || path.starts_with("heads.");
        assert_eq!(*t, should, "{path}: tracks gradients = {t}");
    }

    let mut optim = AdamWConfig::new().with_weight_decay(0.01).init();
    for _ in 0..3 {
        let l = loss(&model, batch(&golden, &device), &device);
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
    let after = snapshot(&model);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (path, (old, _)) in &before {
        let new = &after[path].0;
        if path.contains(".adapter.") || path.starts_with("heads.") {
            assert_ne!(old, new, "{path} should have trained");
        } else {
            assert_eq!(old, new, "{path} must be bit-identical");
        }
    }

    // Adapters + heads in one PEFT folder, loaded back onto a fresh base and fresh heads.
    let dir = std::env::temp_dir().join(format!("lora-with-heads-{}", std::process::id()));
    let names = ["regression_head", "classification_head"];
    model
        .encoder
        .save_peft_adapter_with(&dir, &config, &model.heads, &names)
        .unwrap();
    let plain = Device::flex();
    let mut heads = HeadsConfig::default().init(64, &plain).unwrap();
    let encoder = ModelFolder::open(&base, None)
        .unwrap()
        .load_encoder(&plain)
        .unwrap()
        .load_peft_adapter_with(&dir, &mut heads, &names)
        .unwrap();
    let reloaded = snapshot(&Model { encoder, heads });
    for (path, (value, _)) in &after {
        assert_eq!(&reloaded[path].0, value, "{path} after save + load");
    }
    let _ = std::fs::remove_dir_all(dir);
}
