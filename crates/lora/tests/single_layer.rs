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
