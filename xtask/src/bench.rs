//! `cargo xtask bench`: training-step and inference timings of our model on this machine, in the
//! shape of the PyTorch peer's benchmark (`../shared/PEER.md`, `scripts/peer-bench.sh`).
//!
//! - Training step = encoder forward, the heads through a loss weighting (`constant` or `dao`),
//!   `backward`, the weighting's own update and AdamW (lr 1e-5, eps 1e-8, weight decay 0.01) on
//!   encoder + heads. Batch 10, length 128, no padding, dropout on. `lora8-dao` adds LoRA r = 8
//!   (α 8, dropout 0.05, all six projections) with everything else of the encoder frozen; any
//!   rank works (`lora64-dao`, `lora512-dao`, α = r). `dao-shared` is DAO with the gradient
//!   norms taken over the encoder's parameters (`grad_norm_wrt = "shared-parameters"`).
//! - Inference = encoder + both heads on a plain (non-autodiff) device, batch 32, length 128.
//! - A `-bf16` suffix on any mode (`infer-bf16`, `dao-bf16`, …) multiplies by the encoder's
//!   weights in bf16 with f32 sums on AMX tiles, or AVX-512 BF16 where it outruns f32 FMAs
//!   (`encoder::ProductPrecision::Bf16`; the result's `bf16_products` says whether it did,
//!   `bf16_kernel` on which instructions: `amx`, `avx512-bf16`).
//! - Each (model, mode) runs in a fresh child process (the xtask binary re-executed with the
//!   hidden `--one MODEL:MODE`), so its peak memory (`VmHWM`) is its own.
//! - On the CPU the children of one model take turns, one step each (`constant` step 1, `dao`
//!   step 1, `lora8-dao` step 1, `constant` step 2, …), so a slow minute of a shared machine
//!   falls on every mode alike and the ratios between modes hold (which mode steps first in a
//!   round rotates: that place ran slower); `--sequential` runs them one after the other
//!   instead (one model in memory at a time).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, FloatDType, Int, Tensor};
use dao::{StrategyConfig, TaskOutputs};
use encoder::{
    bf16_products_available, bf16_products_kernel, parse_device, Encoder, EncoderConfig,
    EncoderInput, ProductPrecision,
};
use heads::{HeadsConfig, MultiTaskHeads};
use serde_json::{json, Value};

/// Every mode, in the order they run.
pub const MODES: [&str; 5] = ["constant", "dao", "lora8-dao", "infer", "infer-bf16"];

// Modes not run by default: other LoRA ranks (`lora{r}-dao`), DAO over the shared parameters
// (`dao-shared`), `lora8-dao-p0` (`lora8-dao` with the adapters' dropout off, to price
// that dropout), `matmul` (the rate of the device's products at the step's largest shape),
// `products` (the encoder's own CPU weight products at inference's shapes, f32 and bf16) and
// `rowsum` (a parameter gradient's sum over the rows, by reduction and by product).

/// `lora{r}-dao[-p0]` → (rank, dropout).
fn lora_mode(mode: &str) -> Option<(usize, f64)> {
    let rest = mode.strip_prefix("lora")?;
    let (rank, dropout) = match rest.strip_suffix("-dao-p0") {
        Some(rank) => (rank, 0.0),
        None => (
            rest.strip_suffix("-dao")?,
            lora::LoraConfig::default().dropout,
        ),
    };
    Some((rank.parse().ok().filter(|&r| r > 0)?, dropout))
}

fn known_mode(mode: &str) -> bool {
    if ["matmul", "linear", "rowsum", "products"].contains(&mode) {
        return true;
    }
    let (mode, _) = products_of(mode);
    MODES.contains(&mode) || mode == "dao-shared" || lora_mode(mode).is_some()
}

/// A mode's `-bf16` suffix: the encoder's weight products in bf16 (AMX tiles or AVX-512 BF16)
/// ([`ProductPrecision::Bf16`]); `infer-bf16` is `infer` with it.
fn products_of(mode: &str) -> (&str, ProductPrecision) {
    match mode.strip_suffix("-bf16") {
        Some(base) => (base, ProductPrecision::Bf16),
        None => (mode, ProductPrecision::F32),
    }
}

const INFER_BATCH: usize = 32;

/// Where and at what size to measure: the CPU figures use the defaults (cpu, training
/// batch 10, length 128); the GPU script asks for `cuda`, length 512.
#[derive(Debug, Clone)]
pub struct Setup {
    pub device: String,
    pub seq: usize,
    pub batch: usize,
    /// `f32`, `bf16` or `f16` (comma-separated in [`run`], one in each child).
    pub dtype: String,
    /// Timed steps of each measurement (`None`: 20 on the CPU, 10 on a GPU, or 3 with
    /// `--quick`).
    pub steps: Option<usize>,
    /// In a child: before each step, ask the parent for a turn (print `turn`) and wait for
    /// its line on stdin, so several children's steps interleave without overlapping.
    pub take_turns: bool,
}

impl Setup {
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--device".into(),
            self.device.clone(),
            "--seq".into(),
            self.seq.to_string(),
            "--batch".into(),
            self.batch.to_string(),
            "--dtype".into(),
            self.dtype.clone(),
        ];
        if let Some(steps) = self.steps {
            args.extend(["--steps".into(), steps.to_string()]);
        }
        args
    }

    /// The device, its default float type set before any tensor exists (burn fixes it at the
    /// first tensor). Half precision here is pure: weights, activations and optimizer state.
    fn device(&self) -> Result<Device> {
        let mut device = parse_device(&self.device)?;
        let dtype = match self.dtype.as_str() {
            "f32" => return Ok(device),
            "bf16" => FloatDType::BF16,
            "f16" => FloatDType::F16,
            other => bail!("unknown dtype `{other}` (f32, bf16, f16)"),
        };
        device
            .configure(dtype)
            .map_err(|e| anyhow::anyhow!("{}: cannot use {dtype:?}: {e:?}", self.device))?;
        Ok(device)
    }
}

