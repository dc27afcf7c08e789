//! One whole DAO training step through tiny-roberta and the heads, against the PyTorch
//! reference (`fixtures/golden.json` `dao_step`: eval mode, representation norms): the loss and
//! its parts, λ and w from gradients measured through the real heads, ∂L/∂H, every head
//! gradient, the gradient norm of every encoder tensor, and the heads after one AdamW step; then
//! the task gradients' norms over every encoder parameter (`grad_norm_wrt = "shared-parameters"`).

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::Linear;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use dao::{
    AlphaBeta, Dao, DaoConfig, DaoModule, GradNormWrt, LossWeighting, SharedModule, StepInput,
    TaskOutputs,
};
use encoder::{load_weights, Encoder, EncoderConfig, EncoderInput};
use heads::{HeadsConfig, MultiTaskHeads};
use serde_json::Value;
use testkit::{assert_close, read_json, scalar, shared_file, tensor_f32, tensor_i64};

fn tensor<const D: usize>(value: &Value, device: &Device) -> Tensor<D> {
    let (shape, data) = tensor_f32(value);
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn int2(value: &Value, device: &Device) -> Tensor<2, Int> {
    let (shape, data) = tensor_i64(value);
    Tensor::from_data(TensorData::new(data, [shape[0], shape[1]]), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec().unwrap()
}

fn linear(weight: &Value, bias: &Value, device: &Device) -> Linear {
    Linear {
        weight: Param::from_tensor(tensor::<2>(weight, device).transpose()),
        bias: Some(Param::from_tensor(tensor::<1>(bias, device))),
    }
}

/// Every float parameter's gradient norm, keyed by its module path.
struct GradNorms<'a> {
    grads: &'a burn::tensor::Gradients,
    path: Vec<String>,
    norms: HashMap<String, f32>,
}

impl ModuleVisitor for GradNorms<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = param.val().grad(self.grads) {
            let norm = values(grad.square().sum().sqrt())[0];
            self.norms.insert(self.path.join("."), norm);
        }
    }
}

/// Our module path as the checkpoint's name (the inverse of the loader's key table).
fn checkpoint_name(path: &str) -> String {
    let name = path
        .replace(".self_attention.", ".self.")
        .replace(".base.", ".")
        .replace("layer_norm.gamma", "LayerNorm.weight")
        .replace("layer_norm.beta", "LayerNorm.bias");
    format!("roberta.{name}")
}

