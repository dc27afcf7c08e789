//! DAO on a small two-task burn model that is not this project's: a shared MLP trunk on random
//! features, a regression head and a 5-class classification head (labels from the score with the
//! spec's thresholds), trained with AdamW while the weighting strategy runs its own Adam.
//!
//! `cargo run -p dao --example two_task [-- STRATEGY [STEPS]]`, STRATEGY one of
//! `StrategyConfig::NAMES` (default `dao`), STEPS default 40.

use std::time::{Duration, Instant};

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use dao::{LossWeighting, StrategyConfig, TaskOutputs};

const FEATURES: usize = 8;
const WIDTH: usize = 32;
const BATCH: usize = 32;
const DROPOUT: f64 = 0.1;

/// Trunk `x → H` and the two heads.
#[derive(Module, Debug)]
struct TwoTaskModel {
    trunk_in: Linear,
    trunk_out: Linear,
    regression_hidden: Linear,
    regression_out: Linear,
    classification_hidden: Linear,
    classification_out: Linear,
}

impl TwoTaskModel {
    fn new(device: &Device) -> Self {
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        Self {
            trunk_in: linear(FEATURES, WIDTH),
            trunk_out: linear(WIDTH, WIDTH),
            regression_hidden: linear(WIDTH, 16),
            regression_out: linear(16, 1),
            classification_hidden: linear(WIDTH, 16),
            classification_out: linear(16, 5),
        }
    }

    /// H `[batch, WIDTH]`.
    fn representation(&self, x: Tensor<2>) -> Tensor<2> {
        relu(self.trunk_out.forward(relu(self.trunk_in.forward(x))))
    }

    /// S `[batch, 1]`.
    fn regression(&self, h: Tensor<2>) -> Tensor<2> {
        self.regression_out
            .forward(sigmoid(self.regression_hidden.forward(h)))
    }

    /// C `[batch, 5]`, with a dropout mask sampled by the caller (once per step).
    fn classification(&self, h: Tensor<2>, mask: Tensor<2>) -> Tensor<2> {
        self.classification_out
            .forward(self.classification_hidden.forward(h).tanh() * mask)
    }
}

/// The spec's 5-class map of a score in [-1, 1].
fn class_of(y: f32) -> i64 {
    match y {
        y if y > 0.5 => 4,
        y if y > 0.049 => 3,
        y if y >= -0.049 => 2,
        y if y >= -0.5 => 1,
        _ => 0,
    }
}

/// A random batch: features, scores y = tanh(x · u) and their classes.
fn batch(u: &[f32], device: &Device) -> (Tensor<2>, Tensor<2>, Tensor<1, Int>) {
    let x = Tensor::<2>::random([BATCH, FEATURES], Distribution::Normal(0.0, 1.0), device);
    let xs = x.to_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    let ys: Vec<f32> = xs
        .chunks(FEATURES)
        .map(|row| row.iter().zip(u).map(|(a, b)| a * b).sum::<f32>().tanh())
        .collect();
    let labels: Vec<i64> = ys.iter().map(|&y| class_of(y)).collect();
    let y = Tensor::from_data(TensorData::new(ys, [BATCH, 1]), device);
    let labels = Tensor::from_data(TensorData::new(labels, [BATCH]), device);
    (x, y, labels)
}

fn main() -> Result<(), dao::DaoError> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "dao".to_string());
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(40);

    let device = Device::flex().autodiff();
    device.seed(42);
    let mut model = TwoTaskModel::new(&device);
    let mut optimizer = AdamWConfig::new().with_weight_decay(0.01).init();
    let mut weighting: Box<dyn LossWeighting> = StrategyConfig::from_name(&name)?.build(&device)?;
    let u: Vec<f32> = (0..FEATURES)
        .map(|i| ((i as f32) * 1.7).sin() * 0.6)
        .collect();

    println!("strategy {name}, {steps} steps of batch {BATCH}");
    let mut weighting_time = Duration::ZERO;
    for step in 0..steps {
        let (x, y, labels) = batch(&u, &device);
        let h = model.representation(x);
        // The dropout mask is drawn once, outside the closure: the heads are then a
        // deterministic function of H within the step, as the per-task gradients require.
        let mask =
            Tensor::<2>::random([BATCH, 16], Distribution::Bernoulli(1.0 - DROPOUT), &device)
                .div_scalar(1.0 - DROPOUT);
        let mut heads = |h: Tensor<2>| TaskOutputs {
            regression_loss: (model.regression(h.clone()) - y.clone()).square().mean(),
            logits: model.classification(h, mask.clone()),
            labels: labels.clone(),
        };
        let started = Instant::now();
        let out = weighting.weigh(h, &mut heads)?;
        weighting_time += started.elapsed();

        let grads = out.loss.backward();
        let started = Instant::now();
        weighting.update(&grads);
        weighting_time += started.elapsed();
        let grads = GradientsParams::from_grads(grads, &model);
        model = optimizer.step(1e-3, model, grads);

        let d = &out.diagnostics;
        let show = |v: Option<f32>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        println!(
            "step {step:3} loss {:.4} L_r {:.4} L_c {:.4} L_imb {} λ_r {} λ_c {} w_r {} w_c {} α {} β {}",
            d.loss,
            d.l_r,
            d.l_c,
            show(d.l_imb),
            show(d.lambda_r),
            show(d.lambda_c),
            show(d.w_r),
            show(d.w_c),
            show(d.alpha),
            show(d.beta),
        );
        if (step + 1) % 20 == 0 {
            weighting.end_epoch();
        }
    }
    println!(
        "weighting (weigh + update): {:.3} ms per step",
        weighting_time.as_secs_f64() * 1e3 / steps.max(1) as f64
    );
    Ok(())
}
