//! DAO, Dynamic Adaptive Optimization (Ding, Zhao, Abdullah, Dewi, Jiang, "Dynamic Adaptive
//! Optimization for Effective Sentiment Analysis Fine-Tuning on Large Language Models"),
//! DAO-SPEC steps 1–5, and its two ablations.

use burn::tensor::{Device, Gradients, Tensor};

use crate::balance::{grad_balance, task_grad_norms};
use crate::config::{DaoConfig, GradBalanceOnlyConfig, ImbalanceOnlyConfig};
use crate::error::DaoError;
use crate::imbalance::imbalance_loss;
use crate::network::{AlphaBeta, DaoModule, WeightNetworkOutput};
use crate::own_optimizer::OwnAdam;
use crate::readback::read_all;
use crate::targets::{check_scalar, ClassTargets};
use crate::weighting::{Diagnostics, LossWeighting, StepInput, TaskOutputs, Weighted};

/// Every intermediate of DAO steps 2–4 for one batch, as tensors.
///
/// # Shapes
/// Scalars are `[1]`; `l_ck`, `v`: `[1, K]`; `u`: `[2]`.
#[derive(Debug, Clone)]
pub struct DaoTerms {
    /// L_r.
    pub l_r: Tensor<1>,
    /// L_c (plain mean cross-entropy).
    pub l_c: Tensor<1>,
    /// L_{c,k} (0 for absent classes).
    pub l_ck: Tensor<2>,
    /// L_imb (step 2).
    pub l_imb: Tensor<1>,
    /// v_k (step 2; 0 for absent classes).
    pub v: Tensor<2>,
    /// α.
    pub alpha: Tensor<1>,
    /// β.
    pub beta: Tensor<1>,
    /// λ_r, λ_c (step 1).
    pub lambdas: [f32; 2],
    /// u = [λ_r L_r, λ_c L_imb], detached (step 3).
    pub u: Tensor<1>,
    /// The weight network's h, s, w (step 3).
    pub network: WeightNetworkOutput,
    /// L_mtl = λ_r w_r L_r + λ_c w_c L_imb (step 4).
    pub loss: Tensor<1>,
}

/// DAO steps 2–4 given the task outputs and λ (step 1 done by the caller).
///
/// λ are constants; u is detached, so the weight network gets gradient only through w, and the
/// model, α and β only through the explicit L_r and L_imb factors of L_mtl.
pub fn dao_objective(
    module: &DaoModule,
    outputs: TaskOutputs,
    targets: &ClassTargets,
    lambdas: [f32; 2],
) -> Result<DaoTerms, DaoError> {
    let l_r = check_scalar(outputs.regression_loss)?;
    let ce = targets.cross_entropy(outputs.logits)?;
    let l_ck = targets.per_class_cross_entropy(ce.per_sample);
    let (alpha, beta) = (module.alpha_beta.alpha(), module.alpha_beta.beta());
    // Step 2.
    let imbalance = imbalance_loss(l_ck.clone(), targets, alpha.clone(), beta.clone());
    let [lambda_r, lambda_c] = lambdas;
    // Step 3: the weight network sees values only.
    let u = Tensor::cat(
        vec![
            l_r.clone().mul_scalar(lambda_r),
            imbalance.loss.clone().mul_scalar(lambda_c),
        ],
        0,
    )
    .detach();
    let network = module.weights(u.clone());
    let w_r = network.weights.clone().narrow(1, 0, 1).reshape([1]);
    let w_c = network.weights.clone().narrow(1, 1, 1).reshape([1]);
    // Step 4.
    let loss = w_r.mul(l_r.clone()).mul_scalar(lambda_r)
        + w_c.mul(imbalance.loss.clone()).mul_scalar(lambda_c);
    Ok(DaoTerms {
        l_r,
        l_c: ce.mean,
        l_ck,
        l_imb: imbalance.loss,
        v: imbalance.v,
        alpha,
        beta,
        lambdas,
        u,
        network,
        loss,
    })
}

/// DAO as a [`LossWeighting`]: λ from the task gradients (step 1), L_imb with learnable α, β
/// (step 2), the weight network on detached u (step 3), `L_mtl` (step 4), and its own Adam over
/// the DAO module (step 5), stepped by [`LossWeighting::update`].
pub struct Dao {
    config: DaoConfig,
    module: DaoModule,
    adam: OwnAdam,
}

impl Dao {
    /// A fresh DAO on `device` (the training device, autodiff).
    ///
    /// # Errors
    /// An invalid configuration, or a `device` without autodiff (DAO's module would never
    /// learn there).
    pub fn new(config: DaoConfig, device: &Device) -> Result<Self, DaoError> {
        super::check_learns_on(device, "dao")?;
        let module = DaoModule::new(&config, device)?;
        Self::with_module(config, module)
    }

