//! The two task heads on the encoder's first-token state `H` (DAO-SPEC "Model"): the
//! regression head `S` (polarity score) and the 5-class classification head `C`, together as
//! [`MultiTaskHeads`], with their PyTorch-named safetensors files.
//!
//! Dropout and DAO: within one training step DAO evaluates the heads up to three times on
//! copies of `H` (the loss, and `∂L_r/∂H`, `∂L_c/∂H` on a detached copy), and the norms must
//! belong to the same forward pass as the loss, so all evaluations must use the **same dropout
//! masks**. Sample them once per step with [`MultiTaskHeads::sample_dropout_masks`] and pass
//! them to every [`MultiTaskHeads::forward_with_masks`] call of that step:
//!
//! ```no_run
//! # use burn::tensor::{Device, Tensor};
//! # use heads::{HeadsConfig, MultiTaskHeads};
//! # let device = Device::flex().autodiff();
//! # let heads = HeadsConfig::default().init(64, &device).unwrap();
//! # let h: Tensor<2> = Tensor::zeros([10, 64], &device);
//! let masks = heads.sample_dropout_masks(10, &device); // None outside training
//! let out = heads.forward_with_masks(h.clone(), masks.as_ref());
//! let detached = h.detach().require_grad();
//! let again = heads.forward_with_masks(detached, masks.as_ref()); // same function as `out`
//! ```

mod error;
mod model;
mod store;

pub use error::HeadsError;
pub use model::{
    ClassificationHead, HeadDropoutMasks, HeadsConfig, HeadsOutput, MultiTaskHeads, RegressionHead,
};
