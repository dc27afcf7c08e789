//! [`LoraLinear`]: a burn `Linear` plus an optional PEFT-style low-rank adapter.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::tensor::Tensor;

use crate::{LoraConfig, LoraError};

/// The trainable low-rank update of one projection: `scaling · B A dropout(x)`.
///
/// `lora_a` and `lora_b` are bias-free burn `Linear`s, so their weights are stored `[in, r]`
/// and `[r, out]` (burn's layout) and burn-store's PyTorch adapter transposes PEFT's
/// `lora_A.weight [r, in]` / `lora_B.weight [out, r]` on load and back on save.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// `A`, `in → r`, Kaiming-uniform with `a = √5` (PyTorch `Linear`'s default).
    pub lora_a: Linear,
    /// `B`, `r → out`, zeros: a fresh adapter changes nothing.
    pub lora_b: Linear,
    /// On the adapter input only (the base path sees `x` unchanged).
    pub dropout: Dropout,
    #[module(skip)]
    scaling: f64,
    #[module(skip)]
    merged: bool,
}

impl LoraAdapter {
    /// `scaling` (`α/r`, or `α/√r` with rsLoRA).
    pub fn scaling(&self) -> f64 {
        self.scaling
    }

    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.lora_a.weight.lazy_shape()[1]
    }

    /// Whether `scaling·BA` is currently folded into the base weight.
    pub fn is_merged(&self) -> bool {
        self.merged
    }

    /// Number of trainable values (`r·in + out·r`).
    pub fn num_params(&self) -> usize {
        Module::num_params(&self.lora_a) + Module::num_params(&self.lora_b)
    }

    /// `scaling · B A dropout(x)`, through `r` (the `out × in` update is never built).
    ///
    /// # Shapes
    /// - input `[..., in]`, output `[..., out]`.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        self.forward_with(input, |dropout, x| dropout.forward(x))
    }

    /// [`forward`](Self::forward) with the caller's dropout: `apply_dropout(&self.dropout, x)`
    /// must return `x` with this dropout's probability applied (or `x` itself outside training).
    /// An encoder that draws its own masks (faster than burn's per-element sampler) passes its
    /// sampler here, so this crate needs nothing from it.
    pub fn forward_with<const D: usize>(
        &self,
        input: Tensor<D>,
        apply_dropout: impl FnOnce(&Dropout, Tensor<D>) -> Tensor<D>,
    ) -> Tensor<D> {
        self.forward_through(input, apply_dropout, |layer, x| layer.forward(x))
    }

    /// [`forward_with`](Self::forward_with), each `Linear`'s `x W + b` computed by `linear`
    /// (an encoder that has faster products on some device passes them here).
    pub fn forward_through<const D: usize>(
        &self,
        input: Tensor<D>,
        apply_dropout: impl FnOnce(&Dropout, Tensor<D>) -> Tensor<D>,
        linear: impl Fn(&Linear, Tensor<D>) -> Tensor<D>,
    ) -> Tensor<D> {
        let low_rank = linear(&self.lora_a, apply_dropout(&self.dropout, input));
        linear(&self.lora_b, low_rank).mul_scalar(self.scaling)
    }

    /// The update `(scaling · B A)ᵀ` in burn's weight layout (`A_burn · B_burn`), detached.
    ///
    /// # Shapes
    /// - output `[in, out]`, like `Linear::weight`.
    pub fn delta_weight(&self) -> Tensor<2> {
        let a = self.lora_a.weight.val().detach(); // [in, r]
        let b = self.lora_b.weight.val().detach(); // [r, out]
        a.matmul(b).mul_scalar(self.scaling)
    }
}

