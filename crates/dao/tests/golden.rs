//! DAO's loss math against the PyTorch reference: `fixtures/dao_golden.json` (three cases:
//! values, gradients, one Adam step) and the DAO-only part of `fixtures/golden.json`'s
//! `dao_step` (the encoder-dependent parts are the lead's tests).

#[path = "../../../tests/src/lib.rs"]
#[allow(dead_code)]
mod testkit;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData};
use dao::{
    dao_objective, grad_balance, l2_norm, AlphaBeta, ClassTargets, Dao, DaoConfig, DaoModule,
    LossWeighting, TaskOutputs,
};
use serde_json::Value;

const REL: f32 = 1e-5;
const ABS: f32 = 1e-7;

fn device() -> Device {
    Device::flex().autodiff()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

/// A fixture tensor as a burn tensor of rank D.
fn tensor<const D: usize>(value: &Value, device: &Device) -> Tensor<D> {
    let (shape, data) = testkit::tensor_f32(value);
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn flat(value: &Value) -> Vec<f32> {
    testkit::tensor_f32(value).1
}

/// A PyTorch Linear (`weight [out, in]`) as burn's (`[in, out]`).
fn linear(weight: &Value, bias: &Value, device: &Device) -> Linear {
    Linear {
        weight: Param::from_tensor(tensor::<2>(weight, device).transpose()),
        bias: Some(Param::from_tensor(tensor::<1>(bias, device))),
    }
}

fn dao_module(params: &Value, device: &Device) -> DaoModule {
    DaoModule {
        alpha_beta: AlphaBeta::from_raw(
            testkit::scalar(&params["a_raw"]),
            testkit::scalar(&params["b_raw"]),
            true,
            device,
        ),
        fc1: linear(&params["fc1.weight"], &params["fc1.bias"], device),
        fc2: linear(&params["fc2.weight"], &params["fc2.bias"], device),
    }
}

/// Checks and returns the largest |Δ|, for the report.
fn close(what: &str, actual: &[f32], expected: &[f32]) -> f32 {
    testkit::assert_close(what, actual, expected, ABS, REL);
    testkit::max_abs_diff(actual, expected)
}

fn labels(value: &Value, device: &Device) -> Tensor<1, Int> {
    let (_, data) = testkit::tensor_i64(value);
    Tensor::from_data(
        TensorData::new(data, [testkit::tensor_i64(value).0[0]]),
        device,
    )
}

/// L_r = mean((S − y)²) with S `[n]` a leaf that keeps its gradient.
fn mse(s: &Tensor<1>, y: &Tensor<1>) -> Tensor<1> {
    (s.clone() - y.clone()).square().mean()
}

#[test]
fn dao_golden_cases() {
    let Some(path) = testkit::shared_file("dao_golden_cases", "fixtures/dao_golden.json") else {
        return;
    };
    let golden = testkit::read_json(&path);
    let cases = golden["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 3);
    let adam = &golden["adam"];
    assert_eq!(
        testkit::scalar(&adam["lr"]),
        1e-3,
        "fixture's DAO lr is the spec's"
    );
    let mut worst = 0.0f32;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let device = device();
        let inputs = &case["inputs"];
        let s = tensor::<1>(&inputs["S"], &device).require_grad();
        let y = tensor::<1>(&inputs["y"], &device);
        let c = tensor::<2>(&inputs["C"], &device).require_grad();
        let z = labels(&case["labels"], &device);
        let outputs = TaskOutputs {
            regression_loss: mse(&s, &y),
            logits: c.clone(),
            labels: z.clone(),
        };
        let (g_r, g_c) = (
            testkit::scalar(&inputs["g_r_norm"]),
            testkit::scalar(&inputs["g_c_norm"]),
        );

        // Intermediates through the public step functions.
        let targets = ClassTargets::new(&z, &c).unwrap();
        let counts: Vec<f32> = targets.counts.iter().map(|&n| n as f32).collect();
        worst = worst.max(close(
            &format!("{name}.counts"),
            &counts,
            &flat(&case["counts"]),
        ));
        worst = worst.max(close(
            &format!("{name}.p"),
            &targets.shares(),
            &flat(&case["p"]),
        ));
        let lambdas = grad_balance(&[g_r, g_c]).unwrap();
        let module = dao_module(&golden["dao_params"], &device);
        let terms =
            dao_objective(&module, outputs.clone(), &targets, [lambdas[0], lambdas[1]]).unwrap();
        for (what, actual, expected) in [
            ("L_ck", values(terms.l_ck.clone()), flat(&case["L_ck"])),
            ("v", values(terms.v.clone()), flat(&case["v"])),
            (
                "dao_input",
                values(terms.u.clone()),
                flat(&case["dao_input"]),
            ),
            ("h", values(terms.network.hidden.clone()), flat(&case["h"])),
            ("s", values(terms.network.scores.clone()), flat(&case["s"])),
            (
                "lambdas",
                lambdas.clone(),
                vec![
                    testkit::scalar(&case["lambda_r"]),
                    testkit::scalar(&case["lambda_c"]),
                ],
            ),
        ] {
            worst = worst.max(close(&format!("{name}.{what}"), &actual, &expected));
        }

        // α = β = 0 (raw a → −∞ is not reachable; build the tensors directly): L_imb = L_c.
        let zero = Tensor::<1>::zeros([1], &device);
        let plain = dao::imbalance_loss(terms.l_ck.clone(), &targets, zero.clone(), zero);
        worst = worst.max(close(
            &format!("{name}.L_imb_alpha0_beta0"),
            &values(plain.loss),
            &[testkit::scalar(&case["L_imb_alpha0_beta0"])],
        ));

        // The strategy itself: diagnostics, gradients, one Adam step.
        let mut strategy = Dao::with_module(DaoConfig::default(), module).unwrap();
        let step = strategy.weigh_with_norms(outputs, g_r, g_c).unwrap();
        let d = &step.diagnostics;
        let pairs = [
            ("alpha", d.alpha.unwrap(), "alpha"),
            ("beta", d.beta.unwrap(), "beta"),
            ("L_r", d.l_r, "L_r"),
            ("L_c", d.l_c, "L_c"),
            ("L_imb", d.l_imb.unwrap(), "L_imb"),
            ("lambda_r", d.lambda_r.unwrap(), "lambda_r"),
            ("lambda_c", d.lambda_c.unwrap(), "lambda_c"),
            ("w_r", d.w_r.unwrap(), "w_r"),
            ("w_c", d.w_c.unwrap(), "w_c"),
            ("loss", d.loss, "loss"),
        ];
        for (what, actual, key) in pairs {
            worst = worst.max(close(
                &format!("{name}.{what}"),
                &[actual],
                &[testkit::scalar(&case[key])],
            ));
        }
        worst = worst.max(close(
            &format!("{name}.p (diag)"),
            d.p.as_ref().unwrap(),
            &flat(&case["p"]),
        ));
        worst = worst.max(close(
            &format!("{name}.v (diag)"),
            d.v.as_ref().unwrap(),
            &flat(&case["v"]),
        ));
        worst = worst.max(close(
            &format!("{name}.loss tensor"),
            &values(step.loss.clone()),
            &[d.loss],
        ));

        let grads = step.loss.backward();
        let expected = &case["grads"];
        let m = strategy.module();
        let grad_of = |p: &Param<Tensor<1>>| values(p.val().grad(&grads).expect("gradient"));
        let grad2 =
            |p: &Param<Tensor<2>>| values(p.val().grad(&grads).expect("gradient").transpose());
        let checks = [
            (
                "a_raw",
                grad_of(&m.alpha_beta.a_raw),
                vec![testkit::scalar(&expected["a_raw"])],
            ),
            (
                "b_raw",
                grad_of(&m.alpha_beta.b_raw),
                vec![testkit::scalar(&expected["b_raw"])],
            ),
            (
                "fc1.weight",
                grad2(&m.fc1.weight),
                flat(&expected["fc1.weight"]),
            ),
            (
                "fc1.bias",
                grad_of(m.fc1.bias.as_ref().unwrap()),
                flat(&expected["fc1.bias"]),
            ),
            (
                "fc2.weight",
                grad2(&m.fc2.weight),
                flat(&expected["fc2.weight"]),
            ),
            (
                "fc2.bias",
                grad_of(m.fc2.bias.as_ref().unwrap()),
                flat(&expected["fc2.bias"]),
            ),
            ("S", values(s.grad(&grads).unwrap()), flat(&expected["S"])),
            ("C", values(c.grad(&grads).unwrap()), flat(&expected["C"])),
        ];
        for (what, actual, expected) in checks {
            worst = worst.max(close(&format!("{name}.grad.{what}"), &actual, &expected));
        }

        strategy.update(&grads);
        // The model's gradients are still there after the strategy's update.
        assert!(
            c.grad(&grads).is_some(),
            "update must not remove the model's gradients"
        );
        let after = &case["after_adam_step"];
        let m = strategy.module();
        let checks = [
            (
                "a_raw",
                values(m.alpha_beta.a_raw.val()),
                vec![testkit::scalar(&after["a_raw"])],
            ),
            (
                "b_raw",
                values(m.alpha_beta.b_raw.val()),
                vec![testkit::scalar(&after["b_raw"])],
            ),
            (
                "fc1.weight",
                values(m.fc1.weight.val().transpose()),
                flat(&after["fc1.weight"]),
            ),
            (
                "fc1.bias",
                values(m.fc1.bias.as_ref().unwrap().val()),
                flat(&after["fc1.bias"]),
            ),
            (
                "fc2.weight",
                values(m.fc2.weight.val().transpose()),
                flat(&after["fc2.weight"]),
            ),
            (
                "fc2.bias",
                values(m.fc2.bias.as_ref().unwrap().val()),
                flat(&after["fc2.bias"]),
            ),
        ];
        for (what, actual, expected) in checks {
            worst = worst.max(close(
                &format!("{name}.after_adam_step.{what}"),
                &actual,
                &expected,
            ));
        }
    }
    println!("dao_golden.json: max |Δ| over all checked values = {worst:e}");
}

#[test]
fn golden_dao_step_math() {
    let Some(path) = testkit::shared_file("golden_dao_step_math", "fixtures/golden.json") else {
        return;
    };
    let golden = testkit::read_json(&path);
    let step = &golden["dao_step"];
    let device = device();
    let s = tensor::<2>(&step["S"], &device)
        .reshape([-1])
        .require_grad();
    let y = tensor::<1>(&step["y"], &device);
    let c = tensor::<2>(&step["C"], &device).require_grad();
    let z = labels(&step["labels"], &device);

    // Step 1 from the given gradients: their norms, then λ.
    let g_r_norm = values(l2_norm(tensor::<2>(&step["g_r"], &device)))[0];
    let g_c_norm = values(l2_norm(tensor::<2>(&step["g_c"], &device)))[0];
    let mut worst = close(
        "g_r_norm",
        &[g_r_norm],
        &[testkit::scalar(&step["g_r_norm"])],
    );
    worst = worst.max(close(
        "g_c_norm",
        &[g_c_norm],
        &[testkit::scalar(&step["g_c_norm"])],
    ));

    let module = dao_module(&step["dao_params"], &device);
    let mut strategy = Dao::with_module(DaoConfig::default(), module).unwrap();
    let outputs = TaskOutputs {
        regression_loss: mse(&s, &y),
        logits: c.clone(),
        labels: z,
    };
    let out = strategy
        .weigh_with_norms(outputs, g_r_norm, g_c_norm)
        .unwrap();
    let d = &out.diagnostics;
    for (what, actual) in [
        ("L_r", d.l_r),
        ("L_c", d.l_c),
        ("lambda_r", d.lambda_r.unwrap()),
        ("lambda_c", d.lambda_c.unwrap()),
        ("L_imb", d.l_imb.unwrap()),
        ("w_r", d.w_r.unwrap()),
        ("w_c", d.w_c.unwrap()),
        ("loss", d.loss),
    ] {
        worst = worst.max(close(what, &[actual], &[testkit::scalar(&step[what])]));
    }
    let grads = out.loss.backward();
    let m = strategy.module();
    let a = values(m.alpha_beta.a_raw.val().grad(&grads).unwrap());
    let b = values(m.alpha_beta.b_raw.val().grad(&grads).unwrap());
    worst = worst.max(close(
        "grad_a_raw",
        &a,
        &[testkit::scalar(&step["grad_a_raw"])],
    ));
    worst = worst.max(close(
        "grad_b_raw",
        &b,
        &[testkit::scalar(&step["grad_b_raw"])],
    ));
    println!("golden.json dao_step (DAO math): max |Δ| = {worst:e}");
}