/// What the device's allocator holds (`None` on the CPU, whose figure is the process's RSS).
fn device_mem_bytes(device: &Device) -> Option<u64> {
    device.memory_pool_usage().map(|u| u.bytes_reserved)
}

/// The encoder shapes we benchmark.
pub fn shape(model: &str) -> Result<EncoderConfig> {
    let (layers, hidden, heads, inter, vocab, family) = match model {
        "minilm" => (6, 384, 12, 1536, 30522, "bert"),
        "roberta-base" => (12, 768, 12, 3072, 50265, "roberta"),
        "roberta-large" => (24, 1024, 16, 4096, 50265, "roberta"),
        other => bail!("unknown model `{other}` (minilm, roberta-base, roberta-large)"),
    };
    let json = json!({
        "model_type": family, "vocab_size": vocab, "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads,
        "intermediate_size": inter, "max_position_embeddings": 514,
        "type_vocab_size": if family == "bert" { 2 } else { 1 },
        "pad_token_id": if family == "bert" { 0 } else { 1 },
        "layer_norm_eps": 1e-12,
    });
    Ok(serde_json::from_value(json)?)
}

/// Encoder and heads, one module so one optimizer steps both.
#[derive(Module, Debug)]
struct Model {
    encoder: Encoder,
    heads: MultiTaskHeads,
}

/// Token ids in `[1000, vocab)` with the first-token id in front (as the peer does), no padding.
fn random_input(config: &EncoderConfig, batch: usize, seq: usize, device: &Device) -> EncoderInput {
    let ids = Tensor::<2, Int>::random(
        [batch, seq],
        Distribution::Uniform(1000.0, (config.vocab_size - 1) as f64),
        device,
    );
    let first = if config.vocab_size > 30522 { 0 } else { 101 };
    let ids = ids.slice_assign(
        [0..batch, 0..1],
        Tensor::<2, Int>::full([batch, 1], first, device),
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

/// Peak resident memory of this process (`VmHWM`), in bytes.
fn peak_rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/self/status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmHWM")?
        .parse()?;
    Ok(kib * 1024)
}

/// Wall and CPU seconds of the timed steps.
struct Timings {
    wall: Vec<f64>,
    /// Process CPU seconds (all threads) per step: on a machine shared with other jobs this
    /// moves much less than the wall time, so A/B comparisons use it too.
    cpu: Vec<f64>,
}

impl Timings {
    fn fields(&self) -> Value {
        json!({
            "median_ms": 1e3 * median(self.wall.clone()),
            // Each timed step, in order: with modes in turns, step i of every mode ran in the
            // same round ([`by_round_against_constant`]).
            "steps_ms": self.wall.iter().map(|s| 1e3 * s).collect::<Vec<f64>>(),
            "min_ms": 1e3 * self.wall.iter().cloned().fold(f64::INFINITY, f64::min),
            "max_ms": 1e3 * self.wall.iter().cloned().fold(0.0, f64::max),
            "cpu_ms": 1e3 * median(self.cpu.clone()),
            // CPU seconds / (wall seconds × threads): well below 1 means shared cores.
            "cpu_util": self.cpu.iter().sum::<f64>()
                / (self.wall.iter().sum::<f64>() * threads() as f64),
        })
    }
}

/// Printed by a child that takes turns when it is ready for its next step.
const TURN: &str = "turn";

/// Blocks until the parent gives this child its turn (any line on stdin).
fn wait_for_turn() -> Result<()> {
    println!("{TURN}");
    let mut line = String::new();
    let read = std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the parent's turn")?;
    if read == 0 {
        bail!("the parent process closed this child's turns");
    }
    Ok(())
}

/// Times `steps` calls of `step` after `warmup` untimed ones.
fn timed(
    setup: &Setup,
    steps: usize,
    warmup: usize,
    what: &str,
    mut step: impl FnMut() -> Result<()>,
) -> Result<Timings> {
    let mut timings = Timings {
        wall: Vec::with_capacity(steps),
        cpu: Vec::with_capacity(steps),
    };
    for i in 0..steps + warmup {
        if setup.take_turns {
            wait_for_turn()?;
        }
        let (t, c) = (Instant::now(), cpu_seconds());
        step()?;
        let (dt, dc) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
        let note = if i < warmup { " (warm-up)" } else { "" };
        eprintln!("  {what} {i}: {dt:.3}s wall, {dc:.2}s CPU{note}");
        if i >= warmup {
            timings.wall.push(dt);
            timings.cpu.push(dc);
        }
    }
    Ok(timings)
}

/// CPU seconds of this process so far (user + system), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // 100 ticks per second on Linux (USER_HZ).
    (ticks(11) + ticks(12)) / 100.0
}