/// A linear layer that may carry a LoRA adapter.
///
/// Without an adapter (or with a merged one) `forward` is exactly `base.forward`.
///
/// # Shapes
/// - input `[..., d_input]`, output `[..., d_output]`.
#[derive(Module, Debug)]
pub struct LoraLinear {
    /// The (frozen, when adapted) pretrained projection, `W` stored `[in, out]` as burn does.
    pub base: Linear,
    /// The low-rank update, when this projection is adapted.
    pub adapter: Option<LoraAdapter>,
}

impl LoraLinear {
    /// Wraps a base layer with no adapter.
    pub fn new(base: Linear) -> Self {
        Self {
            base,
            adapter: None,
        }
    }

    /// `(d_input, d_output)` of the base projection.
    pub fn dims(&self) -> (usize, usize) {
        let dims = self.base.weight.lazy_shape();
        (dims[0], dims[1])
    }

    /// Adds a fresh adapter (A Kaiming-uniform, B zero) of `config`'s rank, scaling and dropout
    /// and freezes the base weight and bias. Replaces an existing unmerged adapter; refuses a
    /// merged one (its update lives in the base weight). `config.targets` is not read (it
    /// names layers of a whole model). A rank above `min(d_input, d_output)` is allowed, as
    /// PEFT allows it, but adds no expressive power over a full update of the weight.
    ///
    /// # Errors
    /// A rank of 0, an α that is not finite and positive, a dropout outside `[0, 1)`, or a
    /// merged adapter present.
    pub fn with_adapter(self, config: &LoraConfig) -> Result<Self, LoraError> {
        config.validate_adapter()?;
        if self.adapter.as_ref().is_some_and(|a| a.merged) {
            return Err(LoraError::AlreadyMerged);
        }
        let device = self.base.weight.lazy_device();
        let (d_input, d_output) = self.dims();
        // PyTorch's kaiming_uniform_(a = √5) on A [r, in]: bound = 1/√in, which is burn's
        // KaimingUniform with gain 1/√3 and fan_in = in.
        let lora_a = LinearConfig::new(d_input, config.rank)
            .with_bias(false)
            .with_initializer(Initializer::KaimingUniform {
                gain: 1.0 / 3f64.sqrt(),
                fan_out_only: false,
            })
            .init(&device);
        let lora_b = LinearConfig::new(config.rank, d_output)
            .with_bias(false)
            .with_initializer(Initializer::Zeros)
            .init(&device);
        Ok(Self {
            base: self.base.no_grad(),
            adapter: Some(LoraAdapter {
                lora_a,
                lora_b,
                dropout: DropoutConfig::new(config.dropout).init(),
                scaling: config.scaling(),
                merged: false,
            }),
        })
    }

    /// Sets the adapter's weights from PEFT's layout (`A [r, in]`, `B [out, r]`), keeping the
    /// adapter's scaling and dropout. Mostly for tests and conversions; checkpoints load
    /// through burn-store.
    pub fn set_adapter_weights(mut self, a: Tensor<2>, b: Tensor<2>) -> Result<Self, LoraError> {
        let (d_input, d_output) = self.dims();
        let adapter = self.adapter.as_mut().ok_or(LoraError::NoAdapter)?;
        if adapter.merged {
            return Err(LoraError::AlreadyMerged);
        }
        let r = adapter.rank();
        if a.dims() != [r, d_input] || b.dims() != [d_output, r] {
            return Err(LoraError::Shape(format!(
                "adapter weights of shapes A {:?}, B {:?}; expected A [{r}, {d_input}], B \
                 [{d_output}, {r}] (PEFT's layout)",
                a.dims(),
                b.dims()
            )));
        }
        let a = a.transpose();
        let b = b.transpose();
        adapter.lora_a.weight = Param::from_tensor(a);
        adapter.lora_b.weight = Param::from_tensor(b);
        Ok(self)
    }

