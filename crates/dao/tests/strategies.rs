//! Every strategy on a hand-computed case, DAO's edge cases, and the gradient the encoder
//! receives through DAO (representation and shared-parameters modes) against an independent
//! computation.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use dao::{
    Constant, ConstantConfig, Dao, DaoConfig, DaoError, DwaConfig, DynamicWeightAverage,
    GradBalanceOnly, GradBalanceOnlyConfig, GradNorm, GradNormConfig, GradNormWrt, ImbalanceOnly,
    ImbalanceOnlyConfig, LossWeighting, RegressionOnly, SharedModule, StepInput, StrategyConfig,
    TaskOutputs, Uncertainty, UncertaintyConfig,
};

fn device() -> Device {
    Device::flex().autodiff()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

fn assert_near(what: &str, got: f32, want: f64) {
    let tol = 1e-6 + 1e-5 * want.abs();
    assert!(
        (f64::from(got) - want).abs() <= tol,
        "{what}: got {got}, expected {want}"
    );
}

// ---------------------------------------------------------------------------------------------
// The hand-computed case. H = [[0, 0, 0, 0, 0], [ln 3, 0, 0, 0, 0]], labels [0, 1].
// Heads: logits C = H; L_r = ¼ Σ H² = ¼ (ln 3)² = 0.30173724.
// L_c: sample 0 has uniform softmax, CE = ln 5; sample 1 has softmax [3/7, 1/7, …], its label 1
//   gets 1/7, CE = ln 7; L_c = (ln 5 + ln 7) / 2 = 1.77767403.
// ‖∂L_r/∂H‖ = ‖½ H‖ = ½ ln 3 = 0.54930614.
// ∂L_c/∂H = (softmax − onehot) / 2: rows (−0.4, 0.1, 0.1, 0.1, 0.1) and (3, −6, 1, 1, 1)/14;
//   ‖·‖² = 0.2 + 48/196, ‖∂L_c/∂H‖ = 0.66700672.
// p = [½, ½, 0, 0, 0]; with α = 0.1, β = ½: v = ½^(−½) = √2 for classes 0, 1 and
//   L_imb = √2 (½ ln 5 − 0.1 ln ½ + ½ ln 7 − 0.1 ln ½) = √2 (L_c + 0.2 ln 2) = 2.71006235.
// ---------------------------------------------------------------------------------------------
const L_R: f64 = 0.301_737_24;
const L_C: f64 = 1.777_674_03;
const G_R: f64 = 0.549_306_14;
const G_C: f64 = 0.667_006_72;
const L_IMB: f64 = 2.710_062_35;

fn hand_representation(device: &Device) -> Tensor<2> {
    let ln3 = 3f32.ln();
    Tensor::<2>::from_data(
        TensorData::new(
            vec![0.0, 0.0, 0.0, 0.0, 0.0, ln3, 0.0, 0.0, 0.0, 0.0],
            [2, 5],
        ),
        device,
    )
    .require_grad()
}

fn hand_heads(device: &Device) -> impl FnMut(Tensor<2>) -> TaskOutputs {
    let labels = Tensor::<1, Int>::from_ints([0, 1], device);
    move |h: Tensor<2>| TaskOutputs {
        regression_loss: h.clone().square().sum().mul_scalar(0.25),
        logits: h,
        labels: labels.clone(),
    }
}

fn run_hand_case(strategy: &mut dyn LossWeighting) -> dao::Weighted {
    let device = device();
    let h = hand_representation(&device);
    let mut heads = hand_heads(&device);
    strategy.weigh(h, &mut heads).unwrap()
}

#[test]
fn regression_only_is_l_r() {
    let out = run_hand_case(&mut RegressionOnly);
    assert_near("loss", out.diagnostics.loss, L_R);
    assert_near("L_c (logged)", out.diagnostics.l_c, L_C);
    assert_eq!(out.diagnostics.lambda_r, None);
}

#[test]
fn constant_weights() {
    // 0.9 L_r + 0.1 L_c = 0.27156352 + 0.17776740 = 0.44933092.
    let mut s = Constant::new(ConstantConfig { w_c: 0.1 }).unwrap();
    let out = run_hand_case(&mut s);
    assert_near("loss", out.diagnostics.loss, 0.449_330_92);
    assert_near("loss tensor", values(out.loss)[0], 0.449_330_92);
    assert_eq!(
        (out.diagnostics.w_r, out.diagnostics.w_c),
        (Some(0.9), Some(0.1))
    );
}

#[test]
fn uncertainty_weighting_at_init_and_after_one_step() {
    // s = 0: L = ½ L_r + L_c + 0 = 0.15086862 + 1.77767403 = 1.92854265.
    let device = device();
    let mut s = Uncertainty::new(UncertaintyConfig { lr: 1e-3 }, &device).unwrap();
    let out = run_hand_case(&mut s);
    assert_near("loss", out.diagnostics.loss, 1.928_542_65);
    assert_eq!(
        (out.diagnostics.w_r, out.diagnostics.w_c),
        (Some(0.5), Some(1.0))
    );
    // ∂L/∂s_r = −½ e^(−s_r) L_r + ½ = 0.349 > 0, ∂L/∂s_c = −L_c + ½ < 0; Adam's first step moves
    // each by lr against its gradient's sign: s = [−0.001, +0.001].
    let grads = out.loss.backward();
    s.update(&grads);
    let after = values(s.log_variances().log_var.val());
    assert_near("s_r", after[0], -1e-3);
    assert_near("s_c", after[1], 1e-3);
}

#[test]
fn dynamic_weight_averaging_uses_the_two_previous_epochs() {
    let device = device();
    let mut s = DynamicWeightAverage::new(DwaConfig { temperature: 2.0 }).unwrap();
    let h = || hand_representation(&device);
    let labels = Tensor::<1, Int>::from_ints([0, 1], &device);
    let heads_with = |l_r: f32| {
        let labels = labels.clone();
        let device = device.clone();
        move |h: Tensor<2>| TaskOutputs {
            regression_loss: Tensor::from_floats([l_r], &device),
            logits: h,
            labels: labels.clone(),
        }
    };
    // Epoch 1: L_r 0.3 and 0.5 (mean 0.4); epoch 2: L_r 0.2; L_c = 1.77767403 throughout.
    for l_r in [0.3, 0.5] {
        let out = s.weigh(h(), &mut heads_with(l_r)).unwrap();
        assert_eq!(
            out.diagnostics.w_r,
            Some(1.0),
            "w = 1 in the first two epochs"
        );
    }
    s.end_epoch();
    s.weigh(h(), &mut heads_with(0.2)).unwrap();
    s.end_epoch();
    // r = [0.2 / 0.4, 1] = [0.5, 1]; w = 2 softmax(r / 2) = 2 [e^0.25, e^0.5] / (e^0.25 + e^0.5)
    //   = [0.87564700, 1.12435300]; loss at L_r = 0.2: 0.17512940 + 1.99873313 = 2.17386253.
    let out = s.weigh(h(), &mut heads_with(0.2)).unwrap();
    assert_near("w_r", out.diagnostics.w_r.unwrap(), 0.875_647_00);
    assert_near("w_c", out.diagnostics.w_c.unwrap(), 1.124_353_00);
    assert_near("loss", out.diagnostics.loss, 2.173_862_53);
    assert_eq!(s.history().len(), 2);
}

#[test]
fn gradnorm_one_weight_update() {
    // Step 1: w = [1, 1], L̃ = r = 1, G = [‖g_r‖, ‖g_c‖] = [0.54930614, 0.66700672],
    // Ḡ = 0.60815643 = target; ∂L_grad/∂w = [−‖g_r‖, +‖g_c‖];
    // w ← [1 + 0.025·0.54930614, 1 − 0.025·0.66700672] = [1.01373265, 0.98332483], renormalised
    // to sum 2: [1.01522631, 0.98477369]. Step 2 (same batch, L̃ = 1 again):
    // loss = 1.01522631 L_r + 0.98477369 L_c = 2.05693820.
    let mut s = GradNorm::new(GradNormConfig::default()).unwrap();
    let first = run_hand_case(&mut s);
    assert_near("g_r_norm", first.diagnostics.g_r_norm.unwrap(), G_R);
    assert_near("g_c_norm", first.diagnostics.g_c_norm.unwrap(), G_C);
    assert_near("first loss", first.diagnostics.loss, L_R + L_C);
    s.update(&first.loss.backward());
    let second = run_hand_case(&mut s);
    assert_near("w_r", second.diagnostics.w_r.unwrap(), 1.015_226_31);
    assert_near("w_c", second.diagnostics.w_c.unwrap(), 0.984_773_69);
    assert_near("loss", second.diagnostics.loss, 2.056_938_20);
}

#[test]
fn grad_balance_only_ablation() {
    // λ_r = ‖g_c‖ / (‖g_r‖ + ‖g_c‖) = 0.54838417, λ_c = 0.45161583;
    // loss = λ_r L_r + λ_c L_c = 0.96829366.
    let mut s = GradBalanceOnly::new(GradBalanceOnlyConfig::default());
    let out = run_hand_case(&mut s);
    assert_near("lambda_r", out.diagnostics.lambda_r.unwrap(), 0.548_384_17);
    assert_near("lambda_c", out.diagnostics.lambda_c.unwrap(), 0.451_615_83);
    assert_near("loss", out.diagnostics.loss, 0.968_293_66);
    assert_eq!(out.diagnostics.w_c, None);
}

#[test]
fn imbalance_only_ablation() {
    // 0.9 L_r + 0.1 L_imb = 0.27156352 + 0.27100624 = 0.54256975.
    let device = device();
    let mut s = ImbalanceOnly::new(ImbalanceOnlyConfig::default(), &device).unwrap();
    let out = run_hand_case(&mut s);
    let d = &out.diagnostics;
    assert_near("L_imb", d.l_imb.unwrap(), L_IMB);
    assert_near("loss", d.loss, 0.542_569_75);
    let sqrt2 = std::f64::consts::SQRT_2;
    for (k, want) in [sqrt2, sqrt2, 0.0, 0.0, 0.0].into_iter().enumerate() {
        assert_near(&format!("v[{k}]"), d.v.as_ref().unwrap()[k], want);
    }
}

#[test]
fn dao_on_the_hand_case() {
    // Norms measured w.r.t. H, λ as in the ablation above, L_imb as computed at the top.
    let device = device();
    let mut s = Dao::new(DaoConfig::default(), &device).unwrap();
    let out = run_hand_case(&mut s);
    let d = &out.diagnostics;
    assert_near("g_r_norm", d.g_r_norm.unwrap(), G_R);
    assert_near("g_c_norm", d.g_c_norm.unwrap(), G_C);
    assert_near("lambda_r", d.lambda_r.unwrap(), 0.548_384_17);
    assert_near("L_imb", d.l_imb.unwrap(), L_IMB);
    assert_near("alpha", d.alpha.unwrap(), 0.1);
    assert_near("beta", d.beta.unwrap(), 0.5);
    let (w_r, w_c) = (f64::from(d.w_r.unwrap()), f64::from(d.w_c.unwrap()));
    assert_near("w_r + w_c", (w_r + w_c) as f32, 1.0);
    // L_mtl = λ_r w_r L_r + λ_c w_c L_imb with the logged w.
    let want = 0.548_384_17 * w_r * L_R + 0.451_615_83 * w_c * L_IMB;
    assert_near("loss", d.loss, want);
}

/// A task whose loss does not depend on H has a measured gradient norm of 0 (not an error),
/// whether its logits are constants or a head stops the gradient (`h.detach()` before its own
/// tracked parameter): ‖g_c‖ = 0, so step 1 gives λ_r = 0, λ_c = 1.
#[test]
fn a_loss_that_does_not_depend_on_h_has_a_zero_norm() {
    let device = device();
    let constant = Tensor::<2>::from_floats(
        [[0.0, 1.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0, 0.0]],
        &device,
    );
    let weight = Tensor::<2>::ones([5, 5], &device).require_grad();
    let heads: [Box<dyn Fn(Tensor<2>) -> Tensor<2>>; 2] = [
        Box::new(move |_| constant.clone()),
        Box::new(move |h| h.detach().matmul(weight.clone())),
    ];
    for logits in heads {
        let mut s = Dao::new(DaoConfig::default(), &device).unwrap();
        let labels = Tensor::<1, Int>::from_ints([0, 1], &device);
        let mut heads = move |h: Tensor<2>| TaskOutputs {
            regression_loss: h.clone().square().sum().mul_scalar(0.25),
            logits: logits(h),
            labels: labels.clone(),
        };
        let d = s
            .weigh(hand_representation(&device), &mut heads)
            .unwrap()
            .diagnostics;
        assert_near("g_r_norm", d.g_r_norm.unwrap(), G_R);
        assert_eq!(d.g_c_norm, Some(0.0));
        assert_eq!((d.lambda_r, d.lambda_c), (Some(0.0), Some(1.0)));
    }
}

/// Heads computed from a representation captured outside the closure (the trunk's graph)
/// instead of the closure's argument: refused with an error, not a panic inside the strategy.
/// A trunk made of one tracked product keeps the case honest: its graph is what a second
/// backward would find consumed.
#[test]
fn heads_that_ignore_their_argument_are_refused() {
    let device = device();
    let labels = Tensor::<1, Int>::from_ints([0, 1], &device);
    for strategy in ["dao", "dao-grad-balance-only"] {
        let mut s = StrategyConfig::from_name(strategy)
            .unwrap()
            .build(&device)
            .unwrap();
        let weight = Tensor::<2>::ones([5, 5], &device).require_grad();
        let outer = hand_representation(&device).matmul(weight);
        let captured = outer.clone();
        let labels = labels.clone();
        let mut heads = move |_h: Tensor<2>| TaskOutputs {
            regression_loss: captured.clone().square().sum(),
            logits: captured.clone(),
            labels: labels.clone(),
        };
        let error = s.weigh(outer, &mut heads).map(|_| ()).unwrap_err();
        assert_eq!(error, DaoError::RepresentationUnused, "{strategy}");
        assert!(error.to_string().contains("the closure's argument"));
    }
}

/// The strategies that learn parameters of their own refuse a device without autodiff from
/// their constructors too, not only through [`StrategyConfig::build`].
#[test]
fn learning_strategies_refuse_a_device_without_autodiff() {
    let plain = Device::flex();
    let errors = [
        Dao::new(DaoConfig::default(), &plain).map(|_| ()),
        Uncertainty::new(UncertaintyConfig { lr: 1e-3 }, &plain).map(|_| ()),
        ImbalanceOnly::new(ImbalanceOnlyConfig::default(), &plain).map(|_| ()),
    ];
    let names = ["dao", "uncertainty", "dao-imbalance-only"];
    for (error, name) in errors.into_iter().zip(names) {
        assert_eq!(error.unwrap_err(), DaoError::NotAutodiffDevice(name));
    }
    for name in names {
        let built = StrategyConfig::from_name(name).unwrap().build(&plain);
        assert_eq!(
            built.map(|_| ()).unwrap_err(),
            DaoError::NotAutodiffDevice(name)
        );
    }
}

/// `learn_alpha_beta = false` (DAO-SPEC step 2's option): α, β get no gradient and stay at
/// their initial values through DAO's own updates, while the weighting network still learns.
#[test]
fn frozen_alpha_beta_stay_while_the_weight_network_learns() {
    let device = device();
    for learn in [true, false] {
        let config = DaoConfig {
            learn_alpha_beta: learn,
            ..DaoConfig::default()
        };
        let mut s = Dao::new(config, &device).unwrap();
        let fc1_before = values(s.module().fc1.weight.val());
        for _ in 0..3 {
            let out = run_hand_case(&mut s);
            let grads = out.loss.backward();
            let module = s.module();
            assert_eq!(
                module.alpha_beta.a_raw.val().grad(&grads).is_some(),
                learn,
                "learn_alpha_beta = {learn}"
            );
            assert!(module.fc1.weight.val().grad(&grads).is_some());
            s.update(&grads);
        }
        let d = run_hand_case(&mut s).diagnostics;
        let moved = |got: f32, init: f64| (f64::from(got) - init).abs() > 1e-4;
        assert_eq!(moved(d.alpha.unwrap(), 0.1), learn, "α, learn = {learn}");
        assert_eq!(moved(d.beta.unwrap(), 0.5), learn, "β, learn = {learn}");
        if !learn {
            assert_eq!(values(s.module().alpha_beta.alpha())[0], d.alpha.unwrap());
            assert_near("alpha", d.alpha.unwrap(), 0.1);
            assert_near("beta", d.beta.unwrap(), 0.5);
        }
        let fc1_after = values(s.module().fc1.weight.val());
        assert!(
            fc1_before
                .iter()
                .zip(&fc1_after)
                .any(|(a, b)| (a - b).abs() > 1e-5),
            "the weight network trains (learn = {learn})"
        );
    }
}

#[test]
fn alpha_beta_zero_is_plain_cross_entropy() {
    let device = device();
    let logits = hand_representation(&device);
    let labels = Tensor::<1, Int>::from_ints([0, 1], &device);
    let targets = dao::ClassTargets::new(&labels, &logits).unwrap();
    let ce = targets.cross_entropy(logits).unwrap();
    let l_ck = targets.per_class_cross_entropy(ce.per_sample);
    let zero = Tensor::<1>::zeros([1], &device);
    let l_imb = dao::imbalance_loss(l_ck, &targets, zero.clone(), zero).loss;
    assert_near("L_imb(α=β=0)", values(l_imb)[0], L_C);
    assert_near("L_c", values(ce.mean)[0], L_C);
}

#[test]
fn swapped_norms_swap_lambdas_and_zero_norms_give_half() {
    let device = device();
    let outputs = || {
        let h = hand_representation(&device);
        hand_heads(&device)(h)
    };
    let config = DaoConfig::default();
    let mut s = Dao::new(config, &device).unwrap();
    let a = s.weigh_with_norms(outputs(), 0.3, 1.7).unwrap().diagnostics;
    let b = s.weigh_with_norms(outputs(), 1.7, 0.3).unwrap().diagnostics;
    assert_eq!((a.lambda_r, a.lambda_c), (b.lambda_c, b.lambda_r));
    assert_near("lambda_r", a.lambda_r.unwrap(), 0.85);
    let z = s.weigh_with_norms(outputs(), 0.0, 0.0).unwrap().diagnostics;
    assert_eq!((z.lambda_r, z.lambda_c), (Some(0.5), Some(0.5)));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let device = device();
    let mut s = Dao::new(DaoConfig::default(), &device).unwrap();
    let h = hand_representation(&device);
    let bad_label = Tensor::<1, Int>::from_ints([0, 7], &device);
    let mut heads = |h: Tensor<2>| TaskOutputs {
        regression_loss: h.clone().sum(),
        logits: h,
        labels: bad_label.clone(),
    };
    assert!(matches!(
        s.weigh(h.clone(), &mut heads),
        Err(DaoError::LabelOutOfRange {
            label: 7,
            index: 1,
            num_classes: 5
        })
    ));
    let short = Tensor::<1, Int>::from_ints([0], &device);
    let mut heads = |h: Tensor<2>| TaskOutputs {
        regression_loss: h.clone().sum(),
        logits: h,
        labels: short.clone(),
    };
    assert!(matches!(
        s.weigh(h.clone(), &mut heads),
        Err(DaoError::Shape(_))
    ));
    let plain = Tensor::<2>::zeros([2, 5], &Device::flex());
    let mut heads = hand_heads(&device);
    assert!(matches!(
        s.weigh(plain, &mut heads),
        Err(DaoError::NotAutodiff)
    ));
    let error = s
        .weigh_with_norms(hand_heads(&device)(h), f32::NAN, 1.0)
        .unwrap_err();
    assert!(
        matches!(error, DaoError::InvalidNorm { task: 0, .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("task 0 (regression) is NaN"),
        "{error}"
    );
    // Strategies with parameters of their own, built where they could never learn: refused.
    // Those without any build anywhere.
    let plain_device = burn::tensor::Device::flex();
    for name in StrategyConfig::NAMES {
        let built = StrategyConfig::from_name(name)
            .unwrap()
            .build(&plain_device);
        let learns = ["dao", "uncertainty", "dao-imbalance-only"].contains(&name);
        match built {
            Err(DaoError::NotAutodiffDevice(refused)) => assert!(learns && refused == name),
            Ok(_) => assert!(!learns, "{name} built without autodiff"),
            Err(other) => panic!("{name}: {other}"),
        }
    }
    let shared = StrategyConfig::Dao(DaoConfig {
        grad_norm_wrt: GradNormWrt::SharedParameters,
        ..DaoConfig::default()
    });
    let mut s = shared.build(&device).unwrap();
    let mut heads = hand_heads(&device);
    assert!(matches!(
        s.weigh(hand_representation(&device), &mut heads),
        Err(DaoError::MissingSharedParameters)
    ));
}

#[test]
fn every_strategy_builds_from_its_name() {
    let device = device();
    for name in StrategyConfig::NAMES {
        let mut s = StrategyConfig::from_name(name)
            .unwrap()
            .build(&device)
            .unwrap();
        assert_eq!(s.name(), name);
        let out = run_hand_case(s.as_mut());
        assert!(out.diagnostics.loss.is_finite(), "{name}");
    }
    let from_json: StrategyConfig =
        serde_json::from_str(r#"{"strategy": "dao", "hidden": 8, "learn_alpha_beta": false}"#)
            .unwrap();
    assert_eq!(
        from_json,
        StrategyConfig::Dao(DaoConfig {
            hidden: 8,
            learn_alpha_beta: false,
            ..DaoConfig::default()
        })
    );
    let typo = serde_json::from_str::<StrategyConfig>(r#"{"strategy": "dao", "hiden": 8}"#);
    assert!(typo.is_err(), "unknown fields are rejected");
}

// ---------------------------------------------------------------------------------------------
// The gradient the encoder receives. Trunk: H = x W (W `[3, 6]`, no bias), so ∂L/∂W = xᵀ ∂L/∂H.
// Heads: S = tanh(H) a, L_r = mean((S − y)²); C = H Wc. Expected ∂L/∂H is computed here from
// separately written losses: λ_r w_r ∂L_r/∂H + λ_c w_c ∂L_imb/∂H with λ from the norms of
// ∂L_r/∂H and ∂L_c/∂H, and w from the step's diagnostics.
// ---------------------------------------------------------------------------------------------

#[derive(Module, Debug)]
struct Trunk {
    linear: Linear,
}

struct TinyModel {
    trunk: Trunk,
    x: Tensor<2>,
    y: Tensor<2>,
    a: Tensor<2>,
    wc: Tensor<2>,
    labels: Vec<i64>,
}

fn tiny_model(device: &Device) -> TinyModel {
    let floats = |n: usize, seed: f32| -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + 1.0) * seed).sin()).collect()
    };
    let mut linear = LinearConfig::new(3, 6).with_bias(false).init(device);
    linear.weight = burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(floats(18, 0.7), [3, 6]),
        device,
    ));
    TinyModel {
        trunk: Trunk { linear },
        x: Tensor::from_data(TensorData::new(floats(15, 1.3), [5, 3]), device),
        y: Tensor::from_data(TensorData::new(floats(5, 2.1), [5, 1]), device),
        a: Tensor::from_data(TensorData::new(floats(6, 0.4), [6, 1]), device),
        wc: Tensor::from_data(TensorData::new(floats(30, 0.9), [6, 5]), device),
        labels: vec![0, 3, 3, 1, 0], // classes 2 and 4 absent
    }
}