/// One training step's median seconds for `mode` (`constant`, `dao`, `lora8-dao`).
fn train(
    model_name: &str,
    mode: &str,
    setup: &Setup,
    steps: usize,
    warmup: usize,
) -> Result<Value> {
    let (base_mode, products) = products_of(mode);
    let (strategy, lora) = match base_mode {
        "constant" => ("constant", None),
        "dao" | "dao-shared" => ("dao", None),
        other => match lora_mode(other) {
            Some(lora) => ("dao", Some(lora)),
            None => bail!("unknown mode `{other}` ({})", MODES.join(", ")),
        },
    };
    let config = shape(model_name)?;
    let device = setup.device()?.autodiff();
    device.seed(42);
    let mut encoder = Encoder::new(&config, &device);
    if let Some((rank, dropout)) = lora {
        let config = lora::LoraConfig {
            dropout,
            ..lora::LoraConfig::with_rank(rank)
        };
        encoder = encoder.apply_lora(&config)?;
    }
    encoder.set_product_precision(products);
    let heads = HeadsConfig::default().init(config.hidden_size, &device)?;
    // An Option so the step can move the model into the optimizer and back (a clone would
    // share the parameters and force copies instead of in-place updates).
    let mut slot = Some(Model { encoder, heads });
    let trainable = slot.as_ref().map_or(0, count_trainable);
    let mut strategy = StrategyConfig::from_name(strategy)?;
    let shared = base_mode == "dao-shared";
    if let StrategyConfig::Dao(dao) = &mut strategy {
        if shared {
            dao.grad_norm_wrt = dao::GradNormWrt::SharedParameters;
        }
    }
    let mut weighting = strategy.build(&device)?;
    // The trainer's AdamW (torch's defaults: ε 1e-8, weight decay 0.01).
    let mut optim = trainer::AdamW::new(trainer::AdamWSettings::default());
    let input = random_input(&config, setup.batch, setup.seq, &device);
    let targets = Tensor::<1>::random([setup.batch], Distribution::Uniform(-1.0, 1.0), &device);
    let labels = Tensor::<1, Int>::random([setup.batch], Distribution::Uniform(0.0, 5.0), &device);
    // Where a CPU step's time goes (forward + weighting, backward, optimizers): the CPU backend
    // runs eagerly, so a clock between phases measures them. Not on a GPU, whose queue a
    // mid-step sync would drain.
    let phases = setup.device == "cpu";
    let mut phase_ms: [Vec<f64>; 3] = Default::default();
    let mut step_index = 0;
    let times = timed(setup, steps, warmup, mode, || {
        let clock = Instant::now();
        let model = slot
            .take()
            .context("the model was lost in an earlier step")?;
        // Seeded per step, so dao-shared's extra forwards can replay this one's dropout masks.
        let step_seed = 1000 + step_index as u64;
        device.seed(step_seed);
        // The encoder's hand-written CPU training path (dao-shared needs burn's graph of the
        // encoder for its per-task gradients).
        let fused = if shared {
            None
        } else {
            model.encoder.forward_train(input.clone())
        };
        let (h, tape) = match fused {
            Some((h, tape)) => (h, Some(tape)),
            None => (model.encoder.first_token(input.clone()), None),
        };
        let h_leaf = h.clone();
        let masks = model.heads.sample_dropout_masks(setup.batch, &device);
        let heads = &model.heads;
        let mut outputs = |h: Tensor<2>| {
            let out = heads.forward_with_masks(h, masks.as_ref());
            let error = out.scores.reshape([setup.batch]) - targets.clone();
            TaskOutputs {
                regression_loss: error.powi_scalar(2).mean(),
                logits: out.logits,
                labels: labels.clone(),
            }
        };
        // dao-shared: each task's gradient over the encoder needs its own forward, with the
        // loss's dropout masks (as the trainer does).
        let mut trunk = dao::SharedModule {
            module: &model.encoder,
            forward: |encoder: &Encoder| {
                device.seed(step_seed);
                encoder.first_token(input.clone())
            },
        };
        let weighted = weighting.weigh_step(dao::StepInput {
            representation: h,
            heads: &mut outputs,
            shared: shared.then_some(&mut trunk as &mut dyn dao::SharedParameters),
        })?;
        let forward_done = clock.elapsed().as_secs_f64();
        let grads = weighted.loss.backward();
        weighting.update(&grads);
        let grad_h = tape.as_ref().and_then(|_| h_leaf.grad(&grads));
        let mut grads = GradientsParams::from_grads(grads, &model);
        let mut model = Some(model);
        if let Some(tape) = tape {
            // As the trainer: each encoder layer's AdamW update as soon as its gradients
            // exist (so `backward_ms` includes the encoder's updates, `optimizer_ms` the rest).
            tape.backward_by_layer(grad_h, &mut grads, |layer| {
                if let Some(current) = model.take() {
                    model = Some(optim.step(1e-5, current, layer));
                }
            });
        }
        let model = model.context("the model was lost in a layer's update")?;
        let backward_done = clock.elapsed().as_secs_f64();
        slot = Some(optim.step(1e-5, model, grads));
        device.sync()?;
        let done = clock.elapsed().as_secs_f64();
        if phases && step_index >= warmup {
            phase_ms[0].push(1e3 * forward_done);
            phase_ms[1].push(1e3 * (backward_done - forward_done));
            phase_ms[2].push(1e3 * (done - backward_done));
        }
        step_index += 1;
        Ok(())
    })?;
    // dao-shared runs the encoder through burn's graph, which keeps f32.
    let bf16_used = products == ProductPrecision::Bf16
        && setup.device == "cpu"
        && !shared
        && bf16_products_available();
    let mut result = json!({
        "model": model_name, "mode": mode, "dtype": setup.dtype,
        "step_ms": 1e3 * median(times.wall.clone()),
        "peak_mem_bytes": peak_rss_bytes()?,
        "device_mem_bytes": device_mem_bytes(&device),
        "cublas": encoder::cublas_products(&device),
        "trainable_params": trainable,
        "bf16_products": bf16_used,
        "bf16_kernel": bf16_used.then(bf16_products_kernel).flatten(),
    });
    if phases {
        let [forward, backward, optimizer] = phase_ms.map(median);
        merge(
            &mut result,
            json!({"forward_ms": forward, "backward_ms": backward, "optimizer_ms": optimizer}),
        );
    }
    merge(&mut result, times.fields());
    Ok(result)
}

