//! A strategy's own optimizer: Adam over the strategy's module, fed from the `Gradients` of the
//! user's backward pass without taking them away from the model's optimizer.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Gradients, Tensor};

/// Adam with PyTorch's defaults (betas 0.9, 0.999, ε 1e-8, no weight decay) and a fixed lr
/// (DAO-SPEC step 5: no schedule).
#[derive(Clone)]
pub(crate) struct OwnAdam {
    optimizer: ModuleOptimizer,
    lr: f64,
}

impl OwnAdam {
    pub(crate) fn new(lr: f64) -> Self {
        Self {
            // burn's default ε is 1e-5; torch.optim.Adam's (the reference) is 1e-8.
            optimizer: AdamConfig::new().with_epsilon(1e-8).init(),
            lr,
        }
    }

    /// Writes `module` (the one this Adam steps) and the Adam moments into `dir`
    /// ([`crate::state`]): a strategy's whole state when these are all it has.
    pub(crate) fn save_with<M: Module>(
        &self,
        module: &M,
        dir: &std::path::Path,
    ) -> Result<(), crate::DaoError> {
        crate::state::save_module(module, dir)?;
        let path = dir.join(crate::state::OPTIMIZER_FILE);
        self.optimizer
            .save(&path)
            .map_err(|e| crate::state::state_error(&path, e))
    }

    /// Reads back what [`save_with`](Self::save_with) wrote: `module` with its saved values,
    /// and the moments into this Adam.
    pub(crate) fn load_with<M: Module>(
        &mut self,
        module: M,
        dir: &std::path::Path,
    ) -> Result<M, crate::DaoError> {
        let module = crate::state::load_module(module, dir)?;
        let path = dir.join(crate::state::OPTIMIZER_FILE);
        self.optimizer = self
            .optimizer
            .clone()
            .load(&path)
            .map_err(|e| crate::state::state_error(&path, e))?;
        Ok(module)
    }

    /// One Adam step of `module` from its gradients in `grads` (a module without any gradient
    /// there is returned unchanged, and its Adam state does not advance).
    pub(crate) fn step<M: Module>(&mut self, module: M, grads: &Gradients) -> M {
        let params = gradients_of(&module, grads);
        if params.is_empty() {
            return module;
        }
        self.optimizer.step(self.lr, module, params)
    }
}

/// The gradients of `module`'s trainable parameters, read from `grads` without removing them
/// (`GradientsParams::from_module` removes them, and `Gradients` is not `Clone`).
pub fn gradients_of<M: Module>(module: &M, grads: &Gradients) -> GradientsParams {
    struct Reader<'g> {
        grads: &'g Gradients,
        out: GradientsParams,
    }
    impl ModuleVisitor for Reader<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !param.is_require_grad() {
                return;
            }
            if let Some(grad) = param.val().grad(self.grads) {
                self.out.register(param.id, grad);
            }
        }
    }
    let mut reader = Reader {
        grads,
        out: GradientsParams::new(),
    };
    module.visit(&mut reader);
    reader.out
}