    /// DAO with a given module (e.g. loaded from a checkpoint or a fixture).
    pub fn with_module(config: DaoConfig, module: DaoModule) -> Result<Self, DaoError> {
        config.validate()?;
        let adam = OwnAdam::new(config.lr);
        Ok(Self {
            config,
            module,
            adam,
        })
    }

    /// The DAO module (α, β, FC1, FC2) as it is now.
    pub fn module(&self) -> &DaoModule {
        &self.module
    }

    /// The configuration.
    pub fn config(&self) -> &DaoConfig {
        &self.config
    }

    /// Steps 2–4 with the task-gradient norms given instead of measured (step 1's λ from them).
    pub fn weigh_with_norms(
        &mut self,
        outputs: TaskOutputs,
        g_r_norm: f32,
        g_c_norm: f32,
    ) -> Result<Weighted, DaoError> {
        let targets = ClassTargets::new(&outputs.labels, &outputs.logits)?;
        self.weigh_targets(outputs, &targets, [g_r_norm, g_c_norm])
    }

    fn weigh_targets(
        &self,
        outputs: TaskOutputs,
        targets: &ClassTargets,
        norms: [f32; 2],
    ) -> Result<Weighted, DaoError> {
        let lambdas = grad_balance(&norms)?;
        let terms = dao_objective(&self.module, outputs, targets, [lambdas[0], lambdas[1]])?;
        let diagnostics = dao_diagnostics(&terms, targets, norms)?;
        Ok(Weighted {
            loss: terms.loss,
            diagnostics,
        })
    }
}

fn dao_diagnostics(
    terms: &DaoTerms,
    targets: &ClassTargets,
    norms: [f32; 2],
) -> Result<Diagnostics, DaoError> {
    let k = targets.num_classes();
    let values = read_all(vec![
        terms.loss.clone(),
        terms.l_r.clone(),
        terms.l_c.clone(),
        terms.l_imb.clone(),
        terms.network.weights.clone().reshape([2]),
        terms.alpha.clone(),
        terms.beta.clone(),
        terms.v.clone().reshape([k]),
    ])?;
    let scalar = |i: usize| values[i][0];
    Ok(Diagnostics {
        loss: scalar(0),
        l_r: scalar(1),
        l_c: scalar(2),
        l_imb: Some(scalar(3)),
        g_r_norm: Some(norms[0]),
        g_c_norm: Some(norms[1]),
        lambda_r: Some(terms.lambdas[0]),
        lambda_c: Some(terms.lambdas[1]),
        w_r: Some(values[4][0]),
        w_c: Some(values[4][1]),
        alpha: Some(scalar(5)),
        beta: Some(scalar(6)),
        p: Some(targets.shares()),
        v: Some(values[7].clone()),
    })
}

/// Validates H and runs the heads once on it, returning the outputs and the batch's targets.
pub(crate) fn real_outputs(
    input: &mut StepInput<'_>,
) -> Result<(TaskOutputs, ClassTargets), DaoError> {
    if !input.representation.is_autodiff() {
        return Err(DaoError::NotAutodiff);
    }
    let outputs = (input.heads)(input.representation.clone());
    let targets = ClassTargets::new(&outputs.labels, &outputs.logits)?;
    Ok((outputs, targets))
}

impl LossWeighting for Dao {
    fn name(&self) -> &'static str {
        "dao"
    }

    fn weigh_step(&mut self, mut input: StepInput<'_>) -> Result<Weighted, DaoError> {
        let (outputs, targets) = real_outputs(&mut input)?;
        let norms = task_grad_norms(&mut input, &targets, self.config.grad_norm_wrt)?;
        self.weigh_targets(outputs, &targets, norms)
    }

    fn save(&self, dir: &std::path::Path) -> Result<(), DaoError> {
        self.adam.save_with(&self.module, dir)
    }

    fn load(&mut self, dir: &std::path::Path) -> Result<(), DaoError> {
        self.module = self.adam.load_with(self.module.clone(), dir)?;
        Ok(())
    }

    fn update(&mut self, grads: &Gradients) {
        self.module = self.adam.step(self.module.clone(), grads);
    }
}

/// DAO ablation "gradient balance only": `L = λ_r L_r + λ_c L_c`, step 1's λ with the plain
/// cross-entropy and no weight network (Ding et al., DAO-SPEC step 1 alone) **\[choice\]**.
pub struct GradBalanceOnly {
    config: GradBalanceOnlyConfig,
}

