//! The one interface every weighting strategy implements, and what goes in and out of a step.

use burn::tensor::{Gradients, Int, Tensor};

use crate::balance::SharedParameters;
use crate::error::DaoError;

/// What the task heads produce from a shared representation.
///
/// # Shapes
/// - `regression_loss`: `[1]`, L_r (already reduced; the caller picks the regression loss).
/// - `logits`: `[batch, num_classes]`, the classification head's raw scores C.
/// - `labels`: `[batch]`, class indices in `0..num_classes`.
#[derive(Debug, Clone)]
pub struct TaskOutputs {
    /// The regression loss L_r (a scalar tensor).
    pub regression_loss: Tensor<1>,
    /// Classification logits C.
    pub logits: Tensor<2>,
    /// Class labels z.
    pub labels: Tensor<1, Int>,
}

/// The heads as a function of the shared representation: `H [batch, d] → TaskOutputs`.
///
/// It must be a **deterministic function of H within one step**: a strategy calls it on detached
/// copies of H to measure per-task gradients and once on the real H for the loss, and DAO-SPEC
/// step 1 requires the measured gradients to belong to the same function as the loss (same
/// dropout masks). Sample dropout masks once per step, outside the closure, and apply the same
/// masks on every call.
///
/// It must reach the model's graph **only through its argument**: the heads' own parameters
/// are fine, but not the representation or another tensor of the trunk captured from outside
/// (a skip connection), since measuring the tasks' gradients on the detached copies would
/// consume the trunk's graph (burn has no `retain_graph`). A closure that ignores its argument
/// is refused with [`DaoError::RepresentationUnused`](crate::DaoError::RepresentationUnused);
/// one that reads its argument *and* a captured trunk tensor cannot be told apart, and burn
/// panics at the caller's `backward` ("graph tape has already been consumed"). A head that
/// stops the gradient (`h.detach()`) is fine: its task's norm is 0.
pub type Heads<'a> = dyn FnMut(Tensor<2>) -> TaskOutputs + 'a;

/// Everything a strategy gets for one training step.
pub struct StepInput<'a> {
    /// H, the shared representation `[batch, d]`, an autodiff tensor still attached to the
    /// encoder's graph.
    pub representation: Tensor<2>,
    /// The heads (see [`Heads`] for the determinism contract).
    pub heads: &'a mut Heads<'a>,
    /// A fresh forward of the shared trunk and its parameters; needed only by strategies
    /// configured with `grad_norm_wrt = "shared-parameters"`.
    pub shared: Option<&'a mut dyn SharedParameters>,
}

/// A step's result: one loss to call `backward()` on, and what happened.
#[derive(Debug, Clone)]
pub struct Weighted {
    /// The total loss `[1]`, attached to the model's graph (and the strategy's own parameters).
    pub loss: Tensor<1>,
    /// Host values for logging.
    pub diagnostics: Diagnostics,
}

/// Per-step values for logging (DAO-SPEC step 6). A strategy leaves `None` what it does not have.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diagnostics {
    /// The total loss.
    pub loss: f32,
    /// L_r, the regression loss.
    pub l_r: f32,
    /// L_c, the plain mean cross-entropy (computed for logging even when unused).
    pub l_c: f32,
    /// L_imb, the imbalance-aware classification loss (step 2).
    pub l_imb: Option<f32>,
    /// ‖g_r‖, the regression gradient's norm (step 1).
    pub g_r_norm: Option<f32>,
    /// ‖g_c‖, the classification gradient's norm (step 1).
    pub g_c_norm: Option<f32>,
    /// λ_r (step 1).
    pub lambda_r: Option<f32>,
    /// λ_c (step 1).
    pub lambda_c: Option<f32>,
    /// The regression task's weight (w_r for DAO).
    pub w_r: Option<f32>,
    /// The classification task's weight (w_c for DAO).
    pub w_c: Option<f32>,
    /// α of the imbalance loss.
    pub alpha: Option<f32>,
    /// β of the imbalance loss.
    pub beta: Option<f32>,
    /// p_k = n_k / n per class (0 for absent classes).
    pub p: Option<Vec<f32>>,
    /// v_k = p_k^(−β) per class (0 for absent classes).
    pub v: Option<Vec<f32>>,
}

/// A multi-task loss weighting strategy, plug-and-play in a burn training loop:
///
/// 1. `let out = weighting.weigh_step(StepInput { representation: h, heads: &mut heads, shared: None })?;`
/// 2. `let grads = out.loss.backward();`
/// 3. `weighting.update(&grads);` (the strategy's own parameters, if any, with its own optimizer)
/// 4. the model's optimizer step from the same `grads`;
/// 5. `weighting.end_epoch()` after each epoch.
pub trait LossWeighting {
    /// The strategy's config-string name.
    fn name(&self) -> &'static str;

    /// Builds this step's total loss from the shared representation and the heads.
    ///
    /// A non-finite loss is not an error here for the strategies that never read it back
    /// (constant weights, regression only): check `diagnostics.loss` before the optimizer
    /// step. DAO and the strategies that measure gradient norms stop with
    /// [`DaoError::InvalidNorm`] instead.
    ///
    /// It weighs a training step: H must be an autodiff tensor ([`DaoError::NotAutodiff`]
    /// otherwise, for every strategy). A validation loss is the heads' own losses, unweighted.
    fn weigh_step(&mut self, input: StepInput<'_>) -> Result<Weighted, DaoError>;

    /// [`weigh_step`](Self::weigh_step) without shared parameters (the common case).
    fn weigh(
        &mut self,
        representation: Tensor<2>,
        heads: &mut dyn FnMut(Tensor<2>) -> TaskOutputs,
    ) -> Result<Weighted, DaoError> {
        self.weigh_step(StepInput {
            representation,
            heads,
            shared: None,
        })
    }

    /// Updates the strategy's own parameters from the gradients of the loss it returned (read,
    /// not removed: the model's optimizer can take the same `Gradients` afterwards).
    fn update(&mut self, grads: &Gradients) {
        let _ = grads;
    }

    /// Marks the end of an epoch (strategies that track per-epoch loss history use it).
    fn end_epoch(&mut self) {}

    /// Writes the strategy's state into the folder `dir` (its parameters, their Adam moments,
    /// its loss history; files named `weighting*`), so that [`load`](Self::load) continues
    /// exactly where it stopped. Stateless strategies write nothing.
    fn save(&self, dir: &std::path::Path) -> Result<(), DaoError> {
        let _ = dir;
        Ok(())
    }

    /// Restores what [`save`](Self::save) wrote, into a strategy built from the same
    /// configuration. A strategy without state (the default) refuses a folder that holds
    /// another strategy's state, rather than carrying on as if it had been restored.
    fn load(&mut self, dir: &std::path::Path) -> Result<(), DaoError> {
        crate::state::expect_no_state(self.name(), dir)
    }
}