fn count_trainable(model: &Model) -> usize {
    use burn::module::{ModuleVisitor, Param};
    struct Counter(usize);
    impl ModuleVisitor for Counter {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0 += param.lazy_shape().num_elements();
            }
        }
    }
    let mut counter = Counter(0);
    model.visit(&mut counter);
    counter.0
}

/// Inference throughput (sentences per second) at batch 32; `infer-bf16` with the weight
/// products in bf16 where the CPU can (`"bf16_products"` says whether it did).
fn infer(
    model_name: &str,
    mode: &str,
    setup: &Setup,
    steps: usize,
    warmup: usize,
) -> Result<Value> {
    let config = shape(model_name)?;
    let device = setup.device()?;
    device.seed(42);
    let mut encoder = Encoder::new(&config, &device);
    let (_, products) = products_of(mode);
    let bf16 = products == ProductPrecision::Bf16;
    encoder.set_product_precision(products);
    let heads = HeadsConfig::default().init(config.hidden_size, &device)?;
    let input = random_input(&config, INFER_BATCH, setup.seq, &device);
    let times = timed(setup, steps, warmup, mode, || {
        let h = encoder.first_token(input.clone());
        let out = heads.forward(h);
        out.scores.into_data();
        out.logits.into_data();
        Ok(())
    })?;
    let bf16_used = bf16 && setup.device == "cpu" && bf16_products_available();
    let mut result = json!({
        "model": model_name, "mode": mode, "dtype": setup.dtype,
        "sentences_per_s": INFER_BATCH as f64 / median(times.wall.clone()),
        "bf16_products": bf16_used,
        "bf16_kernel": bf16_used.then(bf16_products_kernel).flatten(),
        "peak_mem_bytes": peak_rss_bytes()?,
        "device_mem_bytes": device_mem_bytes(&device),
        "cublas": encoder::cublas_products(&device),
    });
    merge(&mut result, times.fields());
    Ok(result)
}

/// The rate burn's product reaches on the device at the step's largest shape, the
/// feed-forward up-projection `[batch·seq, hidden] × [hidden, intermediate]`: what the
/// training step's time can be read against (its products are ⅔ or more of its work).
/// `linear` times the encoder's own product there instead (cuBLAS with `DAO_CUBLAS=1` on
/// CUDA), and both report its largest deviation from burn's.
fn matmul(
    model_name: &str,
    mode: &str,
    setup: &Setup,
    steps: usize,
    warmup: usize,
) -> Result<Value> {
    // Products per timed step: one takes well under a millisecond on a GPU, so a single one
    // would time the launch and the sync.
    const REPEATS: usize = 20;
    let config = shape(model_name)?;
    let device = setup.device()?;
    device.seed(42);
    let (m, k, n) = (
        setup.batch * setup.seq,
        config.hidden_size,
        config.intermediate_size,
    );
    let a = Tensor::<2>::random([m, k], Distribution::Default, &device);
    let b = Tensor::<2>::random([k, n], Distribution::Default, &device);
    // `linear`: the encoder's product (cuBLAS where it serves the device), checked once
    // against burn's.
    let layer = burn::nn::Linear {
        weight: burn::module::Param::from_tensor(b.clone()),
        bias: None,
    };
    let product = |a: &Tensor<2>| match mode {
        "linear" => encoder::linear(&layer, a.clone()),
        _ => a.clone().matmul(b.clone()),
    };
    let reference = a.clone().matmul(b.clone());
    let max_abs = |t: Tensor<2>| -> Result<f64> {
        let v: Vec<f32> = t
            .abs()
            .max()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()?;
        Ok(f64::from(v[0]))
    };
    let deviation = max_abs(product(&a) - reference.clone())? / max_abs(reference)?;
    let times = timed(setup, steps, warmup, mode, || {
        for _ in 0..REPEATS {
            drop(product(&a));
        }
        device.sync()?;
        Ok(())
    })?;
    let seconds = median(times.wall.clone()) / REPEATS as f64;
    let mut result = json!({
        "model": model_name, "mode": mode, "dtype": setup.dtype,
        "max_rel_deviation_from_burn": deviation,
        "shape": [m, k, n],
        "matmul_ms": 1e3 * seconds,
        "tflops": 2.0 * (m * k * n) as f64 / seconds / 1e12,
        "peak_mem_bytes": peak_rss_bytes()?,
        "device_mem_bytes": device_mem_bytes(&device),
        "cublas": encoder::cublas_products(&device),
    });
    merge(&mut result, times.fields());
    Ok(result)
}