impl TinyModel {
    fn representation(&self) -> Tensor<2> {
        self.trunk.linear.forward(self.x.clone())
    }

    fn regression_loss(&self, h: Tensor<2>) -> Tensor<1> {
        (h.tanh().matmul(self.a.clone()) - self.y.clone())
            .square()
            .mean()
    }

    fn heads(&self, h: Tensor<2>) -> TaskOutputs {
        let device = h.device();
        TaskOutputs {
            regression_loss: self.regression_loss(h.clone()),
            logits: h.matmul(self.wc.clone()),
            labels: Tensor::from_ints(self.labels.as_slice(), &device),
        }
    }

    /// Per-sample CE and the class masks written out independently of the crate:
    /// ce_i = log Σ_k exp(C_ik) − C_{i,z_i}.
    fn cross_entropy_terms(&self, h: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let device = h.device();
        let c = h.matmul(self.wc.clone());
        let mut mask = vec![0f32; self.labels.len() * 5];
        for (i, &z) in self.labels.iter().enumerate() {
            mask[i * 5 + z as usize] = 1.0;
        }
        let mask = Tensor::<2>::from_data(TensorData::new(mask, [self.labels.len(), 5]), &device);
        let ce = c.clone().exp().sum_dim(1).log() - (c * mask.clone()).sum_dim(1);
        (ce, mask)
    }