impl GradBalanceOnly {
    /// The ablation with its settings.
    pub fn new(config: GradBalanceOnlyConfig) -> Self {
        Self { config }
    }
}

impl LossWeighting for GradBalanceOnly {
    fn name(&self) -> &'static str {
        "dao-grad-balance-only"
    }

    fn weigh_step(&mut self, mut input: StepInput<'_>) -> Result<Weighted, DaoError> {
        let (outputs, targets) = real_outputs(&mut input)?;
        let norms = task_grad_norms(&mut input, &targets, self.config.grad_norm_wrt)?;
        let lambdas = grad_balance(&norms)?;
        let l_r = check_scalar(outputs.regression_loss)?;
        let l_c = targets.cross_entropy(outputs.logits)?.mean;
        let loss = l_r.clone().mul_scalar(lambdas[0]) + l_c.clone().mul_scalar(lambdas[1]);
        let values = read_all(vec![loss.clone(), l_r, l_c])?;
        Ok(Weighted {
            loss,
            diagnostics: Diagnostics {
                loss: values[0][0],
                l_r: values[1][0],
                l_c: values[2][0],
                g_r_norm: Some(norms[0]),
                g_c_norm: Some(norms[1]),
                lambda_r: Some(lambdas[0]),
                lambda_c: Some(lambdas[1]),
                ..Diagnostics::default()
            },
        })
    }
}

/// DAO ablation "imbalance loss only": `L = (1 − w_c) L_r + w_c L_imb`, the constant-weight
/// baseline with L_c replaced by step 2's L_imb (α, β trained by their own Adam) (Ding et al.,
/// DAO-SPEC step 2 alone) **\[choice\]**.
pub struct ImbalanceOnly {
    config: ImbalanceOnlyConfig,
    alpha_beta: AlphaBeta,
    adam: OwnAdam,
}

impl ImbalanceOnly {
    /// The ablation on `device` (the training device, autodiff).
    ///
    /// # Errors
    /// An invalid configuration, or a `device` without autodiff (α and β would never learn
    /// there).
    pub fn new(config: ImbalanceOnlyConfig, device: &Device) -> Result<Self, DaoError> {
        super::check_learns_on(device, "dao-imbalance-only")?;
        crate::config::StrategyConfig::DaoImbalanceOnly(config.clone()).validate()?;
        let alpha_beta = AlphaBeta::new(
            config.alpha_init,
            config.beta_init,
            config.learn_alpha_beta,
            device,
        );
        let adam = OwnAdam::new(config.lr);
        Ok(Self {
            config,
            alpha_beta,
            adam,
        })
    }
}

impl LossWeighting for ImbalanceOnly {
    fn name(&self) -> &'static str {
        "dao-imbalance-only"
    }

    fn weigh_step(&mut self, mut input: StepInput<'_>) -> Result<Weighted, DaoError> {
        let (outputs, targets) = real_outputs(&mut input)?;
        let l_r = check_scalar(outputs.regression_loss)?;
        let ce = targets.cross_entropy(outputs.logits)?;
        let l_ck = targets.per_class_cross_entropy(ce.per_sample);
        let (alpha, beta) = (self.alpha_beta.alpha(), self.alpha_beta.beta());
        let imbalance = imbalance_loss(l_ck, &targets, alpha.clone(), beta.clone());
        let w_c = self.config.w_c;
        let loss = l_r.clone().mul_scalar(1.0 - w_c) + imbalance.loss.clone().mul_scalar(w_c);
        let k = targets.num_classes();
        let values = read_all(vec![
            loss.clone(),
            l_r,
            ce.mean,
            imbalance.loss,
            alpha,
            beta,
            imbalance.v.reshape([k]),
        ])?;
        Ok(Weighted {
            loss,
            diagnostics: Diagnostics {
                loss: values[0][0],
                l_r: values[1][0],
                l_c: values[2][0],
                l_imb: Some(values[3][0]),
                w_r: Some(1.0 - w_c),
                w_c: Some(w_c),
                alpha: Some(values[4][0]),
                beta: Some(values[5][0]),
                p: Some(targets.shares()),
                v: Some(values[6].clone()),
                ..Diagnostics::default()
            },
        })
    }

    fn update(&mut self, grads: &Gradients) {
        self.alpha_beta = self.adam.step(self.alpha_beta.clone(), grads);
    }

    fn save(&self, dir: &std::path::Path) -> Result<(), DaoError> {
        self.adam.save_with(&self.alpha_beta, dir)
    }

    fn load(&mut self, dir: &std::path::Path) -> Result<(), DaoError> {
        self.alpha_beta = self.adam.load_with(self.alpha_beta.clone(), dir)?;
        Ok(())
    }
}
