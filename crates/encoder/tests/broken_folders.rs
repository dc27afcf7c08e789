//! Broken model folders: each is an error naming what is wrong, never a panic.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use encoder::{EncoderError, ModelFolder};
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;

/// A copy of the tiny fixture folder (config, tokenizer, safetensors) in a fresh temp dir.
fn copy_fixture(test: &str) -> Option<(PathBuf, PathBuf)> {
    let source = testkit::shared_file(test, "fixtures/tiny-roberta")?;
    let dir = std::env::temp_dir().join(format!("encoder-broken-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(source.join(name), dir.join(name)).unwrap();
    }
    Some((source, dir))
}

/// Rewrites `model.safetensors` in `dir` after `edit` changed the (name, shape, bytes) list.
fn rewrite_safetensors(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec(), view.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            (
                name.clone(),
                TensorView::new(safetensors::Dtype::F32, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join("model.safetensors"), out).unwrap();
}

/// The message of a checkpoint error (the kind asserted) that loading `dir` gives.
fn checkpoint_message(dir: &Path) -> String {
    let error = load_error(dir);
    let message = error.to_string();
    assert!(
        matches!(error, EncoderError::Checkpoint { .. }),
        "{message}"
    );
    message
}

fn load_error(dir: &Path) -> EncoderError {
    match ModelFolder::open(dir, None).and_then(|f| f.load_encoder(&Device::flex())) {
        Ok(_) => panic!("{} loaded although it is broken", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn misshapen_tensor_names_it_and_both_shapes() {
    let Some((_, dir)) = copy_fixture("misshapen_tensor") else {
        return;
    };
    let name = "roberta.encoder.layer.1.intermediate.dense.weight";
    rewrite_safetensors(&dir, |tensors| {
        let t = tensors.iter_mut().find(|t| t.0 == name).unwrap();
        t.1 = vec![127, 64];
        t.2.truncate(127 * 64 * 4);
    });
    let error = load_error(&dir);
    let message = error.to_string();
    assert!(
        matches!(&error, EncoderError::ShapeMismatch { expected, found, .. }
            if expected == &vec![128, 64] && found == &vec![127, 64]),
        "{message}"
    );
    assert!(
        message.contains("encoder.layer.1.intermediate.dense.weight"),
        "{message}"
    );
    assert!(
        message.contains("[127, 64]") && message.contains("[128, 64]"),
        "{message}"
    );
}

#[test]
fn missing_layer_is_named() {
    let Some((_, dir)) = copy_fixture("missing_layer") else {
        return;
    };
    rewrite_safetensors(&dir, |tensors| {
        tensors.retain(|t| !t.0.starts_with("roberta.encoder.layer.1.attention."));
    });
    let error = load_error(&dir);
    let message = error.to_string();
    assert!(
        matches!(error, EncoderError::MissingTensor { .. }),
        "{message}"
    );
    assert!(message.contains("encoder.layer.1.attention."), "{message}");
    assert!(message.contains("10 of 37 tensors missing"), "{message}");
}

/// config.json's layer count against the checkpoint's, both ways, before the encoder is built:
/// fewer would drop layers unnoticed, a huge count would be allocated first.
#[test]
fn layer_count_that_does_not_match_the_weights() {
    let Some((_, dir)) = copy_fixture("layer_count") else {
        return;
    };
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    assert!(text.contains("\"num_hidden_layers\": 2"), "{text}");
    for layers in ["1", "1000000000000"] {
        std::fs::write(
            dir.join("config.json"),
            text.replace(
                "\"num_hidden_layers\": 2",
                &format!("\"num_hidden_layers\": {layers}"),
            ),
        )
        .unwrap();
        let error = load_error(&dir);
        let message = error.to_string();
        assert!(matches!(error, EncoderError::Config { .. }), "{message}");
        assert!(
            message.contains(&format!("num_hidden_layers is {layers}"))
                && message.contains("holds 2 layers")
                && message.contains("config.json"),
            "{message}"
        );
    }
    // The same file with a third layer's tensors added (a copy of layer 1's).
    std::fs::write(dir.join("config.json"), &text).unwrap();
    rewrite_safetensors(&dir, |tensors| {
        let extra: Vec<_> = tensors
            .iter()
            .filter(|t| t.0.starts_with("roberta.encoder.layer.1."))
            .map(|t| {
                (
                    t.0.replace("layer.1.", "layer.2."),
                    t.1.clone(),
                    t.2.clone(),
                )
            })
            .collect();
        tensors.extend(extra);
    });
    let message = load_error(&dir).to_string();
    assert!(
        message.contains("num_hidden_layers is 2") && message.contains("holds 3 layers"),
        "{message}"
    );
}

/// `roberta.X` and `bert.X` (or `X`) name the same tensor: which one was loaded would depend
/// on a hash order.
#[test]
fn two_names_for_one_tensor() {
    let Some((_, dir)) = copy_fixture("two_names") else {
        return;
    };
    let name = "roberta.encoder.layer.1.attention.self.query.weight";
    for alias in [
        "bert.encoder.layer.1.attention.self.query.weight",
        "encoder.layer.1.attention.self.query.weight",
    ] {
        rewrite_safetensors(&dir, |tensors| {
            tensors.retain(|t| !t.0.starts_with("bert.") && !t.0.starts_with("encoder."));
            let copy = tensors.iter().find(|t| t.0 == name).unwrap().clone();
            tensors.push((alias.to_string(), copy.1, vec![0; copy.2.len()]));
        });
        let message = checkpoint_message(&dir);
        assert!(
            message.contains(name) && message.contains(alias) && message.contains("keep one"),
            "{message}"
        );
    }
}

#[test]
fn non_finite_weight_is_named() {
    let Some((_, dir)) = copy_fixture("non_finite") else {
        return;
    };
    for bad in [f32::NAN, f32::INFINITY] {
        rewrite_safetensors(&dir, |tensors| {
            let t = tensors
                .iter_mut()
                .find(|t| t.0 == "roberta.encoder.layer.0.output.dense.bias")
                .unwrap();
            t.2[8..12].copy_from_slice(&bad.to_le_bytes());
        });
        let message = checkpoint_message(&dir);
        assert!(
            message.contains("`encoder.layer.0.output.dense.bias`")
                && message.contains("NaN or infinite"),
            "{message}"
        );
    }
}

/// A tokenizer with ids past the embedding table (another model's) is refused at load, not
/// left to index out of the table on the first batch.
#[test]
fn tokenizer_of_a_larger_vocabulary() {
    let Some((_, dir)) = copy_fixture("tokenizer_vocabulary") else {
        return;
    };
    let mut config = encoder::EncoderConfig::from_file(&dir.join("config.json")).unwrap();
    let tokenizer = dir.join("tokenizer.json");
    assert!(encoder::TextTokenizer::from_file(&tokenizer, &config, 32).is_ok());
    config.vocab_size = 500;
    let error = encoder::TextTokenizer::from_file(&tokenizer, &config, 32).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, EncoderError::Tokenizer { .. }), "{message}");
    assert!(
        message.contains("tokenizer.json")
            && message.contains("has id 999")
            && message.contains("vocab_size 500"),
        "{message}"
    );
}

#[test]
fn config_that_is_not_json() {
    let Some((_, dir)) = copy_fixture("config_not_json") else {
        return;
    };
    std::fs::write(dir.join("config.json"), "{ \"hidden_size\": 64,, }").unwrap();
    let message = load_error(&dir).to_string();
    assert!(
        message.contains("config.json") && message.contains("invalid model config"),
        "{message}"
    );
}

#[test]
fn config_with_unsupported_model_type() {
    let Some((_, dir)) = copy_fixture("config_model_type") else {
        return;
    };
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        text.replace("\"roberta\"", "\"gpt2\""),
    )
    .unwrap();
    let message = load_error(&dir).to_string();
    assert!(
        message.contains("model_type \"gpt2\" is not supported"),
        "{message}"
    );
}

#[test]
fn no_weights_file() {
    let Some((_, dir)) = copy_fixture("no_weights") else {
        return;
    };
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let error = load_error(&dir);
    assert!(matches!(error, EncoderError::NoWeights { .. }), "{error}");
    assert!(error.to_string().contains("model.safetensors"), "{error}");
}

#[test]
fn no_tokenizer_json() {
    let Some((_, dir)) = copy_fixture("no_tokenizer") else {
        return;
    };
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let error = load_error(&dir);
    assert!(
        error.to_string().contains("tokenizer.json not found"),
        "{error}"
    );
}

#[test]
fn truncated_safetensors() {
    let Some((_, dir)) = copy_fixture("truncated_safetensors") else {
        return;
    };
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let error = load_error(&dir);
    assert!(matches!(error, EncoderError::Checkpoint { .. }), "{error}");
    assert!(
        error.to_string().contains("model.safetensors")
            && error
                .to_string()
                .contains("not a readable safetensors file"),
        "{error}"
    );
}

#[test]
fn truncated_pytorch_bin() {
    let Some((source, dir)) = copy_fixture("truncated_bin") else {
        return;
    };
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let bytes = std::fs::read(source.join("pytorch_model.bin")).unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), &bytes[..bytes.len() * 2 / 3]).unwrap();
    let error = load_error(&dir);
    assert!(matches!(error, EncoderError::Checkpoint { .. }), "{error}");
    assert!(error.to_string().contains("pytorch_model.bin"), "{error}");
}

