//! `LoraLinear` against PEFT (`fixtures/lora_golden.json`, top level and `extra_alpha8`), and
//! the LoRA invariants: a fresh adapter changes nothing, merge is the same function, training
//! moves only A and B.

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use lora::{LoraConfig, LoraError, LoraLinear};
use serde_json::Value;

fn tensor<const D: usize>(value: &Value, device: &Device) -> Tensor<D> {
    let (shape, data) = testkit::tensor_f32(value);
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

/// The fixture's base layer (PyTorch `[out, in]` transposed to burn's `[in, out]`).
fn base_linear(case: &Value, device: &Device) -> Linear {
    let w: Tensor<2> = tensor(&case["base_weight"], device);
    let [d_out, d_in] = w.dims();
    let mut linear = LinearConfig::new(d_in, d_out).init(device);
    linear.weight = Param::from_tensor(w.transpose());
    linear.bias = Some(Param::from_tensor(tensor(&case["base_bias"], device)));
    linear
}

fn adapted(case: &Value, device: &Device) -> LoraLinear {
    let config = LoraConfig {
        rank: case["r"].as_u64().unwrap() as usize,
        alpha: case["lora_alpha"].as_f64().unwrap(),
        dropout: case["lora_dropout"].as_f64().unwrap(),
        ..LoraConfig::default()
    };
    assert_eq!(config.scaling() as f32, testkit::scalar(&case["scaling"]));
    LoraLinear::new(base_linear(case, device))
        .with_adapter(&config)
        .unwrap()
        .set_adapter_weights(
            tensor(&case["lora_A"], device),
            tensor(&case["lora_B"], device),
        )
        .unwrap()
}

fn check_case(name: &str, case: &Value) {
    let device = Device::flex();
    let x: Tensor<3> = tensor(&case["x"], &device);
    let (_, y) = testkit::tensor_f32(&case["y"]);
    let (_, y_base) = testkit::tensor_f32(&case["y_base"]);
    let (_, merged_weight) = testkit::tensor_f32(&case["merged_weight"]);

    let plain = LoraLinear::new(base_linear(case, &device));
    let got_base = values(plain.forward(x.clone()));
    println!(
        "{name}: y_base max |Δ| = {:e}",
        testkit::max_abs_diff(&got_base, &y_base)
    );
    testkit::assert_close(&format!("{name}.y_base"), &got_base, &y_base, 1e-5, 0.0);

    let layer = adapted(case, &device);
    let got = values(layer.forward(x.clone()));
    println!("{name}: y max |Δ| = {:e}", testkit::max_abs_diff(&got, &y));
    testkit::assert_close(&format!("{name}.y"), &got, &y, 1e-5, 0.0);

    let merged = layer.merge().unwrap();
    // burn stores [in, out]; the fixture is PyTorch's [out, in].
    let got_w = values(merged.base.weight.val().transpose());
    println!(
        "{name}: merged_weight max |Δ| = {:e}",
        testkit::max_abs_diff(&got_w, &merged_weight)
    );
    testkit::assert_close(
        &format!("{name}.merged_weight"),
        &got_w,
        &merged_weight,
        1e-5,
        0.0,
    );
    let got_merged = values(merged.forward(x));
    testkit::assert_close(&format!("{name}.y merged"), &got_merged, &y, 1e-5, 0.0);
}

#[test]
fn peft_linear_forward_and_merge_match() {
    let Some(path) = testkit::shared_file("peft_linear", "fixtures/lora_golden.json") else {
        return;
    };
    let golden = testkit::read_json(&path);
    check_case("top level (alpha 4, scaling 1)", &golden);
    check_case("extra_alpha8 (scaling 2)", &golden["extra_alpha8"]);
}

fn random_layer(d_in: usize, d_out: usize, device: &Device) -> LoraLinear {
    LoraLinear::new(LinearConfig::new(d_in, d_out).init(device))
}

#[test]
fn fresh_adapter_changes_nothing_even_in_training() {
    // Autodiff device: the adapter's dropout is active, the base path must not see it.
    let device = Device::flex().autodiff();
    let plain = random_layer(6, 5, &device);
    let x = Tensor::<3>::random([2, 3, 6], Distribution::Normal(0.0, 1.0), &device);
    let before = values(plain.forward(x.clone()));
    let config = LoraConfig {
        dropout: 0.5,
        ..LoraConfig::with_rank(3)
    };
    let layer = plain.with_adapter(&config).unwrap();
    assert_eq!(
        values(layer.forward(x)),
        before,
        "a fresh adapter (B = 0) must add exactly 0"
    );
    let adapter = layer.adapter.as_ref().unwrap();
    let a = values(adapter.lora_a.weight.val());
    let bound = 1.0 / 6f32.sqrt();
    assert!(a.iter().all(|v| v.abs() <= bound), "A within ±1/√in");
    assert!(a.iter().any(|v| v.abs() > bound / 4.0), "A is not all ~0");
    assert!(values(adapter.lora_b.weight.val())
        .iter()
        .all(|v| *v == 0.0));
    assert_eq!(adapter.num_params(), 3 * 6 + 5 * 3);
}

#[test]
fn merge_is_guarded_and_unmerge_restores() {
    let device = Device::flex();
    let layer = random_layer(4, 3, &device)
        .with_adapter(&LoraConfig::with_rank(2))
        .unwrap();
    let a = Tensor::<2>::random([2, 4], Distribution::Normal(0.0, 1.0), &device);
    let b = Tensor::<2>::random([3, 2], Distribution::Normal(0.0, 1.0), &device);
    let layer = layer.set_adapter_weights(a, b).unwrap();
    let w0 = values(layer.base.weight.val());
    let merged = layer.merge().unwrap();
    assert!(merged.adapter.as_ref().unwrap().is_merged());
    assert!(matches!(
        merged.clone().merge(),
        Err(LoraError::AlreadyMerged)
    ));
    let restored = merged.unmerge().unwrap();
    testkit::assert_close(
        "unmerged W",
        &values(restored.base.weight.val()),
        &w0,
        1e-6,
        0.0,
    );
    assert!(matches!(
        restored.clone().unmerge(),
        Err(LoraError::NotMerged)
    ));

    // A NaN in B: merge refused, base weight untouched.
    let nan_b = Tensor::<2>::from_data(TensorData::new(vec![f32::NAN; 6], [3, 2]), &device);
    let a = Tensor::<2>::ones([2, 4], &device);
    let poisoned = restored.set_adapter_weights(a, nan_b).unwrap();
    assert!(matches!(
        poisoned.clone().merge(),
        Err(LoraError::NonFiniteUpdate)
    ));
    testkit::assert_close(
        "W after refused merge",
        &values(poisoned.base.weight.val()),
        &w0,
        1e-6,
        0.0,
    );
    assert!(matches!(
        random_layer(2, 2, &device).merge(),
        Err(LoraError::NoAdapter)
    ));
}

#[test]
fn adamw_steps_move_only_a_and_b() {
    let device = Device::flex().autodiff();
    let mut layer = random_layer(8, 4, &device)
        .with_adapter(&LoraConfig::with_rank(2))
        .unwrap();
    let w0 = values(layer.base.weight.val());
    let b0 = values(layer.base.bias.as_ref().unwrap().val());
    let a0 = values(layer.adapter.as_ref().unwrap().lora_a.weight.val());
    let mut optim = AdamWConfig::new().with_weight_decay(0.01).init();
    let x = Tensor::<2>::random([5, 8], Distribution::Normal(0.0, 1.0), &device);
    let target = Tensor::<2>::random([5, 4], Distribution::Normal(0.0, 1.0), &device);
    for _ in 0..3 {
        let loss = (layer.forward(x.clone()) - target.clone())
            .powi_scalar(2)
            .mean();
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        layer = optim.step(1e-2, layer, grads);
    }
    assert_eq!(
        values(layer.base.weight.val()),
        w0,
        "base weight must be bit-identical"
    );
    assert_eq!(
        values(layer.base.bias.as_ref().unwrap().val()),
        b0,
        "base bias bit-identical"
    );
    let adapter = layer.adapter.as_ref().unwrap();
    assert_ne!(values(adapter.lora_a.weight.val()), a0, "A trained");
    assert!(
        values(adapter.lora_b.weight.val())
            .iter()
            .any(|v| *v != 0.0),
        "B trained"
    );
}
