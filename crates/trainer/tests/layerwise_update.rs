//! The trainer's CPU step updates each encoder layer with AdamW as soon as the backward has
//! made its gradients (`TrainTape::backward_by_layer`). AdamW is per parameter, so this must
//! give exactly the parameters of one update after the whole backward (`TrainTape::backward`):
//! checked to the bit over two steps, full fine-tuning and LoRA.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use encoder::{Encoder, EncoderConfig, EncoderInput};
use trainer::{AdamW, AdamWSettings};

fn parameters(encoder: &Encoder) -> Vec<Vec<f32>> {
    struct Collect(Vec<Vec<f32>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let values = param.val().into_data().convert::<f32>().try_to_vec::<f32>();
            self.0.push(values.unwrap());
        }
    }
    let mut collect = Collect(Vec::new());
    encoder.visit(&mut collect);
    collect.0
}

/// Two steps of `loss = Σ H ⊙ w` on `encoder`, the encoder's update made after the whole
/// backward or layer by layer.
fn train(mut encoder: Encoder, input: &EncoderInput, by_layer: bool, device: &Device) -> Encoder {
    let mut optimizer = AdamW::new(AdamWSettings::default());
    let [batch, _] = input.input_ids.dims();
    let hidden = encoder.config().hidden_size;
    let w: Vec<f32> = (0..batch * hidden)
        .map(|i| (i % 7) as f32 * 0.1 - 0.3)
        .collect();
    let w = Tensor::<2>::from_data(TensorData::new(w, [batch, hidden]), device);
    for step in 0..2 {
        device.seed(100 + step);
        let (h, tape) = encoder
            .forward_train(input.clone())
            .expect("CPU training path");
        let grads = (h.clone() * w.clone()).sum().backward();
        let grad_h = h.grad(&grads);
        let mut rest = GradientsParams::new();
        if by_layer {
            let mut slot = Some(encoder);
            tape.backward_by_layer(grad_h, &mut rest, |layer| {
                let current = slot.take().unwrap();
                slot = Some(optimizer.step(1e-3, current, layer));
            });
            encoder = slot.unwrap();
        } else {
            tape.backward(grad_h, &mut rest);
        }
        encoder = optimizer.step(1e-3, encoder, rest);
    }
    encoder
}

#[test]
fn layer_by_layer_updates_equal_one_update_after_the_backward() {
    let config: EncoderConfig = serde_json::from_str(
        r#"{"model_type": "roberta", "vocab_size": 40, "hidden_size": 16,
            "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 24,
            "max_position_embeddings": 20, "type_vocab_size": 1, "pad_token_id": 1,
            "layer_norm_eps": 1e-5}"#,
    )
    .unwrap();
    let device = Device::flex().autodiff();
    let int = |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [2, 6]), &device);
    let ids = vec![0, 5, 9, 13, 2, 1, 0, 7, 8, 11, 6, 2];
    let input = EncoderInput {
        attention_mask: int(ids.iter().map(|&t| i64::from(t != 1)).collect()),
        input_ids: int(ids),
        token_type_ids: int(vec![0; 12]),
    };
    for lora in [false, true] {
        device.seed(3);
        let mut encoder = Encoder::new(&config, &device);
        if lora {
            encoder = encoder.apply_lora(&lora::LoraConfig::with_rank(2)).unwrap();
        }
        // Parameters initialise lazily: one forward fixes them before the copies part.
        let _ = encoder.forward(input.clone());
        let before = parameters(&encoder);
        let whole = parameters(&train(encoder.clone(), &input, false, &device));
        let layered = parameters(&train(encoder, &input, true, &device));
        assert_eq!(whole.len(), layered.len());
        assert!(whole != before, "the step moved nothing");
        for (i, (a, b)) in whole.iter().zip(&layered).enumerate() {
            assert_eq!(a, b, "lora {lora}: parameter {i} differs");
        }
    }
}
