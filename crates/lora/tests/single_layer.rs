//! One layer adapted outside any model, as a user of this crate alone does it.

use burn::nn::LinearConfig;
use burn::tensor::{Device, Distribution, Tensor};
use lora::{LoraConfig, LoraError, LoraLinear};

fn layer(device: &Device) -> LoraLinear {
    LoraLinear::new(LinearConfig::new(6, 4).init(device))
}

#[test]
fn a_single_layer_needs_no_targets_but_a_valid_rank() {
    let device = Device::flex().autodiff();
    // Targets name layers of a whole model; one layer has none to name.
    let config = LoraConfig {
        targets: vec![],
        ..LoraConfig::with_rank(2)
    };
    let adapted = layer(&device).with_adapter(&config).unwrap();
    let adapter = adapted.adapter.as_ref().unwrap();
    assert_eq!((adapter.rank(), adapter.num_params()), (2, 2 * 6 + 4 * 2));
    // A fresh adapter (B = 0) changes nothing.
    let x = Tensor::<2>::random([3, 6], Distribution::Default, &device);
    let base = adapted.base.forward(x.clone());
    let out = adapted.forward(x);
    let diff = (out - base).abs().max().into_scalar::<f32>();
    assert_eq!(diff, 0.0);

    let zero_rank = LoraConfig {
        targets: vec![],
        ..LoraConfig::with_rank(0)
    };
    let error = layer(&device).with_adapter(&zero_rank).unwrap_err();
    assert!(matches!(error, LoraError::InvalidConfig(_)), "{error:?}");
}

#[test]
fn adapter_weights_of_the_wrong_shape_are_a_shape_error() {
    let device = Device::flex();
    let adapted = layer(&device)
        .with_adapter(&LoraConfig::with_rank(2))
        .unwrap();
    // PEFT's layout is A [r, in], B [out, r]; these are transposed.
    let a = Tensor::<2>::zeros([6, 2], &device);
    let b = Tensor::<2>::zeros([2, 4], &device);
    let error = adapted.set_adapter_weights(a, b).unwrap_err();
    assert!(matches!(error, LoraError::Shape(_)), "{error:?}");
    assert!(
        error.to_string().contains("expected A [2, 6], B [4, 2]"),
        "{error}"
    );
}

/// In training the adapter's dropout acts on its own input only (DAO-SPEC "LoRA":
/// `W x + b + s · B A dropout(x)`): with A = B = I the update is `s · m ⊙ x`, each `m` either
/// 0 or `1 / (1 − p)`, and the base product is the same whatever the mask.
#[test]
fn dropout_acts_on_the_adapter_input_only() {
    let device = Device::flex().autodiff();
    let config = LoraConfig {
        targets: vec![],
        alpha: 8.0,
        dropout: 0.5,
        ..LoraConfig::with_rank(4)
    };
    let adapted = LoraLinear::new(LinearConfig::new(4, 4).init(&device))
        .with_adapter(&config)
        .unwrap()
        .set_adapter_weights(Tensor::eye(4, &device), Tensor::eye(4, &device))
        .unwrap();
    let scaling = adapted.adapter.as_ref().unwrap().scaling();
    assert_eq!(scaling, 2.0);
    // Entries in [1, 2): far from 0, so each ratio below is the mask's value.
    let x = Tensor::<2>::random([64, 4], Distribution::Uniform(1.0, 2.0), &device);
    let base = adapted.base.forward(x.clone());
    let update = adapted.forward(x.clone()) - base;
    let ratio: Vec<f32> = (update / x.mul_scalar(scaling))
        .into_data()
        .try_into_vec()
        .unwrap();
    let dropped = ratio.iter().filter(|r| r.abs() < 1e-6).count();
    let kept = ratio.iter().filter(|r| (*r - 2.0).abs() < 1e-5).count();
    assert_eq!(
        dropped + kept,
        ratio.len(),
        "every mask entry is 0 or 1/(1-p): {ratio:?}"
    );
    assert!(
        dropped > 64 && kept > 64,
        "about half of 256 each: {dropped} dropped"
    );
    // Not training (a plain device): no dropout, the whole update.
    let plain = Device::flex();
    let inference = LoraLinear::new(LinearConfig::new(4, 4).init(&plain))
        .with_adapter(&config)
        .unwrap()
        .set_adapter_weights(Tensor::eye(4, &plain), Tensor::eye(4, &plain))
        .unwrap();
    let x = Tensor::<2>::random([8, 4], Distribution::Uniform(1.0, 2.0), &plain);
    let update = inference.forward(x.clone()) - inference.base.forward(x.clone());
    let diff = (update - x.mul_scalar(scaling))
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(diff < 1e-5, "{diff}");
}