    fn plain_ce(&self, h: Tensor<2>) -> Tensor<1> {
        self.cross_entropy_terms(h).0.mean()
    }

    /// L_imb at α = 0.1, β = 0.5: classes 0 and 3 have p = 2/5, class 1 has p = 1/5.
    fn imbalance(&self, h: Tensor<2>) -> Tensor<1> {
        let (ce, mask) = self.cross_entropy_terms(h);
        let mut total: Option<Tensor<1>> = None;
        for (k, n_k) in [(0usize, 2.0f32), (1, 1.0), (3, 2.0)] {
            let p = n_k / 5.0;
            let v = p.powf(-0.5);
            let l_ck = (ce.clone() * mask.clone().narrow(1, k, 1))
                .sum()
                .div_scalar(n_k);
            let term = (l_ck.mul_scalar(p) - 0.1 * p.ln()).mul_scalar(v);
            total = Some(match total {
                Some(t) => t + term,
                None => term,
            });
        }
        total.unwrap()
    }
}

fn grad_wrt_h(model: &TinyModel, loss: impl Fn(&TinyModel, Tensor<2>) -> Tensor<1>) -> Tensor<2> {
    let h = model.representation().detach().require_grad();
    let grads = loss(model, h.clone()).backward();
    h.grad(&grads).unwrap()
}