#[test]
fn dao_step_through_encoder_and_heads_matches_pytorch() {
    let Some(path) = shared_file(
        "dao_step_through_encoder_and_heads_matches_pytorch",
        "fixtures/golden.json",
    ) else {
        return;
    };
    let golden = read_json(&path);
    let fixtures = path.parent().unwrap();
    let step = &golden["dao_step"];
    let device = Device::flex().autodiff();

    // The fixture is eval mode: build the same weights with dropout off.
    let mut config = EncoderConfig::from_file(&fixtures.join("tiny-roberta/config.json")).unwrap();
    config.hidden_dropout_prob = 0.0;
    config.attention_probs_dropout_prob = 0.0;
    let mut encoder = Encoder::new(&config, &device);
    load_weights(
        &mut encoder,
        &fixtures.join("tiny-roberta/model.safetensors"),
    )
    .unwrap();
    let mut heads: MultiTaskHeads = HeadsConfig {
        dropout: 0.0,
        ..HeadsConfig::default()
    }
    .init(64, &device)
    .unwrap();
    heads
        .load_safetensors(&fixtures.join("heads.safetensors"))
        .unwrap();

    let ids = int2(&golden["input_ids"], &device);
    let input = EncoderInput {
        token_type_ids: ids.zeros_like(),
        attention_mask: int2(&golden["attention_mask"], &device),
        input_ids: ids,
    };
    let y = tensor::<1>(&step["y"], &device);
    let (_, labels) = tensor_i64(&step["labels"]);
    let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [4]), &device);
    let params = &step["dao_params"];
    let module = DaoModule {
        alpha_beta: AlphaBeta::from_raw(
            scalar(&params["a_raw"]),
            scalar(&params["b_raw"]),
            true,
            &device,
        ),
        fc1: linear(&params["fc1.weight"], &params["fc1.bias"], &device),
        fc2: linear(&params["fc2.weight"], &params["fc2.bias"], &device),
    };
    let mut dao = Dao::with_module(DaoConfig::default(), module.clone()).unwrap();

    let h = encoder.first_token(input.clone());
    let mut task = |h: Tensor<2>| {
        let out = heads.forward_with_masks(h, None);
        let diff = out.scores.reshape([4]) - y.clone();
        TaskOutputs {
            regression_loss: (diff.clone() * diff).mean(),
            logits: out.logits,
            labels: labels.clone(),
        }
    };
    let weighted = dao.weigh(h.clone(), &mut task).unwrap();
    let d = weighted.diagnostics.clone();
    let mut checks: Vec<(&str, f32)> = vec![
        ("L_r", d.l_r),
        ("L_c", d.l_c),
        ("g_r_norm", d.g_r_norm.unwrap()),
        ("g_c_norm", d.g_c_norm.unwrap()),
        ("lambda_r", d.lambda_r.unwrap()),
        ("lambda_c", d.lambda_c.unwrap()),
        ("L_imb", d.l_imb.unwrap()),
        ("w_r", d.w_r.unwrap()),
        ("w_c", d.w_c.unwrap()),
        ("loss", d.loss),
    ];
    let grads = weighted.loss.backward();
    let m = dao.module();
    checks.push((
        "grad_a_raw",
        values(m.alpha_beta.a_raw.val().grad(&grads).unwrap())[0],
    ));
    checks.push((
        "grad_b_raw",
        values(m.alpha_beta.b_raw.val().grad(&grads).unwrap())[0],
    ));
    for (name, actual) in checks {
        assert_close(name, &[actual], &[scalar(&step[name])], 1e-6, 1e-5);
    }

    // Every encoder tensor's gradient norm (key biases: true gradient 0, rounding noise).
    let mut visitor = GradNorms {
        grads: &grads,
        path: Vec::new(),
        norms: HashMap::new(),
    };
    encoder.visit(&mut visitor);
    let expected = step["grad_norms"].as_object().unwrap();
    let mut compared = 0;
    for (path, norm) in &visitor.norms {
        let name = checkpoint_name(path);
        let want = expected
            .get(&name)
            .unwrap_or_else(|| panic!("{name} has no reference"))
            .as_f64()
            .unwrap() as f32;
        assert_close(&name, &[*norm], &[want], 1e-6, 2e-4);
        compared += 1;
    }
    assert_eq!(compared, 37, "every encoder tensor has a gradient");

    // Head gradients in full, then one AdamW step (the fixture uses the base lr 1e-5).
    let head_grads = &step["head_grads"];
    let head_tensors = [
        ("regression_head.ll1", &heads.regression_head.ll1),
        ("regression_head.ll2", &heads.regression_head.ll2),
        ("classification_head.ll1", &heads.classification_head.ll1),
        ("classification_head.ll2", &heads.classification_head.ll2),
    ];
    for (name, layer) in head_tensors {
        let w = values(layer.weight.val().grad(&grads).unwrap().transpose());
        assert_close(
            &format!("{name}.weight grad"),
            &w,
            &tensor_f32(&head_grads[format!("{name}.weight")]).1,
            1e-7,
            1e-4,
        );
        let b = values(layer.bias.as_ref().unwrap().val().grad(&grads).unwrap());
        assert_close(
            &format!("{name}.bias grad"),
            &b,
            &tensor_f32(&head_grads[format!("{name}.bias")]).1,
            1e-7,
            1e-4,
        );
    }
    // ∂L_mtl/∂H, on a detached copy of H with the same heads and λ, w.
    let h_leaf = h.detach().require_grad();
    let weighted = dao.weigh(h_leaf.clone(), &mut task).unwrap();
    let grads_h = weighted.loss.backward();
    let dl_dh = values(h_leaf.grad(&grads_h).unwrap());
    assert_close(
        "dloss_dH",
        &dl_dh,
        &tensor_f32(&step["dloss_dH"]).1,
        1e-7,
        1e-4,
    );

    // DAO-SPEC step 1's other choice: ‖∇L_r‖, ‖∇L_c‖ over all 37 encoder tensors, through a
    // fresh forward of the encoder (eval mode, so the same function as the loss's).
    let config = DaoConfig {
        grad_norm_wrt: GradNormWrt::SharedParameters,
        ..DaoConfig::default()
    };
    let mut dao = Dao::with_module(config, module).unwrap();
    let mut shared = SharedModule {
        module: &encoder,
        forward: |encoder: &Encoder| encoder.first_token(input.clone()),
    };
    let weighted = dao
        .weigh_step(StepInput {
            representation: encoder.first_token(input.clone()),
            heads: &mut task,
            shared: Some(&mut shared),
        })
        .unwrap();
    let d = weighted.diagnostics;
    let (g_r, g_c) = (
        scalar(&step["g_r_norm_shared_parameters"]),
        scalar(&step["g_c_norm_shared_parameters"]),
    );
    assert_close(
        "g_r_norm (shared parameters)",
        &[d.g_r_norm.unwrap()],
        &[g_r],
        1e-6,
        1e-5,
    );
    assert_close(
        "g_c_norm (shared parameters)",
        &[d.g_c_norm.unwrap()],
        &[g_c],
        1e-6,
        1e-5,
    );
    assert_close(
        "lambda_r (shared parameters)",
        &[d.lambda_r.unwrap()],
        &[g_c / (g_r + g_c)],
        1e-6,
        1e-5,
    );

    let grads = GradientsParams::from_grads(grads, &heads);
    // The trainer's own AdamW (fused on the CPU) against torch.optim.AdamW.
    let mut adamw = trainer::AdamW::new(trainer::AdamWSettings::default());
    let heads = adamw.step(1e-5, heads, grads).valid();
    let after = &step["heads_after_adamw_step"];
    for (name, layer) in [
        ("regression_head.ll1", &heads.regression_head.ll1),
        ("regression_head.ll2", &heads.regression_head.ll2),
        ("classification_head.ll1", &heads.classification_head.ll1),
        ("classification_head.ll2", &heads.classification_head.ll2),
    ] {
        let w = values(layer.weight.val().transpose());
        assert_close(
            &format!("{name}.weight after AdamW"),
            &w,
            &tensor_f32(&after[format!("{name}.weight")]).1,
            1e-7,
            1e-5,
        );
        let b = values(layer.bias.as_ref().unwrap().val());
        assert_close(
            &format!("{name}.bias after AdamW"),
            &b,
            &tensor_f32(&after[format!("{name}.bias")]).1,
            1e-7,
            1e-5,
        );
    }
}
