//! The heads against the PyTorch reference: `golden.json`'s `H` through `heads.safetensors`
//! gives its `S` and `C`; save → load round-trips; a broken file is an error naming the tensor.

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use heads::{HeadsConfig, HeadsError, MultiTaskHeads};

fn fixtures(test: &str) -> Option<(PathBuf, serde_json::Value)> {
    let heads = testkit::shared_file(test, "fixtures/heads.safetensors")?;
    let golden = testkit::read_json(&testkit::shared_file(test, "fixtures/golden.json")?);
    Some((heads, golden))
}

fn values(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

fn golden_h(golden: &serde_json::Value, device: &Device) -> Tensor<2> {
    let (shape, data) = testkit::tensor_f32(&golden["H"]);
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn check(heads: &MultiTaskHeads, golden: &serde_json::Value, what: &str) {
    let device = Device::flex();
    let out = heads.forward(golden_h(golden, &device));
    let (s_shape, s) = testkit::tensor_f32(&golden["S"]);
    let (c_shape, c) = testkit::tensor_f32(&golden["C"]);
    assert_eq!(out.scores.dims().to_vec(), s_shape);
    assert_eq!(out.logits.dims().to_vec(), c_shape);
    let (got_s, got_c) = (values(out.scores), values(out.logits));
    println!(
        "{what}: S max |Δ| = {:e}, C max |Δ| = {:e}",
        testkit::max_abs_diff(&got_s, &s),
        testkit::max_abs_diff(&got_c, &c)
    );
    testkit::assert_close(&format!("{what} S"), &got_s, &s, 1e-5, 0.0);
    testkit::assert_close(&format!("{what} C"), &got_c, &c, 1e-5, 0.0);
}

#[test]
fn reference_heads_give_golden_s_and_c() {
    let Some((path, golden)) = fixtures("heads_golden") else {
        return;
    };
    let device = Device::flex();
    let heads = MultiTaskHeads::from_file(&path, &HeadsConfig::default(), 64, &device).unwrap();
    assert_eq!(heads.dims(), (64, 128, 5));
    check(&heads, &golden, "heads.safetensors");

    // Save with PyTorch names, load into fresh random heads: same outputs, same key set.
    let out = std::env::temp_dir().join(format!(
        "heads-roundtrip-{}.safetensors",
        std::process::id()
    ));
    heads.save_safetensors(&out).unwrap();
    let reloaded = MultiTaskHeads::from_file(&out, &HeadsConfig::default(), 64, &device).unwrap();
    check(&reloaded, &golden, "saved and reloaded");
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<(String, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("classification_head.ll1.bias".to_string(), vec![128]),
            ("classification_head.ll1.weight".to_string(), vec![128, 64]),
            ("classification_head.ll2.bias".to_string(), vec![5]),
            ("classification_head.ll2.weight".to_string(), vec![5, 128]),
            ("regression_head.ll1.bias".to_string(), vec![128]),
            ("regression_head.ll1.weight".to_string(), vec![128, 64]),
            ("regression_head.ll2.bias".to_string(), vec![1]),
            ("regression_head.ll2.weight".to_string(), vec![1, 128]),
        ]
    );
    let _ = std::fs::remove_file(out);
}

#[test]
fn wrong_width_and_missing_tensor_are_named() {
    let Some((path, _)) = fixtures("heads_broken") else {
        return;
    };
    let device = Device::flex();
    // Heads built for d = 32 cannot take the file's d = 64.
    let err = MultiTaskHeads::from_file(&path, &HeadsConfig::default(), 32, &device).unwrap_err();
    match &err {
        HeadsError::ShapeMismatch {
            tensor,
            expected,
            found,
            ..
        } => {
            assert!(tensor.ends_with("ll1.weight"), "{err}");
            assert_eq!(
                (expected.as_slice(), found.as_slice()),
                (&[128, 32][..], &[128, 64][..])
            );
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }

    // A file without the classification head.
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("classification_head.ll2.bias"))
        .collect();
    let partial =
        std::env::temp_dir().join(format!("heads-partial-{}.safetensors", std::process::id()));
    std::fs::write(&partial, safetensors::serialize(kept, None).unwrap()).unwrap();
    let err =
        MultiTaskHeads::from_file(&partial, &HeadsConfig::default(), 64, &device).unwrap_err();
    assert!(
        matches!(&err, HeadsError::MissingTensor { tensor, .. } if tensor == "classification_head.ll2.bias"),
        "{err}"
    );
    let _ = std::fs::remove_file(partial);

    let err = MultiTaskHeads::from_file(
        &std::env::temp_dir().join("no-such-heads.safetensors"),
        &HeadsConfig::default(),
        64,
        &device,
    )
    .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}