/// A bias gradient's sum over the rows, `Σ_rows dy` of `dy: [batch·seq, intermediate]`, as
/// burn's reduction (`sum_dim(0)`, over the strided axis) and as the product `1ᵀ dy`. On the
/// H200 one reduction kernel took 12 % of the f32 training step at ≈ 98 µs a launch, about six
/// times a pass over such a gradient (BENCHMARKS.md, "Fourteenth session"); this says which
/// of the two a step should use there.
fn rowsum(model_name: &str, setup: &Setup, steps: usize, warmup: usize) -> Result<Value> {
    const REPEATS: usize = 20;
    let config = shape(model_name)?;
    let device = setup.device()?;
    device.seed(42);
    let (rows, n) = (setup.batch * setup.seq, config.intermediate_size);
    let dy = Tensor::<2>::random([rows, n], Distribution::Default, &device);
    let ones = Tensor::<2>::ones([1, rows], &device);
    let by_reduction = || dy.clone().sum_dim(0);
    let by_product = || ones.clone().matmul(dy.clone());
    let deviation = {
        let reference: Vec<f32> = by_reduction().into_data().convert::<f32>().try_to_vec()?;
        let product: Vec<f32> = by_product().into_data().convert::<f32>().try_to_vec()?;
        let largest = reference
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(f32::MIN_POSITIVE);
        let worst = reference
            .iter()
            .zip(&product)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        f64::from(worst / largest)
    };
    let time = |label: &str, sum: &dyn Fn() -> Tensor<2>| -> Result<f64> {
        let times = timed(setup, steps, warmup, label, || {
            // Held until the sync, so a lazy backend cannot skip work nobody reads.
            let sums: Vec<Tensor<2>> = (0..REPEATS).map(|_| sum()).collect();
            device.sync()?;
            drop(sums);
            Ok(())
        })?;
        Ok(median(times.wall) / REPEATS as f64)
    };
    let reduction = time("rowsum by reduction", &by_reduction)?;
    let product = time("rowsum by product", &by_product)?;
    let bytes = (rows * n * 4) as f64;
    Ok(json!({
        "model": model_name, "mode": "rowsum", "dtype": setup.dtype,
        "shape": [rows, n],
        "reduction_ms": 1e3 * reduction,
        "product_ms": 1e3 * product,
        "reduction_gb_per_s": bytes / reduction / 1e9,
        "product_gb_per_s": bytes / product / 1e9,
        "max_rel_deviation_product": deviation,
        "peak_mem_bytes": peak_rss_bytes()?,
        "device_mem_bytes": device_mem_bytes(&device),
    }))
}

/// The encoder's CPU weight products at inference's rows (batch 32 × `--seq`): the fused
/// query/key/value projection, the attention output, the feed-forward's two; each in f32 and,
/// where a bf16 kernel runs, in bf16 (GFLOP/s, the best of `steps` runs). Set beside
/// PyTorch's `matmul` at the same shapes (`scripts/peer-products.py`) it says how much of an
/// inference ratio the products themselves can give.
fn products(model_name: &str, setup: &Setup, steps: usize) -> Result<Value> {
    if setup.device != "cpu" {
        bail!("the `products` mode times the CPU's products: run it with --device cpu");
    }
    let config = shape(model_name)?;
    let (rows, hidden, inner) = (
        INFER_BATCH * setup.seq,
        config.hidden_size,
        config.intermediate_size,
    );
    let shapes = [
        ("query_key_value", (rows, hidden, 3 * hidden)),
        ("attention_output", (rows, hidden, hidden)),
        ("intermediate", (rows, hidden, inner)),
        ("output", (rows, inner, hidden)),
    ];
    let rates: Vec<Value> = shapes
        .into_iter()
        .map(|(name, (m, k, n))| {
            let rate = |precision| encoder::weight_product_gflops((m, k, n), precision, steps);
            json!({
                "product": name, "shape": [m, k, n],
                "f32_gflops": rate(ProductPrecision::F32),
                "bf16_gflops": rate(ProductPrecision::Bf16),
            })
        })
        .collect();
    Ok(json!({
        "model": model_name, "mode": "products", "dtype": setup.dtype,
        "products": rates,
        "bf16_kernel": bf16_products_kernel(),
        "peak_mem_bytes": peak_rss_bytes()?,
    }))
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        into.extend(from);
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One measurement in this process (`MODEL:MODE`), printed as one JSON line on stdout.
pub fn run_one(spec: &str, setup: &Setup, quick: bool) -> Result<()> {
    let (model, mode) = spec
        .split_once(':')
        .with_context(|| format!("--one wants MODEL:MODE, got `{spec}`"))?;
    // Twenty timed steps on the CPU, ten on a GPU (whose lent time is short): with five, one
    // mode's median moved by ±3 % between runs of the same build on this machine, as much as
    // the DAO and LoRA targets' margins; with ten, a loaded host still put DAO against
    // constant anywhere in 0.99–1.08 (BENCHMARKS.md, "Eighteenth session").
    let full = if setup.device == "cpu" { 20 } else { 10 };
    let (steps, warmup) = if quick { (3, 1) } else { (full, 2) };
    let steps = setup.steps.unwrap_or(steps).max(1);
    let result = if mode.starts_with("infer") {
        infer(model, mode, setup, steps, warmup)?
    } else if mode == "matmul" || mode == "linear" {
        matmul(model, mode, setup, steps, warmup)?
    } else if mode == "rowsum" {
        rowsum(model, setup, steps, warmup)?
    } else if mode == "products" {
        products(model, setup, steps)?
    } else {
        train(model, mode, setup, steps, warmup)?
    };
    println!("{result}");
    Ok(())
}

fn device_description(setup: &Setup) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    if setup.device != "cpu" {
        return format!("{} (burn 0.22.1), host {cpu}", setup.device);
    }
    format!("flex (burn 0.22.1), {cpu}, {} threads", threads())
}

