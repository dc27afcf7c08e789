//! Data-parallel training (`DataParallel`) against one device: the gathered first-token states
//! and the summed gradients must equal the whole batch's on one device.
//!
//! burn's CPU backend has one device, so the "two devices" here are that device twice: each
//! share still runs on its own forked copy of the encoder, and the gradients still come back
//! per copy and are summed, which is the arithmetic at stake.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use encoder::{Encoder, EncoderConfig, EncoderInput};
use heads::HeadsConfig;
use trainer::{DataParallel, SentimentModel};

fn tiny_model(device: &Device) -> SentimentModel {
    let config: EncoderConfig = serde_json::from_str(
        r#"{"model_type": "roberta", "vocab_size": 50, "hidden_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
            "max_position_embeddings": 20, "type_vocab_size": 1, "pad_token_id": 1,
            "layer_norm_eps": 1e-5}"#,
    )
    .unwrap();
    device.seed(3);
    let heads = HeadsConfig {
        hidden: 8,
        ..HeadsConfig::default()
    };
    SentimentModel {
        encoder: Encoder::new(&config, device),
        heads: heads.init(16, device).unwrap(),
    }
}

/// Five rows, the last two padded.
fn batch(device: &Device) -> (EncoderInput, Tensor<1>, Tensor<1, Int>) {
    let ids = vec![
        0i64, 7, 12, 9, 33, 2, //
        0, 5, 5, 41, 8, 2, //
        0, 19, 27, 6, 11, 2, //
        0, 44, 3, 2, 1, 1, //
        0, 21, 2, 1, 1, 1,
    ];
    let mask: Vec<i64> = ids.iter().map(|&t| i64::from(t != 1)).collect();
    let int = |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [5, 6]), device);
    let input = EncoderInput {
        input_ids: int(ids),
        attention_mask: int(mask),
        token_type_ids: int(vec![0; 30]),
    };
    let scores = Tensor::<1>::from_data(
        TensorData::new(vec![0.8f32, -0.3, 0.05, -0.9, 0.4], [5]),
        device,
    );
    let classes = Tensor::<1, Int>::from_data(TensorData::new(vec![4i64, 1, 2, 0, 3], [5]), device);
    (input, scores, classes)
}

/// A multi-task loss of the heads on `h`: MSE + 0.3 · cross-entropy, no dropout.
fn loss(
    model: &SentimentModel,
    h: Tensor<2>,
    scores: &Tensor<1>,
    classes: &Tensor<1, Int>,
) -> Tensor<1> {
    let out = model.heads.forward_with_masks(h, None);
    let diff = out.scores.reshape([5]) - scores.clone();
    let mse = (diff.clone() * diff).mean();
    let ce = burn::nn::loss::CrossEntropyLossConfig::new()
        .init(&scores.device())
        .forward(out.logits, classes.clone());
    mse + ce.mul_scalar(0.3)
}

/// Every parameter's gradient in `grads`, by parameter id.
fn gradients(model: &SentimentModel, grads: &GradientsParams) -> BTreeMap<String, Vec<f32>> {
    struct Collect<'a>(&'a GradientsParams, BTreeMap<String, Vec<f32>>);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.0.get::<D>(param.id) {
                let values = grad
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .unwrap();
                self.1.insert(param.id.to_string(), values);
            }
        }
    }
    let mut collect = Collect(grads, BTreeMap::new());
    model.visit(&mut collect);
    collect.1
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn two_copies_give_the_whole_batch_states_and_gradients() {
    let device = Device::flex().autodiff();
    let model = tiny_model(&device);
    let (input, scores, classes) = batch(&device);
    // Fix the lazily initialised parameters before anything is forked.
    let _ = model.encoder.forward(input.clone());

    // One device, the whole batch.
    let h_one = model.encoder.first_token(input.clone());
    let grads = loss(&model, h_one.clone(), &scores, &classes).backward();
    let one = gradients(&model, &GradientsParams::from_grads(grads, &model));

    // Two copies (rows 0–2 and 3–4), gathered; their gradients summed.
    let parallel = DataParallel::new(vec![device.clone(), device.clone()]);
    assert!(parallel.is_parallel());
    let forward = parallel.forward(&model.encoder, &input, 11);
    let h_two = forward.first_token.clone();
    let h_diff = max_abs_diff(
        &h_one.into_data().try_to_vec::<f32>().unwrap(),
        &h_two.clone().into_data().try_to_vec::<f32>().unwrap(),
    );
    assert!(h_diff <= 1e-6, "gathered H differs by {h_diff}");
    let grads = loss(&model, h_two, &scores, &classes).backward();
    let two = gradients(&model, &parallel.gradients(grads, &model, forward));

    // Every parameter but the unused rows' embeddings has a gradient; the token-type and
    // position tables do too, so all 40-odd tensors are compared.
    assert!(one.len() >= 40, "only {} gradients", one.len());
    assert_eq!(
        one.keys().collect::<Vec<_>>(),
        two.keys().collect::<Vec<_>>()
    );
    for (id, grad) in &one {
        let d = max_abs_diff(grad, &two[id]);
        let scale = grad.iter().fold(0f32, |m, g| m.max(g.abs()));
        assert!(
            d <= 1e-6 + 1e-5 * scale,
            "parameter {id}: summed gradient differs by {d}"
        );
    }
}
