//! DAO-SPEC step 1, gradient balance: λ from the task gradients' L2 norms, and the ways of
//! measuring those norms (w.r.t. the shared representation H, or every shared parameter).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Gradients, Tensor};

use crate::config::GradNormWrt;
use crate::error::DaoError;
use crate::targets::ClassTargets;
use crate::weighting::{StepInput, TaskOutputs};

/// Gradient balance over N task-gradient norms (DAO-SPEC step 1).
///
/// For two tasks this is the spec's `λ_r = ‖g_c‖ / (‖g_r‖ + ‖g_c‖)`, `λ_c = ‖g_r‖ / (‖g_r‖ + ‖g_c‖)`.
/// For N tasks **\[choice\]** `λ_i ∝ 1/‖g_i‖`, normalised to sum to 1, which is the same formula at
/// N = 2 and keeps its property `λ_i ‖g_i‖` equal across tasks. A task whose norm is 0 takes
/// the whole weight (the limit of the formula), shared equally when several are 0; so both norms
/// 0 gives 0.5 / 0.5 as the spec demands. λ are plain numbers: constants for the backward pass.
pub fn grad_balance(norms: &[f32]) -> Result<Vec<f32>, DaoError> {
    for (task, &value) in norms.iter().enumerate() {
        if !(value.is_finite() && value >= 0.0) {
            return Err(DaoError::InvalidNorm { task, value });
        }
    }
    if norms.is_empty() {
        return Ok(Vec::new());
    }
    let zeros = norms.iter().filter(|&&g| g == 0.0).count();
    if zeros > 0 {
        let share = 1.0 / zeros as f32;
        return Ok(norms
            .iter()
            .map(|&g| if g == 0.0 { share } else { 0.0 })
            .collect());
    }
    if norms.len() == 2 {
        // The spec's form, in f64 so λ_r + λ_c = 1 to the last bit that f32 can show.
        let (g_r, g_c) = (f64::from(norms[0]), f64::from(norms[1]));
        let sum = g_r + g_c;
        return Ok(vec![(g_c / sum) as f32, (g_r / sum) as f32]);
    }
    let inverse: Vec<f64> = norms.iter().map(|&g| 1.0 / f64::from(g)).collect();
    let total: f64 = inverse.iter().sum();
    Ok(inverse.iter().map(|i| (i / total) as f32).collect())
}

/// The L2 norm over a whole tensor (all elements), as a `[1]` tensor on its device.
pub fn l2_norm<const D: usize>(tensor: Tensor<D>) -> Tensor<1> {
    tensor.square().sum().sqrt()
}

/// The shared trunk, for `grad_norm_wrt = "shared-parameters"`: a way to recompute H and to
/// measure a gradient over the trunk's parameters. burn has no `retain_graph`, so each task's
/// gradient needs its own forward of the trunk on the step's batch. For the norms to belong to
/// the loss's function (DAO-SPEC step 1) that forward must be deterministic too: run the trunk in
/// a mode without dropout, or reseed the device identically before each forward.
pub trait SharedParameters {
    /// A fresh forward of the shared trunk on this step's batch: H `[batch, d]`.
    fn representation(&mut self) -> Tensor<2>;
    /// The global L2 norm of `grads` over every trainable shared parameter.
    fn grad_norm(&self, grads: &Gradients) -> f32;
}

/// [`SharedParameters`] from a burn module and a closure that runs it on the step's batch.
pub struct SharedModule<'m, M, F> {
    /// The shared trunk (its trainable parameters are the ones measured).
    pub module: &'m M,
    /// Runs the trunk on this step's batch.
    pub forward: F,
}

impl<M: Module, F: FnMut(&M) -> Tensor<2>> SharedParameters for SharedModule<'_, M, F> {
    fn representation(&mut self) -> Tensor<2> {
        (self.forward)(self.module)
    }

    fn grad_norm(&self, grads: &Gradients) -> f32 {
        module_grad_norm(self.module, grads)
    }
}

/// The global L2 norm of the gradients in `grads` of `module`'s trainable float parameters
/// (parameters without a gradient count as 0). Reads the gradients without removing them.
/// Each tensor's sum of squares is made on its device; they are read back together (one sync)
/// and added in f64, as the reference adds them in float64.
pub fn module_grad_norm<M: Module>(module: &M, grads: &Gradients) -> f32 {
    struct SquaredSums<'g> {
        grads: &'g Gradients,
        sums: Vec<Tensor<1>>,
    }
    impl ModuleVisitor for SquaredSums<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !param.is_require_grad() {
                return;
            }
            if let Some(grad) = param.val().grad(self.grads) {
                self.sums.push(grad.square().sum());
            }
        }
    }
    let mut visitor = SquaredSums {
        grads,
        sums: Vec::new(),
    };
    module.visit(&mut visitor);
    if visitor.sums.is_empty() {
        return 0.0;
    }
    let total: f64 = Tensor::cat(visitor.sums, 0).into_data().iter::<f64>().sum();
    total.sqrt() as f32
}

/// Which of the two tasks' losses a gradient is taken of.
#[derive(Clone, Copy)]
enum Task {
    Regression,
    Classification,
}