/// Runs every requested (model, mode) in its own child process and prints a table, or one JSON
/// object with `--json`. On the CPU, unless `sequential`, the children of one model and dtype
/// take turns step by step (see the module's comment).
pub fn run(
    models: &str,
    modes: &str,
    setup: &Setup,
    quick: bool,
    json_out: bool,
    sequential: bool,
) -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut results = Vec::new();
    let mut failed = Vec::new();
    let models: Vec<&str> = models.split(',').map(str::trim).collect();
    let modes: Vec<&str> = modes.split(',').map(str::trim).collect();
    let dtypes: Vec<&str> = setup.dtype.split(',').map(str::trim).collect();
    for model in &models {
        shape(model)?;
    }
    for mode in &modes {
        if !known_mode(mode) {
            bail!("unknown mode `{mode}` ({})", MODES.join(", "));
        }
    }
    for dtype in &dtypes {
        if !["f32", "bf16", "f16"].contains(dtype) {
            bail!("unknown dtype `{dtype}` (f32, bf16, f16)");
        }
    }
    // A GPU's memory would have to hold every mode's model at once: one at a time there.
    let in_turns = !sequential && setup.device == "cpu" && modes.len() > 1;
    for model in &models {
        for dtype in &dtypes {
            let one = Setup {
                dtype: dtype.to_string(),
                take_turns: in_turns,
                ..setup.clone()
            };
            let specs: Vec<String> = modes.iter().map(|m| format!("{model}:{m}")).collect();
            let outcomes = if in_turns {
                eprintln!("{model} {dtype}: {} in turns", modes.join(", "));
                run_in_turns(
                    specs
                        .iter()
                        .map(|spec| (spec.clone(), child_command(&exe, spec, &one, quick)))
                        .collect(),
                )
            } else {
                specs
                    .iter()
                    .map(|spec| {
                        eprintln!("{spec} {dtype}:");
                        run_alone(&exe, spec, &one, quick)
                    })
                    .collect()
            };
            let first = results.len();
            for (mode, outcome) in modes.iter().zip(outcomes) {
                match outcome {
                    Ok(result) => results.push(result),
                    // One failed measurement (a dtype the device lacks, say) should not lose
                    // the others: report it and go on.
                    Err(error) => {
                        eprintln!("{model} {mode} {dtype} failed: {error:#}");
                        failed.push(format!("{model}:{mode}:{dtype}"));
                        results.push(json!({"model": model, "mode": mode, "dtype": dtype,
                            "error": format!("{error:#}")}));
                    }
                }
            }
            if in_turns {
                by_round_against_constant(&mut results[first..]);
            }
        }
    }
    if json_out {
        println!(
            "{}",
            json!({"device": device_description(setup), "results": results})
        );
    } else {
        print_table(&results, setup);
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Adds `"vs_constant_by_round"` to each training mode of one model and dtype that took
/// turns with `constant`: the median over the rounds of its step's time over `constant`'s in
/// the same round. The ratio of the two medians (`step_ms`) takes each from other rounds, so
/// on a shared host it moves with the minutes each median fell in (DAO against constant
/// 0.95–1.08 in ten- to thirty-step runs, BENCHMARKS.md "Eighteenth session"); within a
/// round the modes ran seconds apart.
fn by_round_against_constant(results: &mut [Value]) {
    let steps = |r: &Value| -> Option<Vec<f64>> {
        let steps = r["steps_ms"].as_array()?;
        steps.iter().map(Value::as_f64).collect()
    };
    let Some(constant) = results
        .iter()
        .find(|r| r["mode"] == "constant")
        .and_then(steps)
    else {
        return;
    };
    for r in results.iter_mut() {
        let training = r["step_ms"].is_number() && r["mode"] != "constant";
        let Some(own) = steps(r).filter(|own| training && own.len() == constant.len()) else {
            continue;
        };
        if own.is_empty() {
            continue;
        }
        let ratios = own.iter().zip(&constant).map(|(s, c)| s / c).collect();
        r["vs_constant_by_round"] = json!(median(ratios));
    }
}

/// The xtask binary re-executed to measure `spec` (`MODEL:MODE`) alone in its process.
fn child_command(exe: &std::path::Path, spec: &str, setup: &Setup, quick: bool) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "--one", spec]).args(setup.args());
    if quick {
        cmd.arg("--quick");
    }
    if setup.take_turns {
        cmd.arg("--take-turns");
    }
    cmd.stderr(Stdio::inherit());
    cmd
}

fn run_alone(exe: &std::path::Path, spec: &str, setup: &Setup, quick: bool) -> Result<Value> {
    let out = child_command(exe, spec, setup, quick)
        .output()
        .context("cannot re-run the xtask binary")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().rfind(|l| l.starts_with('{')) {
        Some(line) if out.status.success() => Ok(serde_json::from_str(line)?),
        _ => bail!("{spec}: child process failed ({})", out.status),
    }
}

/// A child measuring one mode, between its steps.
struct Turns {
    spec: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Turns {
    /// The child's next word: `None` when it asks for its next turn, its result when done.
    fn next(&mut self) -> Result<Option<Value>> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                let status = self.child.wait()?;
                bail!("{}: child process failed ({status})", self.spec);
            }
            let line = line.trim();
            if line == TURN {
                return Ok(None);
            }
            if line.starts_with('{') {
                let result = serde_json::from_str(line)?;
                let status = self.child.wait()?;
                if !status.success() {
                    bail!("{}: child process failed ({status})", self.spec);
                }
                return Ok(Some(result));
            }
        }
    }

    /// One step (or the end of the measurement, which returns the result).
    fn step(&mut self) -> Result<Option<Value>> {
        writeln!(self.stdin, "go")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("{}: child process gone", self.spec))?;
        self.next()
    }
}

