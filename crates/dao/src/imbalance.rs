//! DAO-SPEC step 2, the imbalance-aware classification loss
//! `L_imb = Σ_{k present} v_k (p_k L_{c,k} − α log p_k)`, `v_k = p_k^(−β)`.

use burn::tensor::{Tensor, TensorData};

use crate::targets::ClassTargets;

/// L_imb and the class weights it used.
///
/// # Shapes
/// - `loss`: `[1]`; `v`: `[1, K]` (0 for absent classes).
#[derive(Debug, Clone)]
pub struct ImbalanceLoss {
    /// L_imb.
    pub loss: Tensor<1>,
    /// v_k = p_k^(−β) (0 where class k is absent).
    pub v: Tensor<2>,
}

/// L_imb from the per-class cross-entropies `l_ck` `[1, K]` (see
/// [`ClassTargets::per_class_cross_entropy`]) and α, β `[1]` (DAO-SPEC step 2).
///
/// Absent classes (n_k = 0) are skipped: their log p_k is taken as 0 and their term masked, so no
/// `log 0` is ever evaluated and their gradients are exactly 0. With α = β = 0 the result is
/// `Σ_k p_k L_{c,k} = L_c`, the plain cross-entropy.
pub fn imbalance_loss(
    l_ck: Tensor<2>,
    targets: &ClassTargets,
    alpha: Tensor<1>,
    beta: Tensor<1>,
) -> ImbalanceLoss {
    let k = targets.num_classes();
    let device = l_ck.device();
    let p = targets.shares();
    let present: Vec<f32> = targets
        .counts
        .iter()
        .map(|&c| if c > 0 { 1.0 } else { 0.0 })
        .collect();
    let log_p: Vec<f32> = p
        .iter()
        .map(|&p| if p > 0.0 { p.ln() } else { 0.0 })
        .collect();
    let row = |values: Vec<f32>| Tensor::<2>::from_data(TensorData::new(values, [1, k]), &device);
    let (p, present, log_p) = (row(p), row(present), row(log_p));

    // v_k = p_k^(−β) = exp(−β log p_k), differentiable in β; masked to 0 for absent classes,
    // which removes their terms from the sum.
    let v = (log_p.clone() * beta.reshape([1, 1])).neg().exp() * present;
    let terms = v.clone() * (p * l_ck - log_p * alpha.reshape([1, 1]));
    ImbalanceLoss {
        loss: terms.sum(),
        v,
    }
}
