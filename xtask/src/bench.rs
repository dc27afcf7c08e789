//! `cargo xtask bench`: training-step and inference timings of our model on this machine.

use std::time::Instant;

use anyhow::Result;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor};
use encoder::{Encoder, EncoderConfig, EncoderInput};

/// The encoder shapes we benchmark.
pub fn shape(model: &str) -> Result<EncoderConfig> {
    let (layers, hidden, heads, inter, vocab, family) = match model {
        "minilm" => (6, 384, 12, 1536, 30522, "bert"),
        "roberta-base" => (12, 768, 12, 3072, 50265, "roberta"),
        "roberta-large" => (24, 1024, 16, 4096, 50265, "roberta"),
        other => anyhow::bail!("unknown model `{other}` (minilm, roberta-base, roberta-large)"),
    };
    let json = serde_json::json!({
        "model_type": family, "vocab_size": vocab, "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads,
        "intermediate_size": inter, "max_position_embeddings": 514,
        "type_vocab_size": if family == "bert" { 2 } else { 1 },
        "pad_token_id": if family == "bert" { 0 } else { 1 },
        "layer_norm_eps": 1e-12,
    });
    Ok(serde_json::from_value(json)?)
}

fn random_input(config: &EncoderConfig, batch: usize, seq: usize, device: &Device) -> EncoderInput {
    let ids = Tensor::<2, Int>::random(
        [batch, seq],
        Distribution::Uniform(5.0, (config.vocab_size - 1) as f64),
        device,
    );
    EncoderInput {
        attention_mask: ids.ones_like(),
        token_type_ids: ids.zeros_like(),
        input_ids: ids,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median seconds of an encoder-only training step (forward, backward, AdamW).
pub fn encoder_step(model: &str, steps: usize, warmup: usize) -> Result<f64> {
    let config = shape(model)?;
    let device = Device::flex().autodiff();
    device.seed(42);
    let mut encoder = Encoder::new(&config, &device);
    let mut optim = AdamWConfig::new().with_weight_decay(0.01).init();
    let mut times = Vec::new();
    for i in 0..steps + warmup {
        let input = random_input(&config, 10, 128, &device);
        let t = Instant::now();
        let h = encoder.forward(input).first_token;
        let loss = h.powi_scalar(2).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &encoder);
        encoder = optim.step(1e-5, encoder, grads);
        device.sync()?;
        let dt = t.elapsed().as_secs_f64();
        eprintln!("step {i}: {dt:.3}s");
        if i >= warmup {
            times.push(dt);
        }
    }
    Ok(median(times))
}

/// Median sentences per second of inference at batch 32, length 128.
pub fn inference(model: &str, steps: usize, warmup: usize) -> Result<f64> {
    let config = shape(model)?;
    let device = Device::flex();
    let encoder = Encoder::new(&config, &device);
    let mut times = Vec::new();
    for i in 0..steps + warmup {
        let input = random_input(&config, 32, 128, &device);
        let t = Instant::now();
        let h = encoder.forward(input).first_token;
        let _ = h.into_data();
        let dt = t.elapsed().as_secs_f64();
        eprintln!("infer {i}: {dt:.3}s");
        if i >= warmup {
            times.push(dt);
        }
    }
    Ok(32.0 / median(times))
}