/// Runs every child (a spec and its `--one … --take-turns` command), their steps interleaved one
/// by one; each child is set up while the others wait, and only one ever runs a step. Outcomes
/// in the children's order.
fn run_in_turns(children: Vec<(String, Command)>) -> Vec<Result<Value>> {
    let mut outcomes: Vec<Option<Result<Value>>> = children.iter().map(|_| None).collect();
    let mut active: Vec<(usize, Turns)> = Vec::new();
    for (index, (spec, mut command)) in children.into_iter().enumerate() {
        let started = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot re-run the xtask binary")
            .and_then(|mut child| {
                let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
                let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
                    bail!("{spec}: no pipes to the child process");
                };
                let mut turns = Turns {
                    spec: spec.clone(),
                    child,
                    stdin,
                    stdout: BufReader::new(stdout),
                };
                // Its first request comes once its model is built.
                match turns.next()? {
                    None => Ok(turns),
                    Some(_) => bail!("{spec}: the child finished without taking a turn"),
                }
            });
        match started {
            Ok(turns) => active.push((index, turns)),
            Err(error) => outcomes[index] = Some(Err(error)),
        }
    }
    while !active.is_empty() {
        // The child that steps first in a round ran measurably slower (≈ 2–8 % with three
        // copies of one mode, for no cause found), so the first place rotates.
        active.rotate_left(1);
        active.retain_mut(|(index, turns)| match turns.step() {
            Ok(None) => true,
            Ok(Some(result)) => {
                outcomes[*index] = Some(Ok(result));
                false
            }
            Err(error) => {
                let _ = turns.child.kill();
                let _ = turns.child.wait();
                outcomes[*index] = Some(Err(error));
                false
            }
        });
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(anyhow::anyhow!("not measured"))))
        .collect()
}

fn print_table(results: &[Value], setup: &Setup) {
    println!("{}", device_description(setup));
    for line in table(results, setup.batch) {
        println!("{line}");
    }
}