    /// `W x + b`, plus `scaling · B A dropout(x)` when an unmerged adapter is present.
    ///
    /// # Shapes
    /// - input `[..., d_input]`, output `[..., d_output]`.
    ///
    /// # Panics
    /// An input whose last dimension is not `d_input` (as burn's `Linear::forward`).
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        self.forward_with(input, |dropout, x| dropout.forward(x))
    }

    /// [`forward`](Self::forward) with the caller's adapter dropout (see
    /// [`LoraAdapter::forward_with`]); not called without an active adapter.
    pub fn forward_with<const D: usize>(
        &self,
        input: Tensor<D>,
        apply_dropout: impl FnOnce(&Dropout, Tensor<D>) -> Tensor<D>,
    ) -> Tensor<D> {
        self.forward_through(input, apply_dropout, |layer, x| layer.forward(x))
    }

    /// [`forward_with`](Self::forward_with), each `Linear`'s `x W + b` (the base projection's
    /// and the adapter's) computed by `linear`: the same function, possibly faster products.
    pub fn forward_through<const D: usize>(
        &self,
        input: Tensor<D>,
        apply_dropout: impl FnOnce(&Dropout, Tensor<D>) -> Tensor<D>,
        linear: impl Fn(&Linear, Tensor<D>) -> Tensor<D>,
    ) -> Tensor<D> {
        match &self.adapter {
            Some(adapter) if !adapter.merged => {
                linear(&self.base, input.clone())
                    + adapter.forward_through(input, apply_dropout, linear)
            }
            _ => linear(&self.base, input),
        }
    }

    /// Folds the update into the base weight, `W' = W + scaling·BA` (same function, no extra
    /// latency). The adapter is kept (inactive) so [`unmerge`](Self::unmerge) can undo it.
    ///
    /// The merged state and the scaling are not module parameters, so a record saved from a
    /// merged layer that still holds its adapter would, loaded into a fresh adapted layer,
    /// apply the update twice: save layers unmerged, or after
    /// [`merge_and_unload`](Self::merge_and_unload).
    ///
    /// # Errors
    /// No adapter, already merged, or a non-finite update (the base weight is left unchanged).
    pub fn merge(mut self) -> Result<Self, LoraError> {
        let adapter = self.adapter.as_mut().ok_or(LoraError::NoAdapter)?;
        if adapter.merged {
            return Err(LoraError::AlreadyMerged);
        }
        let delta = adapter.delta_weight();
        if !delta.clone().is_finite().all().into_scalar::<bool>() {
            return Err(LoraError::NonFiniteUpdate);
        }
        adapter.merged = true;
        self.base.weight = shift_weight(self.base.weight, delta);
        Ok(self)
    }

    /// Takes the update back out of the base weight, `W = W' − scaling·BA`.
    pub fn unmerge(mut self) -> Result<Self, LoraError> {
        let adapter = self.adapter.as_mut().ok_or(LoraError::NoAdapter)?;
        if !adapter.merged {
            return Err(LoraError::NotMerged);
        }
        let delta = adapter.delta_weight();
        adapter.merged = false;
        self.base.weight = shift_weight(self.base.weight, delta.neg());
        Ok(self)
    }

    /// Merges (if not yet merged) and drops the adapter: a plain layer for export. A layer
    /// without adapter is returned as it is.
    pub fn merge_and_unload(self) -> Result<Self, LoraError> {
        let merged = match &self.adapter {
            None => return Ok(self),
            Some(adapter) if adapter.merged => self,
            Some(_) => self.merge()?,
        };
        Ok(Self {
            base: merged.base,
            adapter: None,
        })
    }
}

/// `W + delta` on the stored value, keeping the parameter's id, its save/load mappers and its
/// gradient requirement (a frozen base stays frozen, and a leaf).
fn shift_weight(weight: Param<Tensor<2>>, delta: Tensor<2>) -> Param<Tensor<2>> {
    weight.map(|w| {
        let require_grad = w.is_require_grad();
        let shifted = w.detach() + delta;
        if require_grad {
            shifted.require_grad()
        } else {
            shifted
        }
    })
}
