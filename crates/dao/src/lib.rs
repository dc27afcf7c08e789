//! Plug-and-play multi-task loss weighting for burn training loops: DAO, Dynamic Adaptive
//! Optimization (Ding et al.; `DAO-SPEC.md` steps 1–5), and the baselines it is compared with
//! (regression only, constant weights, uncertainty weighting, dynamic weight averaging,
//! GradNorm, and two DAO ablations), all behind one trait, [`LossWeighting`].
//!
//! The training loop keeps its model and optimizer. Each step it hands over the shared
//! representation H and a closure that maps a representation to the task outputs; it gets back
//! one loss to call `backward()` on, and per-step [`Diagnostics`]:
//!
//! ```no_run
//! use burn::tensor::{Device, Int, Tensor};
//! use dao::{StrategyConfig, TaskOutputs};
//! # fn encoder(device: &Device) -> Tensor<2> { Tensor::zeros([4, 8], device).require_grad() }
//! # fn regression_loss(h: &Tensor<2>) -> Tensor<1> { h.clone().mean() }
//! # fn logits(h: &Tensor<2>) -> Tensor<2> { h.clone().narrow(1, 0, 5) }
//! let device = Device::flex().autodiff();
//! let mut weighting = StrategyConfig::from_name("dao")?.build(&device)?;
//! let labels = Tensor::<1, Int>::from_ints([0, 1, 4, 4], &device);
//! // for each batch:
//! let h = encoder(&device); // [batch, d], attached to the encoder's graph
//! let mut heads = |h: Tensor<2>| TaskOutputs {
//!     regression_loss: regression_loss(&h), // L_r, [1]
//!     logits: logits(&h),                   // [batch, 5]
//!     labels: labels.clone(),               // [batch]
//! };
//! let step = weighting.weigh(h, &mut heads)?;
//! let grads = step.loss.backward();
//! weighting.update(&grads); // DAO's own Adam (lr 1e-3) on its module; grads stay intact
//! // ... then the model's optimizer: GradientsParams::from_grads(grads, &model), optim.step(..)
//! println!("w_c = {:?}, λ_c = {:?}", step.diagnostics.w_c, step.diagnostics.lambda_c);
//! // after each epoch: weighting.end_epoch();
//! // checkpoints: weighting.save(dir)? / weighting.load(dir)? (parameters, Adam, history)
//! # Ok::<(), dao::DaoError>(())
//! ```
//!
//! **The closure must be deterministic within a step**: DAO calls it on detached copies of H
//! (`h.clone().detach().require_grad()`, burn has no `retain_graph`) to measure ‖∂L_r/∂H‖ and
//! ‖∂L_c/∂H‖, then once on the real H for the loss; the spec requires those gradients to use the
//! loss's own dropout masks, so sample the heads' masks once per step outside the closure.
//! For the same reason the closure may reach the model only through its argument (and the
//! heads' own parameters), never through a tensor of the trunk captured from outside.
//! For `grad_norm_wrt = "shared-parameters"` use [`LossWeighting::weigh_step`] with a
//! [`SharedParameters`] (e.g. [`SharedModule`]).
//!
//! # The method, per batch
//! With `L_r` the regression loss (MSE), `L_c` the plain mean cross-entropy over the classes
//! (5 in the paper; as many as the logits have) and `H` the shared representation:
//! 1. *Gradient balance* ([`grad_balance`]): `λ_r = ‖∇L_c‖ / (‖∇L_r‖ + ‖∇L_c‖)`,
//!    `λ_c = ‖∇L_r‖ / (‖∇L_r‖ + ‖∇L_c‖)`, gradients with respect to `H` (or, configured, to the
//!    shared parameters), L2 norms over the batch; both ½ when both norms are 0; constants for
//!    the backward.
//! 2. *Imbalance-aware classification loss* ([`imbalance_loss`]): over the classes present in
//!    the batch, `p_k = n_k / n`, `v_k = p_k^(−β)`, `L_imb = Σ_k v_k (p_k L_c,k − α log p_k)`,
//!    with `L_c,k` the mean cross-entropy of class `k`'s rows; `α = softplus(a)`,
//!    `β = sigmoid(b)` learnable (initially 0.1 and 0.5), so `α = β = 0` gives `L_c`.
//! 3. *Task weights* ([`DaoModule`]): `[w_r, w_c] = softmax(FC2(ReLU(FC1(u))))` with
//!    `u = [λ_r L_r, λ_c L_imb]` detached, `FC1: 2 → 16`, `FC2: 16 → 2`.
//! 4. *Total loss*: `L_mtl = λ_r w_r L_r + λ_c w_c L_imb`, one backward for the model, the
//!    weight network (through `w`) and `a`, `b` (through `L_imb`).
//! 5. [`LossWeighting::update`]: the DAO module's own Adam (lr 10⁻³); the model's optimizer
//!    stays the caller's.
//!
//! These are the paper's equations with the choices it leaves open made explicit (the
//! constrained α and β, the detached input of the weight network, the hidden width);
//! `DAO-SPEC.md` in this project's shared material is the long form.
//!
//! Layout: `balance` (step 1), `imbalance` and `targets` (step 2), `network` (step 3),
//! `strategies/dao.rs` (steps 4–5 and the ablations), one file per other strategy.
#![warn(missing_docs)]

mod balance;
mod config;
mod error;
mod imbalance;
mod network;
mod own_optimizer;
mod readback;
mod state;
mod strategies;
mod targets;
mod weighting;

pub use balance::{grad_balance, l2_norm, module_grad_norm, SharedModule, SharedParameters};
pub use config::{
    ConstantConfig, DaoConfig, DwaConfig, GradBalanceOnlyConfig, GradNormConfig, GradNormWrt,
    ImbalanceOnlyConfig, StrategyConfig, UncertaintyConfig,
};
pub use error::DaoError;
pub use imbalance::{imbalance_loss, ImbalanceLoss};
pub use network::{inverse_softplus, logit, AlphaBeta, DaoModule, WeightNetworkOutput};
pub use own_optimizer::gradients_of;
pub use strategies::{
    dao_objective, Constant, Dao, DaoTerms, DynamicWeightAverage, GradBalanceOnly, GradNorm,
    ImbalanceOnly, LogVariances, RegressionOnly, Uncertainty,
};
pub use targets::{ClassTargets, CrossEntropy};
pub use weighting::{Diagnostics, Heads, LossWeighting, StepInput, TaskOutputs, Weighted};