/// An integer tensor where a weight belongs: named as the checkpoint names it.
#[test]
fn integer_weight_is_named() {
    let Some((_, dir)) = copy_fixture("integer_weight") else {
        return;
    };
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let name = "roberta.embeddings.LayerNorm.weight";
    let ones: Vec<u8> = (0..64).flat_map(|_| 1i64.to_le_bytes()).collect();
    let views: Vec<(String, TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(key, view)| {
            if key == name {
                let integer = TensorView::new(safetensors::Dtype::I64, vec![64], &ones).unwrap();
                (key, integer)
            } else {
                (key, view)
            }
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let message = checkpoint_message(&dir);
    assert!(
        message.contains("`embeddings.LayerNorm.weight` is stored as I64")
            && message.contains("must be floats"),
        "{message}"
    );
}

/// Entries that exist but are not what they should be say so, rather than "not found".
#[test]
fn a_file_for_the_folder_and_a_folder_for_the_tokenizer() {
    let Some((_, dir)) = copy_fixture("wrong_kinds") else {
        return;
    };
    let error = ModelFolder::open(&dir.join("config.json"), None).unwrap_err();
    assert!(error.to_string().contains("not a folder"), "{error}");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    std::fs::create_dir(dir.join("tokenizer.json")).unwrap();
    let error = load_error(&dir);
    assert!(
        error
            .to_string()
            .contains("tokenizer.json is not a regular file"),
        "{error}"
    );
}