/// ‖∂L_r‖ and ‖∂L_c‖ (L_c the plain mean cross-entropy, as DAO-SPEC step 1 says), with respect
/// to what `wrt` names. Costs two closure calls on detached copies of H plus one tiny backward
/// pass (representation), or two forward and backward passes of the trunk (shared parameters).
pub(crate) fn task_grad_norms(
    input: &mut StepInput<'_>,
    targets: &ClassTargets,
    wrt: GradNormWrt,
) -> Result<[f32; 2], DaoError> {
    match wrt {
        GradNormWrt::Representation => representation_grad_norms(input, targets),
        GradNormWrt::SharedParameters => {
            let mut norms = [0.0f32; 2];
            for (slot, task) in TASKS.into_iter().enumerate() {
                let shared = input
                    .shared
                    .as_deref_mut()
                    .ok_or(DaoError::MissingSharedParameters)?;
                let h = shared.representation();
                let loss = task_loss((input.heads)(h), targets, task)?;
                if loss.is_tracked() {
                    norms[slot] = shared.grad_norm(&loss.backward());
                }
            }
            Ok(norms)
        }
    }
}

const TASKS: [Task; 2] = [Task::Regression, Task::Classification];

/// Each task's loss on its own detached copy of H, both through one backward of their sum:
/// copy k's gradient is ∂L_k/∂H alone, since the other loss does not reach it. A loss that
/// does not depend on H (constant, or a head that stops the gradient) has a norm of 0. A
/// closure that reaches H through neither copy computed its heads from a tensor captured
/// outside it: refused, before the caller's backward would find that graph consumed.
fn representation_grad_norms(
    input: &mut StepInput<'_>,
    targets: &ClassTargets,
) -> Result<[f32; 2], DaoError> {
    let copies = TASKS.map(|_| input.representation.clone().detach().require_grad());
    let mut losses = Vec::with_capacity(TASKS.len());
    for (task, h) in TASKS.into_iter().zip(&copies) {
        losses.push(task_loss((input.heads)(h.clone()), targets, task)?);
    }
    let Some(total) = losses
        .into_iter()
        .filter(Tensor::is_tracked)
        .reduce(|a, b| a + b)
    else {
        return Ok([0.0; 2]); // neither loss depends on anything that trains
    };
    let grads = total.backward();
    let gradients = copies.map(|h| h.grad(&grads));
    if gradients.iter().all(Option::is_none) {
        return Err(DaoError::RepresentationUnused);
    }
    let mut norms = [0.0f32; 2];
    for (norm, gradient) in norms.iter_mut().zip(gradients) {
        if let Some(g) = gradient {
            *norm = l2_norm(g).into_scalar::<f32>();
        }
    }
    Ok(norms)
}

fn task_loss(
    outputs: TaskOutputs,
    targets: &ClassTargets,
    task: Task,
) -> Result<Tensor<1>, DaoError> {
    Ok(match task {
        Task::Regression => crate::targets::check_scalar(outputs.regression_loss)?,
        Task::Classification => targets.cross_entropy(outputs.logits)?.mean,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_tasks_follow_the_spec() {
        // ‖g_r‖ = 1, ‖g_c‖ = 3: λ_r = 3/4, λ_c = 1/4.
        assert_eq!(grad_balance(&[1.0, 3.0]).unwrap(), vec![0.75, 0.25]);
    }

    #[test]
    fn swapping_norms_swaps_lambdas() {
        let a = grad_balance(&[0.37, 2.9]).unwrap();
        let b = grad_balance(&[2.9, 0.37]).unwrap();
        assert_eq!((a[0], a[1]), (b[1], b[0]));
        assert!((a[0] + a[1] - 1.0).abs() < 1e-7);
    }

    #[test]
    fn zero_norms() {
        assert_eq!(grad_balance(&[0.0, 0.0]).unwrap(), vec![0.5, 0.5]);
        // Only g_r = 0: the formula gives λ_r = g_c / g_c = 1, λ_c = 0.
        assert_eq!(grad_balance(&[0.0, 2.0]).unwrap(), vec![1.0, 0.0]);
        assert_eq!(grad_balance(&[0.0, 0.0, 0.0, 0.0]).unwrap(), vec![0.25; 4]);
    }

    #[test]
    fn n_tasks_equalise_weighted_norms() {
        // 1/1, 1/2, 1/4 normalised: 4/7, 2/7, 1/7; λ_i ‖g_i‖ = 4/7 for all.
        let l = grad_balance(&[1.0, 2.0, 4.0]).unwrap();
        for (got, want) in l.iter().zip([4.0 / 7.0, 2.0 / 7.0, 1.0 / 7.0]) {
            assert!((got - want).abs() < 1e-7, "{got} vs {want}");
        }
    }

    #[test]
    fn bad_norms_are_errors() {
        assert!(matches!(
            grad_balance(&[1.0, f32::NAN]),
            Err(DaoError::InvalidNorm { task: 1, .. })
        ));
        assert!(grad_balance(&[-1.0, 1.0]).is_err());
    }
}