fn norm(t: Tensor<2>) -> f64 {
    values(t)
        .iter()
        .map(|&v| f64::from(v).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn representation_mode_gradient_reaches_the_encoder_as_specified() {
    let device = device();
    let model = tiny_model(&device);
    let mut dao = Dao::new(DaoConfig::default(), &device).unwrap();
    let h = model.representation();
    let mut heads = |h: Tensor<2>| model.heads(h);
    let out = dao.weigh(h, &mut heads).unwrap();
    let grads = out.loss.backward();
    let got = values(model.trunk.linear.weight.val().grad(&grads).unwrap());

    let g_r = grad_wrt_h(&model, TinyModel::regression_loss);
    let g_c = grad_wrt_h(&model, TinyModel::plain_ce);
    let g_imb = grad_wrt_h(&model, TinyModel::imbalance);
    let (n_r, n_c) = (norm(g_r.clone()), norm(g_c));
    let d = &out.diagnostics;
    assert_near("g_r_norm", d.g_r_norm.unwrap(), n_r);
    assert_near("g_c_norm", d.g_c_norm.unwrap(), n_c);
    let (lambda_r, lambda_c) = (n_c / (n_r + n_c), n_r / (n_r + n_c));
    assert_near("lambda_r", d.lambda_r.unwrap(), lambda_r);
    let (w_r, w_c) = (f64::from(d.w_r.unwrap()), f64::from(d.w_c.unwrap()));
    let dl_dh = g_r.mul_scalar(lambda_r * w_r) + g_imb.mul_scalar(lambda_c * w_c);
    let want = values(model.x.clone().transpose().matmul(dl_dh));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_near(&format!("dL/dW[{i}]"), *g, f64::from(*w));
    }
    assert!(
        want.iter().any(|w| w.abs() > 1e-3),
        "the check is not vacuous"
    );
    // The DAO module trains: after its Adam step, α moved and the next step still has gradients.
    dao.update(&grads);
    let alpha_after = dao.module().alpha_beta.alpha();
    assert!((values(alpha_after)[0] - 0.1).abs() > 1e-5);
    let h = model.representation();
    let mut heads = |h: Tensor<2>| model.heads(h);
    let grads = dao.weigh(h, &mut heads).unwrap().loss.backward();
    assert!(dao.module().fc1.weight.val().grad(&grads).is_some());
}

#[test]
fn shared_parameter_mode_takes_norms_over_the_trunk() {
    let device = device();
    let model = tiny_model(&device);
    let config = DaoConfig {
        grad_norm_wrt: GradNormWrt::SharedParameters,
        ..DaoConfig::default()
    };
    let mut dao = Dao::new(config, &device).unwrap();
    let x = model.x.clone();
    let mut shared = SharedModule {
        module: &model.trunk,
        forward: |trunk: &Trunk| trunk.linear.forward(x.clone()),
    };
    let mut heads = |h: Tensor<2>| model.heads(h);
    let out = dao
        .weigh_step(StepInput {
            representation: model.representation(),
            heads: &mut heads,
            shared: Some(&mut shared),
        })
        .unwrap();
    // ‖∂L/∂W‖ = ‖xᵀ ∂L/∂H‖ for each task.
    let g_r = model
        .x
        .clone()
        .transpose()
        .matmul(grad_wrt_h(&model, TinyModel::regression_loss));
    let g_c = model
        .x
        .clone()
        .transpose()
        .matmul(grad_wrt_h(&model, TinyModel::plain_ce));
    let (n_r, n_c) = (norm(g_r), norm(g_c));
    let d = &out.diagnostics;
    assert_near("g_r_norm", d.g_r_norm.unwrap(), n_r);
    assert_near("g_c_norm", d.g_c_norm.unwrap(), n_c);
    assert_near("lambda_c", d.lambda_c.unwrap(), n_r / (n_r + n_c));
    // The loss still backpropagates into the trunk.
    let grads = out.loss.backward();
    assert!(model.trunk.linear.weight.val().grad(&grads).is_some());
}

#[test]
fn a_saved_state_loads_only_into_a_strategy_that_has_one() {
    let device = device();
    let dir = std::env::temp_dir().join(format!("dao-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let build = |name: &str| {
        StrategyConfig::from_name(name)
            .unwrap()
            .build(&device)
            .unwrap()
    };
    let mut dao = build("dao");
    run_hand_case(dao.as_mut());
    dao.save(&dir).unwrap();
    build("dao").load(&dir).unwrap();
    for stateless in ["constant", "regression-only", "dao-grad-balance-only"] {
        let error = build(stateless).load(&dir).unwrap_err();
        assert!(
            matches!(&error, DaoError::State { reason, .. } if reason.contains(stateless)),
            "{stateless}: {error:?}"
        );
    }
    // A stateful strategy of another kind or size: refused, naming what does not fit.
    let small = StrategyConfig::Dao(DaoConfig {
        hidden: 8,
        ..DaoConfig::default()
    });
    for mut other in [build("uncertainty"), small.build(&device).unwrap()] {
        let error = other.load(&dir).unwrap_err().to_string();
        assert!(error.contains("does not fit this strategy"), "{error}");
    }
    // An empty folder is what a stateless strategy saves: that loads.
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    build("constant").load(&empty).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