/// The table's lines: a header, then one line per result. Each step time and peak is also
/// given against the same model's `constant` step (same dtype); a value a device does not
/// report (device memory on the CPU) is left blank.
fn table(results: &[Value], batch: usize) -> Vec<String> {
    let mut lines = vec![format!(
        "{:14} {:15} {:5} {:>10} {:>10} {:>9} {:>12} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "model",
        "mode",
        "dtype",
        "step ms",
        "vs const",
        "by round",
        "sentences/s",
        "peak MiB",
        "vs const",
        "device MiB",
        "CPU ms",
        "CPU util"
    )];
    // `value` with `decimals`, or blank where it is missing.
    let cell = |value: Option<f64>, decimals: usize| {
        value
            .filter(|v| v.is_finite())
            .map_or(String::new(), |v| format!("{v:.decimals$}"))
    };
    for r in results {
        let model = r["model"].as_str().unwrap_or("");
        let mode = r["mode"].as_str().unwrap_or("");
        let dtype = r["dtype"].as_str().unwrap_or("");
        let constant = results.iter().find(|c| {
            c["model"] == r["model"] && c["dtype"] == r["dtype"] && c["mode"] == "constant"
        });
        let against_constant = |key: &str| match (r[key].as_f64(), constant) {
            (Some(value), Some(c)) if r["step_ms"].is_number() => {
                c[key].as_f64().map(|base| value / base)
            }
            _ => None,
        };
        let step = r["step_ms"].as_f64();
        let sentences = r["sentences_per_s"]
            .as_f64()
            .or(step.map(|s| batch as f64 / (s / 1e3)));
        let mib = |key: &str| r[key].as_f64().map(|bytes| bytes / (1024.0 * 1024.0));
        let line = if let Some(error) = r["error"].as_str() {
            format!("{model:14} {mode:15} {dtype:5} {error}")
        } else if mode == "rowsum" {
            format!(
                "{model:14} {mode:15} {dtype:5} Σ over the rows of {}: reduction {:.3} ms, product {:.3} ms",
                r["shape"],
                r["reduction_ms"].as_f64().unwrap_or(f64::NAN),
                r["product_ms"].as_f64().unwrap_or(f64::NAN),
            )
        } else if let Some(products) = r["products"].as_array() {
            let rates: Vec<String> = products
                .iter()
                .map(|p| {
                    let bf16 = p["bf16_gflops"]
                        .as_f64()
                        .map_or(String::new(), |v| format!(" (bf16 {v:.0})"));
                    let f32 = p["f32_gflops"].as_f64().unwrap_or(f64::NAN);
                    format!("{} {f32:.0}{bf16}", p["product"].as_str().unwrap_or(""))
                })
                .collect();
            format!(
                "{model:14} {mode:15} {dtype:5} GFLOP/s: {}",
                rates.join(", ")
            )
        } else if let Some(tflops) = r["tflops"].as_f64() {
            format!(
                "{model:14} {mode:15} {dtype:5} {:>10.3} ms per product {}, {tflops:.3} TFLOP/s",
                r["matmul_ms"].as_f64().unwrap_or(f64::NAN),
                r["shape"],
            )
        } else {
            format!(
                "{model:14} {mode:15} {dtype:5} {:>10} {:>10} {:>9} {:>12} {:>10} {:>10} {:>10} {:>9} {:>9}",
                cell(step, 1),
                cell(against_constant("step_ms"), 3),
                cell(r["vs_constant_by_round"].as_f64(), 3),
                cell(sentences, 1),
                cell(mib("peak_mem_bytes"), 0),
                cell(against_constant("peak_mem_bytes"), 3),
                cell(mib("device_mem_bytes"), 0),
                cell(r["cpu_ms"].as_f64(), 0),
                cell(r["cpu_util"].as_f64(), 2),
            )
        };
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that speaks the turns protocol with `sh`: `steps` turns, each step appending
    /// `name` to `log`; it exits 1 instead of its step `fail_at` (1-based).
    fn child(name: &str, steps: usize, log: &std::path::Path, fail_at: usize) -> (String, Command) {
        let log = log.display();
        let script = format!(
            "for i in $(seq 1 {steps}); do echo {TURN}; read _ || exit 3; \
             [ $i -eq {fail_at} ] && exit 1; echo {name} >> '{log}'; done; \
             echo '{{\"mode\": \"{name}\"}}'"
        );
        let mut command = Command::new("sh");
        command.args(["-c", &script]);
        (name.to_string(), command)
    }

    fn log_file(test: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("bench-turns-{test}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    fn modes(outcomes: &[Result<Value>]) -> Vec<String> {
        outcomes
            .iter()
            .map(|o| match o {
                Ok(v) => v["mode"].as_str().unwrap_or("?").to_string(),
                Err(e) => format!("error: {e:#}"),
            })
            .collect()
    }

    #[test]
    fn children_take_one_step_each_in_turn() {
        let log = log_file("order");
        let outcomes = run_in_turns(vec![
            child("a", 3, &log, 0),
            child("b", 1, &log, 0),
            child("c", 2, &log, 0),
        ]);
        assert_eq!(modes(&outcomes), ["a", "b", "c"]);
        let order = std::fs::read_to_string(&log).unwrap();
        // Rounds [b c a], [a c] (b done after its one step; the first place rotates), [a].
        assert_eq!(
            order.split_whitespace().collect::<Vec<_>>(),
            ["b", "c", "a", "a", "c", "a"]
        );
        let _ = std::fs::remove_file(&log);
    }

    #[test]
    fn a_failing_child_loses_only_its_own_result() {
        let log = log_file("failure");
        let outcomes = run_in_turns(vec![
            child("a", 3, &log, 0),
            child("b", 3, &log, 2),
            child("c", 3, &log, 0),
        ]);
        let modes = modes(&outcomes);
        assert_eq!((modes[0].as_str(), modes[2].as_str()), ("a", "c"));
        assert!(
            modes[1].starts_with("error: b: child process failed"),
            "{}",
            modes[1]
        );
        let order = std::fs::read_to_string(&log).unwrap();
        // Rounds [b c a], [c a b] (b fails instead of its second step), [a c].
        assert_eq!(
            order.split_whitespace().collect::<Vec<_>>(),
            ["b", "c", "a", "c", "a", "a", "c"]
        );
        let _ = std::fs::remove_file(&log);
    }

    #[test]
    fn each_mode_against_constant_round_by_round() {
        let mut results = [
            json!({"mode": "constant", "step_ms": 400.0, "steps_ms": [400.0, 800.0, 300.0]}),
            // Rounds 0.5, 0.5, 1.0: median 0.5 where the medians' ratio is 0.75.
            json!({"mode": "lora8-dao", "step_ms": 300.0, "steps_ms": [200.0, 400.0, 300.0]}),
            json!({"mode": "infer", "sentences_per_s": 100.0, "steps_ms": [1.0, 2.0, 3.0]}),
            // Another step count: no rounds to pair.
            json!({"mode": "dao", "step_ms": 400.0, "steps_ms": [400.0, 400.0]}),
        ];
        by_round_against_constant(&mut results);
        assert_eq!(results[1]["vs_constant_by_round"], json!(0.5));
        for i in [0, 2, 3] {
            assert!(
                results[i].get("vs_constant_by_round").is_none(),
                "{}",
                results[i]
            );
        }
    }

    #[test]
    fn the_table_gives_each_step_and_peak_against_constant() {
        let mib = 1024.0 * 1024.0;
        let results = [
            json!({"model": "minilm", "mode": "constant", "dtype": "f32", "step_ms": 400.0,
                   "peak_mem_bytes": 400.0 * mib, "device_mem_bytes": null,
                   "cpu_ms": 700.0, "cpu_util": 0.9}),
            json!({"model": "minilm", "mode": "lora8-dao", "dtype": "f32", "step_ms": 280.0,
                   "peak_mem_bytes": 236.0 * mib, "device_mem_bytes": null,
                   "cpu_ms": 500.0, "cpu_util": 0.9, "vs_constant_by_round": 0.6875}),
            json!({"model": "minilm", "mode": "infer", "dtype": "f32",
                   "sentences_per_s": 130.0, "peak_mem_bytes": 160.0 * mib}),
            // Another dtype has no constant step to compare with.
            json!({"model": "minilm", "mode": "dao", "dtype": "bf16", "step_ms": 300.0,
                   "peak_mem_bytes": 300.0 * mib}),
        ];
        let lines = table(&results, 10);
        let cells = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
        assert_eq!(lines.len(), 5);
        // step ms, vs const (and by round), sentences/s (batch 10), peak MiB, vs const, CPU
        // ms, CPU util.
        assert_eq!(
            cells(2)[3..],
            ["280.0", "0.700", "0.688", "35.7", "236", "0.590", "500", "0.90"]
        );
        assert_eq!(
            cells(1)[3..],
            ["400.0", "1.000", "25.0", "400", "1.000", "700", "0.90"]
        );
        // Inference: its throughput and peak only; nothing missing is printed as NaN.
        assert_eq!(cells(3)[3..], ["130.0", "160"]);
        assert_eq!(cells(4)[3..], ["300.0", "33.3", "300"]);
        assert!(lines.iter().all(|line| !line.contains("NaN")), "{lines:#?}");
    }
}
