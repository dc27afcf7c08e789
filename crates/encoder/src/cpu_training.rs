//! The encoder's training forward and backward on the CPU, by hand over flat buffers.
//!
//! burn's autodiff runs the transformer layers as dozens of separate operations per layer, each
//! allocating, most on one thread, and keeps several `[batch, heads, seq, seq]` tensors per layer
//! (BENCHMARKS.md: the cores were busy 60–70 % of a training step). Here a layer's forward saves
//! only what its backward reads, and the backward is written out (LayerNorm, GELU, softmax,
//! dropout, the projections and their LoRA adapters), every product through `gemm` on every
//! core. The embeddings stay on burn's autodiff (a gather and one LayerNorm), and so do the
//! heads and the loss weighting: the encoder hands them `H` as a fresh leaf, and
//! [`TrainTape::backward`] takes `∂L/∂H` back.
//!
//! Same masks as the burn path (drawn from the same stream, in the same order), same function:
//! the gradients agree with burn's autodiff to float rounding (tested).
//!
//! Memory: what is cheap to make again is not kept — the attention probabilities (the same
//! product and softmax), the dropout masks of the attention, of the hidden states and of the
//! low-rank adapters ([`LazyKeep`]: a mask is a function of the element's index; the
//! adapters' AVX-512 kernels keep theirs as bits, a 32nd of their input's size), each
//! layer's input and its attention block's output (the LayerNorm outputs, from their
//! normalised rows) — and each layer's tape is freed once its backward is done (its GELU
//! input becomes GELU's output in place). Weights are read in place from burn's storage
//! (`host_view`). Where the embeddings are frozen (LoRA), the first layer's input gradient
//! is not made.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use burn::module::{Param, ParamId};
use burn::nn::{LayerNorm, Linear};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use lora::LoraLinear;
use rayon::prelude::*;

use crate::amx::{self, Start, Strided};
use crate::config::HiddenAct;
use crate::cpu_inference::{
    self, attention_probs, host, host_view, one_query_probs, overwrites_whole, product, project,
    project_new, real_tokens, weighted_values, Dense, HostTensor, LowRank, SharedOut,
};
use crate::fastmath;
use crate::low_rank;
use crate::model::{DropoutMasks, Encoder, EncoderInput, Layer, LazyKeep, ProductPrecision};
use crate::panel_product;

/// `dx (rows × k) (+)= dy (rows × n, row stride dy_rs) · wᵀ` for `w (k × n)`, in bf16
/// (`amx`) when `precision` asks for it and the kernel can take the shape.
#[allow(clippy::too_many_arguments)]
fn input_gradient(
    precision: ProductPrecision,
    dy: &[f32],
    dy_rs: usize,
    w: &[f32],
    (rows, k, n): (usize, usize, usize),
    dx: &mut [f32],
    accumulate: bool,
    alpha: f32,
) {
    input_gradient_of(
        precision,
        dy,
        dy_rs,
        (w, (1, n)),
        (rows, k, n),
        dx,
        accumulate,
        alpha,
    );
}

/// `dx (+)= alpha · dy · wt` for `wt (n × k)` at row and column strides `(wt_rs, wt_cs)`:
/// `(1, n)` for `w (k × n)` read transposed ([`input_gradient`]), `(k, 1)` for `wᵀ` laid out
/// row by row, which `gemm` packs row by row where it packs `w` read transposed element by
/// element ([`FrozenTransposes`]).
#[allow(clippy::too_many_arguments)]
fn input_gradient_of(
    precision: ProductPrecision,
    dy: &[f32],
    dy_rs: usize,
    (w, (wt_rs, wt_cs)): (&[f32], (usize, usize)),
    (rows, k, n): (usize, usize, usize),
    dx: &mut [f32],
    accumulate: bool,
    alpha: f32,
) {
    assert!(rows == 0 || dy.len() >= (rows - 1) * dy_rs + n);
    assert!(w.len() >= k * n && dx.len() >= rows * k);
    assert!((wt_rs, wt_cs) == (1, n) || (wt_rs, wt_cs) == (k, 1));
    let lhs = Strided::new(dy, dy_rs, 1);
    let rhs = Strided::new(w, wt_rs, wt_cs);
    if precision == ProductPrecision::Bf16
        && amx::product_bf16((rows, k, n), dx, k, Start::of(accumulate), lhs, rhs, alpha)
    {
        return;
    }
    // SAFETY: bounds checked above; dx is a distinct buffer.
    unsafe {
        product(
            (rows, k, n),
            dx.as_mut_ptr(),
            (k, 1),
            accumulate,
            dy.as_ptr(),
            (dy_rs, 1),
            w.as_ptr(),
            (wt_rs, wt_cs),
            alpha,
            true,
        )
    }
}

/// `dw (k × n) = alpha · xᵀ · dy` for `x (rows × k)`, `dy (rows × n, row stride dy_rs)`; in
/// bf16 like [`input_gradient`].
fn weight_gradient(
    precision: ProductPrecision,
    x: &[f32],
    dy: &[f32],
    dy_rs: usize,
    (rows, k, n): (usize, usize, usize),
    alpha: f32,
) -> Vec<f32> {
    assert!(x.len() >= rows * k && dy.len() >= (rows - 1) * dy_rs + n);
    let len = k * n;
    // A large f32 product writes every value of `dw` and reads none (`overwrites_whole`), so
    // `dw` is not zeroed first: that was one thread's `memset` of every weight gradient
    // while the other core waited (≈ 1.2 % of a roberta-base full step). Small or bf16
    // products (other `gemm` paths, the tiles) start from zeros.
    let mut dw = if precision == ProductPrecision::F32 && overwrites_whole((k, n)) {
        Vec::with_capacity(len)
    } else {
        fastmath::zeros(len)
    };
    let lhs = Strided::new(x, 1, k);
    let rhs = Strided::new(dy, dy_rs, 1);
    if precision == ProductPrecision::Bf16
        && amx::product_bf16((k, n, rows), &mut dw, n, Start::Zero, lhs, rhs, alpha)
    {
        return dw;
    }
    // SAFETY: bounds checked above; `dw` holds `len` places (its capacity, or its length when
    // zeroed), distinct from the inputs; the product writes all `len` of them (see above), so
    // every value is initialised when the length is set.
    unsafe {
        product(
            (k, n, rows),
            dw.as_mut_ptr(),
            (n, 1),
            false,
            x.as_ptr(),
            (1, k),
            dy.as_ptr(),
            (dy_rs, 1),
            alpha,
            true,
        );
        dw.set_len(len);
    }
    dw
}

/// Column sums of `dy (rows × n, row stride dy_rs)`: a bias gradient. Sums of 64-row chunks,
/// made in parallel and added in chunk order: the same bits whichever thread sums a chunk, and
/// however many threads there are (a parallel reduce's tree follows the work stealing, so its
/// sums changed from run to run).
fn column_sums(dy: &[f32], dy_rs: usize, rows: usize, n: usize) -> Vec<f32> {
    let chunk = 64;
    let partial: Vec<Vec<f32>> = (0..rows.div_ceil(chunk))
        .into_par_iter()
        .map(|c| {
            let mut sums = vec![0f32; n];
            for r in c * chunk..((c + 1) * chunk).min(rows) {
                fastmath::add(&mut sums, &dy[r * dy_rs..r * dy_rs + n]);
            }
            sums
        })
        .collect();
    let mut sums = vec![0f32; n];
    for p in partial {
        fastmath::add(&mut sums, &p);
    }
    sums
}

/// A dropout mask: element `i` is multiplied by `scale` where `keep[i]` is 1, by 0 elsewhere
/// (the same products as the burn path's `x * mask`).
struct Mask {
    keep: Vec<u8>,
    scale: f32,
}

impl Mask {
    /// The mask of `rows` rows of `row_len`, every `step`-th row of the stream's (see
    /// [`stream_rows`]).
    fn draw(
        masks: &mut DropoutMasks,
        dropout: &burn::nn::Dropout,
        (rows, row_len, step): (usize, usize, usize),
    ) -> Option<Self> {
        let lazy = stream_rows(masks, dropout, (rows, row_len, step))?;
        Some(Mask {
            keep: lazy.bytes(rows * row_len),
            scale: lazy.scale,
        })
    }

    /// `x[i] *= mask[offset + i]`.
    fn apply_at(&self, x: &mut [f32], offset: usize) {
        let scale = self.scale;
        let keep = &self.keep[offset..offset + x.len()];
        if x.len() <= 1 << 14 {
            return fastmath::mask_scale(x, keep, scale);
        }
        x.par_chunks_mut(1 << 14)
            .zip(keep.par_chunks(1 << 14))
            .for_each(|(x, keep)| fastmath::mask_scale(x, keep, scale));
    }

    /// `dst[i] += src[i] · mask[i]`.
    fn add_applied(&self, dst: &mut [f32], src: &[f32]) {
        let scale = self.scale;
        dst.par_chunks_mut(1 << 14)
            .zip(src.par_chunks(1 << 14).zip(self.keep.par_chunks(1 << 14)))
            .for_each(|(dst, (src, keep))| fastmath::mask_scale_add(dst, src, keep, scale));
    }

    /// `x ⊙ mask` as a new buffer.
    fn applied(&self, x: &[f32]) -> Vec<f32> {
        let mut out = fastmath::copy_of(&x[..self.keep.len()]);
        self.apply_at(&mut out, 0);
        out
    }
}

/// The dropout mask of `rows` rows of `row_len` elements that are every `step`-th row of a
/// `rows · step`-row block (a layer run for each sequence's first token: `step` = the sequence
/// length): the stream moves past the whole block, so every later mask, and these rows' bytes,
/// are those of the layer run for every token.
fn stream_rows(
    masks: &mut DropoutMasks,
    dropout: &burn::nn::Dropout,
    (rows, row_len, step): (usize, usize, usize),
) -> Option<LazyKeep> {
    masks
        .host_keep_lazy(dropout, rows * step * row_len)
        .map(|mask| mask.every_row(row_len, step))
}

/// `x[i] *= mask[i]`, the mask made chunk by chunk where it is applied (none is kept: the
/// backward makes the same bytes again).
fn apply_mask(x: &mut [f32], mask: Option<LazyKeep>) {
    let Some(mask) = mask else {
        return;
    };
    const CHUNK: usize = 1 << 14; // even: every chunk starts on a pair of the mask's stream
    x.par_chunks_mut(CHUNK).enumerate().for_each_init(
        || vec![0u8; CHUNK],
        |keep, (c, x)| {
            let keep = &mut keep[..x.len()];
            mask.fill(c * CHUNK, keep);
            fastmath::mask_scale(x, keep, mask.scale);
        },
    );
}

/// One gradient to hand to the optimizer.
struct Grad {
    id: ParamId,
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn trains<const D: usize>(param: &Param<Tensor<D>>) -> bool {
    param.val().is_require_grad()
}

/// A projection's host weights and what its backward needs.
struct LinearTape {
    /// The weight (burn's tensor, shared with the module: no copy is kept).
    weight: Tensor<2>,
    /// Of the base weight's products.
    precision: ProductPrecision,
    d_in: usize,
    d_out: usize,
    weight_id: Option<ParamId>,
    bias_id: Option<ParamId>,
    adapter: Option<AdapterTape>,
    /// Where the input gradient of a frozen weight takes `Wᵀ` from, and the weight's id
    /// ([`FrozenTransposes`]).
    transposes: Option<(FrozenTransposes, ParamId)>,
}

/// Transposed copies of frozen projection weights, kept across training steps for their
/// input-gradient products `dx = dy · Wᵀ`: `gemm` reads `W` (`[d_in, d_out]`) transposed
/// there and packs it element by element, ≈ 5 % of a LoRA backward for every weight; `Wᵀ`
/// laid out row by row packs as fast as the forward's `W`. A frozen weight does not change
/// within a run, so its copy is made at its first step. The encoder holds them for the
/// attention projections only (query, key, value, output: ≈ 14 MB for MiniLM, 113 MB for
/// roberta-base), what LoRA's 0.6× memory target leaves room for (BENCHMARKS.md). Only where
/// the panel products do not run ([`panel_product::available`]): they pack `W` read
/// transposed as fast as `Wᵀ`, so there the copies would be memory for nothing (8 MiB of
/// MiniLM LoRA's peak, "Twenty-third session").
///
/// An entry holds its weight's storage (read in place, [`HostTensor::Shared`]), so while it is
/// kept no other tensor can take that address: the parameter still holding the same storage
/// is checked by address, and a parameter given new values (loaded, merged) gets a fresh copy
/// at its next backward.
#[derive(Clone, Default)]
pub(crate) struct FrozenTransposes(Arc<Mutex<HashMap<ParamId, KeptTranspose>>>);

/// A frozen weight's storage (held) and its transposed copy.
type KeptTranspose = (HostTensor, Arc<Vec<f32>>);

impl std::fmt::Debug for FrozenTransposes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.0.lock().map(|map| map.len()).unwrap_or(0);
        write!(f, "FrozenTransposes({held} held)")
    }
}

impl FrozenTransposes {
    /// `Wᵀ` of the frozen weight `id` (`[d_in, d_out]`), made now or kept from an earlier
    /// step; `None` where the weight is not read in place (a copy has no stable address).
    fn get(&self, id: ParamId, weight: &Tensor<2>) -> Option<Arc<Vec<f32>>> {
        let view = host_view(weight.clone());
        if !matches!(view, HostTensor::Shared(_)) {
            return None;
        }
        let mut held = self.0.lock().ok()?;
        if let Some((kept, transposed)) = held.get(&id) {
            if kept.as_ptr() == view.as_ptr() && kept.len() == view.len() {
                return Some(transposed.clone());
            }
        }
        let [d_in, d_out] = weight.dims();
        let mut transposed = vec![0f32; d_in * d_out];
        low_rank::transpose(&view[..d_in * d_out], d_out, &mut transposed);
        let transposed = Arc::new(transposed);
        held.insert(id, (view, transposed.clone()));
        Some(transposed)
    }

    /// Lets go of the copy of `id` (a weight that trains now).
    fn forget(&self, id: ParamId) {
        if let Ok(mut held) = self.0.lock() {
            held.remove(&id);
        }
    }
}

struct AdapterTape {
    a: HostTensor,
    /// The factors laid out for the small-rank kernels ([`low_rank`]) where they run this
    /// adapter, and what their forward left (then `low` is empty).
    kernels: Option<(low_rank::Factors, low_rank::Saved)>,
    b: HostTensor,
    rank: usize,
    scaling: f32,
    a_id: Option<ParamId>,
    b_id: Option<ParamId>,
    /// The adapter's dropout mask on the input, drawn (`gemm` path) or, for the row kernels,
    /// made where it is used (`None`: no dropout).
    mask: Option<Mask>,
    lazy_mask: low_rank::Dropout,
    /// `dropout(x) · A`, `[rows, rank]` (the `gemm` path's).
    low: Vec<f32>,
}

/// Whether the projection's adapter (unmerged) runs on the small-rank kernels ([`low_rank`]).
fn on_kernels(layer: &LoraLinear) -> bool {
    layer
        .adapter
        .as_ref()
        .is_some_and(|a| !a.is_merged() && a.rank() <= low_rank::ROW_KERNEL_MAX_RANK)
}

/// Where a projection's forward writes its `[rows, d_out]` output.
enum Output<'a> {
    /// Columns `col0 ..` of a buffer already there (row stride `out_rs`).
    Columns {
        out: &'a mut [f32],
        out_rs: usize,
        col0: usize,
    },
    /// A new buffer, put here: written once, not zeroed first, where the base product writes
    /// it whole ([`cpu_inference::project_new`]).
    New(&'a mut Vec<f32>),
}

impl LinearTape {
    /// `output = x W + b (+ scaling · dropout(x) A B)`, drawing the adapter's mask
    /// (`x`'s rows being every `step`-th of the mask stream's, [`stream_rows`]); the base
    /// weight's products (here and in the backward) in `precision`.
    fn forward(
        layer: &LoraLinear,
        precision: ProductPrecision,
        x: &[f32],
        (rows, step): (usize, usize),
        output: Output<'_>,
        masks: &mut DropoutMasks,
    ) -> Self {
        let (d_in, d_out) = layer.dims();
        let Linear { weight, bias } = &layer.base;
        let weight_tensor = weight.val();
        let w = host_view(weight_tensor.clone());
        let bias_values = bias.as_ref().map(|b| host_view(b.val()));
        let dense = Dense {
            weight: &w,
            bias: bias_values.as_deref(),
            d_in,
            d_out,
        };
        let Some(adapter) = layer.adapter.as_ref().filter(|a| !a.is_merged()) else {
            match output {
                Output::Columns { out, out_rs, col0 } => {
                    project(dense, precision, x, rows, out, out_rs, col0, None);
                }
                Output::New(out) => *out = project_new(dense, precision, x, rows),
            }
            return LinearTape {
                weight: weight_tensor,
                precision,
                d_in,
                d_out,
                weight_id: trains(weight).then_some(weight.id),
                bias_id: bias.as_ref().filter(|b| trains(b)).map(|b| b.id),
                adapter: None,
                transposes: None,
            };
        };
        let x = &x[..rows * d_in];
        if on_kernels(layer) {
            let (mut tape, bias) = Self::on_kernels(layer, precision, (rows, step), masks);
            let (out, out_rs) = match output {
                Output::Columns { out, out_rs, col0 } => {
                    tape.base_product(x, rows, out, out_rs, col0);
                    (&mut out[col0..], out_rs)
                }
                Output::New(out) => {
                    *out = tape.base_product_new(x, rows);
                    (&mut out[..], d_out)
                }
            };
            let adapter = tape.adapter.as_mut().expect("an adapter on the kernels");
            let (factors, saved) = adapter.kernels.as_mut().expect("its kernels' factors");
            let out = (out, out_rs);
            *saved = low_rank::forward(factors, adapter.lazy_mask, x, out, bias.as_deref());
            return tape;
        }
        let (out, out_rs, col0) = match output {
            Output::Columns { out, out_rs, col0 } => (out, out_rs, col0),
            Output::New(out) => {
                *out = fastmath::zeros(rows * d_out);
                (&mut out[..], d_out, 0)
            }
        };
        let a = host_view(adapter.lora_a.weight.val());
        let b = host_view(adapter.lora_b.weight.val());
        let (rank, scaling) = (adapter.rank(), adapter.scaling() as f32);
        let (low, kernels, mask, lazy_mask) = {
            let mask = Mask::draw(masks, &adapter.dropout, (rows, d_in, step));
            let dropped = mask.as_ref().map(|mask| mask.applied(x));
            let low_rank = LowRank {
                input: dropped.as_deref().unwrap_or(x),
                a: &a,
                b: &b,
                rank,
                scaling,
            };
            let low = project(dense, precision, x, rows, out, out_rs, col0, Some(low_rank))
                .expect("an adapter returns its low-rank input");
            (low, None, mask, None)
        };
        let adapter = Some(AdapterTape {
            a_id: trains(&adapter.lora_a.weight).then_some(adapter.lora_a.weight.id),
            b_id: trains(&adapter.lora_b.weight).then_some(adapter.lora_b.weight.id),
            a,
            kernels,
            b,
            rank,
            scaling,
            mask,
            lazy_mask,
            low,
        });
        LinearTape {
            weight: weight_tensor,
            precision,
            d_in,
            d_out,
            weight_id: trains(weight).then_some(weight.id),
            bias_id: bias.as_ref().filter(|b| trains(b)).map(|b| b.id),
            adapter,
            transposes: None,
        }
    }

    /// The tape of a projection whose adapter runs on the small-rank kernels ([`on_kernels`]),
    /// before any product: the factors laid out, the adapter's mask reserved (the caller keeps
    /// the mask stream's order), `Saved` empty; and the base bias, which the adapter's update
    /// adds (one pass over the output fewer than a product starting from it).
    fn on_kernels(
        layer: &LoraLinear,
        precision: ProductPrecision,
        (rows, step): (usize, usize),
        masks: &mut DropoutMasks,
    ) -> (Self, Option<HostTensor>) {
        let (d_in, d_out) = layer.dims();
        let Linear { weight, bias } = &layer.base;
        let adapter = layer.adapter.as_ref().expect("an unmerged adapter");
        let a = host_view(adapter.lora_a.weight.val());
        let b = host_view(adapter.lora_b.weight.val());
        let (rank, scaling) = (adapter.rank(), adapter.scaling() as f32);
        let factors = low_rank::Factors::new(&a, &b, scaling, (d_in, rank, d_out));
        let lazy_mask = stream_rows(masks, &adapter.dropout, (rows, d_in, step));
        let tape = LinearTape {
            weight: weight.val(),
            precision,
            d_in,
            d_out,
            weight_id: trains(weight).then_some(weight.id),
            bias_id: bias.as_ref().filter(|b| trains(b)).map(|b| b.id),
            adapter: Some(AdapterTape {
                a_id: trains(&adapter.lora_a.weight).then_some(adapter.lora_a.weight.id),
                b_id: trains(&adapter.lora_b.weight).then_some(adapter.lora_b.weight.id),
                a,
                kernels: Some((factors, low_rank::Saved::default())),
                b,
                rank,
                scaling,
                mask: None,
                lazy_mask,
                low: Vec::new(),
            }),
            transposes: None,
        };
        (tape, bias.as_ref().map(|b| host_view(b.val())))
    }

    /// Takes the input gradient's `Wᵀ` from `cache` where the weight is frozen and its products
    /// f32; lets go of a kept copy where the weight trains.
    fn transposes_from(&mut self, layer: &LoraLinear, cache: &FrozenTransposes) {
        let id = layer.base.weight.id;
        // With the panel products `W` read transposed packs as fast as `Wᵀ` would
        // (`panel_product`'s 16 × 16 register transposes): no copy is kept.
        if self.weight_id.is_some() || panel_product::available() {
            cache.forget(id);
        } else if self.precision == ProductPrecision::F32 {
            self.transposes = Some((cache.clone(), id));
        }
    }

    /// The factors and mask of an adapter on the small-rank kernels.
    fn kernel_factors(&self) -> (&low_rank::Factors, low_rank::Dropout) {
        let adapter = self.adapter.as_ref().expect("an adapter on the kernels");
        let (factors, _) = adapter.kernels.as_ref().expect("its kernels' factors");
        (factors, adapter.lazy_mask)
    }

    /// `out[.., col0..] = x W`, the base product alone (no bias, no adapter).
    fn base_product(&self, x: &[f32], rows: usize, out: &mut [f32], out_rs: usize, col0: usize) {
        let w = host_view(self.weight.clone());
        project(
            self.base_dense(&w),
            self.precision,
            x,
            rows,
            out,
            out_rs,
            col0,
            None,
        );
    }

    /// `x W` as a new `[rows, d_out]` buffer ([`base_product`](Self::base_product), the
    /// buffer not zeroed first where the product writes it whole).
    fn base_product_new(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let w = host_view(self.weight.clone());
        project_new(self.base_dense(&w), self.precision, x, rows)
    }

    /// The base weight `w` (this projection's, on the host) without its bias.
    fn base_dense<'a>(&self, w: &'a [f32]) -> Dense<'a> {
        Dense {
            weight: w,
            bias: None,
            d_in: self.d_in,
            d_out: self.d_out,
        }
    }

    /// Whether only the adapter's small-rank kernels read this projection's input in the
    /// backward (its base weight does not train), so that the input may be given before GELU
    /// ([`low_rank::Input::BeforeGelu`]).
    fn takes_input_before_gelu(&self) -> bool {
        self.weight_id.is_none() && self.adapter_on_kernels()
    }

    /// Whether the adapter (unmerged) runs on the small-rank kernels.
    fn adapter_on_kernels(&self) -> bool {
        self.adapter
            .as_ref()
            .is_some_and(|adapter| adapter.kernels.is_some())
    }

    /// Gradients of the weights into `grads`, and `dx (+)= dy · ∂out/∂x` (`None`: nothing
    /// reads the input's gradient). `dy` is the `[rows, d_out]` block at row stride `dy_rs`;
    /// `input` the forward's input ([`low_rank::Input::BeforeGelu`] only where
    /// [`takes_input_before_gelu`](Self::takes_input_before_gelu): then `dx` is the gradient
    /// of GELU's input, and `accumulate` must be false).
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        input: low_rank::Input<'_>,
        dy: &[f32],
        dy_rs: usize,
        rows: usize,
        mut dx: Option<&mut [f32]>,
        accumulate: bool,
        grads: &mut Vec<Grad>,
    ) {
        let (d_in, d_out) = (self.d_in, self.d_out);
        let x = match input {
            low_rank::Input::Rows(x) => x,
            low_rank::Input::BeforeGelu(_) => {
                assert!(self.takes_input_before_gelu() && !accumulate);
                &[]
            }
        };
        self.base_backward(x, dy, dy_rs, rows, dx.as_deref_mut(), accumulate, grads);
        if let Some(adapter) = &self.adapter {
            let rank = adapter.rank;
            if adapter.kernels.is_some() {
                let input = match input {
                    low_rank::Input::Rows(x) => low_rank::Input::Rows(&x[..rows * d_in]),
                    low_rank::Input::BeforeGelu(pre) => {
                        low_rank::Input::BeforeGelu(&pre[..rows * d_in])
                    }
                };
                Self::kernels_backward(&[(self, dy)], input, dy_rs, dx, grads);
                return;
            }
            if let Some(id) = adapter.b_id {
                grads.push(Grad {
                    id,
                    shape: vec![rank, d_out],
                    values: weight_gradient(
                        ProductPrecision::F32,
                        &adapter.low,
                        dy,
                        dy_rs,
                        (rows, rank, d_out),
                        adapter.scaling,
                    ),
                });
            }
            // ∂L/∂low = scaling · dy · Bᵀ
            let mut d_low = vec![0f32; rows * rank];
            input_gradient(
                ProductPrecision::F32,
                dy,
                dy_rs,
                &adapter.b,
                (rows, rank, d_out),
                &mut d_low,
                false,
                adapter.scaling,
            );
            if let Some(id) = adapter.a_id {
                let dropped: Vec<f32>;
                let input = match &adapter.mask {
                    Some(mask) => {
                        dropped = mask.applied(x);
                        &dropped[..]
                    }
                    None => x,
                };
                grads.push(Grad {
                    id,
                    shape: vec![d_in, rank],
                    values: weight_gradient(
                        ProductPrecision::F32,
                        input,
                        &d_low,
                        rank,
                        (rows, d_in, rank),
                        1.0,
                    ),
                });
            }
            let Some(dx) = dx else {
                return;
            };
            match &adapter.mask {
                None => input_gradient(
                    ProductPrecision::F32,
                    &d_low,
                    rank,
                    &adapter.a,
                    (rows, d_in, rank),
                    dx,
                    true,
                    1.0,
                ),
                Some(mask) => {
                    let mut d_dropped = fastmath::zeros(rows * d_in);
                    input_gradient(
                        ProductPrecision::F32,
                        &d_low,
                        rank,
                        &adapter.a,
                        (rows, d_in, rank),
                        &mut d_dropped,
                        false,
                        1.0,
                    );
                    mask.add_applied(dx, &d_dropped);
                }
            }
        }
    }
}

impl LinearTape {
    /// The base weight's and bias's gradients (where they train) and `dx (+)= dy · Wᵀ`.
    #[allow(clippy::too_many_arguments)]
    fn base_backward(
        &self,
        x: &[f32],
        dy: &[f32],
        dy_rs: usize,
        rows: usize,
        dx: Option<&mut [f32]>,
        accumulate: bool,
        grads: &mut Vec<Grad>,
    ) {
        let (d_in, d_out) = (self.d_in, self.d_out);
        if let Some(id) = self.weight_id {
            grads.push(Grad {
                id,
                shape: vec![d_in, d_out],
                values: weight_gradient(self.precision, x, dy, dy_rs, (rows, d_in, d_out), 1.0),
            });
        }
        if let Some(id) = self.bias_id {
            grads.push(Grad {
                id,
                shape: vec![d_out],
                values: column_sums(dy, dy_rs, rows, d_out),
            });
        }
        let Some(dx) = dx else {
            return;
        };
        let transposed = self
            .transposes
            .as_ref()
            .and_then(|(cache, id)| cache.get(*id, &self.weight));
        let dims = (rows, d_in, d_out);
        match transposed {
            Some(transposed) => {
                let (f32, wt) = (ProductPrecision::F32, (&transposed[..], (d_in, 1)));
                input_gradient_of(f32, dy, dy_rs, wt, dims, dx, accumulate, 1.0);
            }
            None => {
                let weight = host_view(self.weight.clone());
                input_gradient(
                    self.precision,
                    dy,
                    dy_rs,
                    &weight,
                    dims,
                    dx,
                    accumulate,
                    1.0,
                );
            }
        }
    }

    /// The adapters' gradients of projections that read the same `input` and whose adapters
    /// run on the small-rank kernels (each with its output's gradient, at row stride
    /// `dy_rs`), adding each input gradient to `dx`: [`low_rank::backward`], one pass over
    /// the input and `dx` for all of them.
    fn kernels_backward(
        tapes: &[(&LinearTape, &[f32])],
        input: low_rank::Input<'_>,
        dy_rs: usize,
        dx: Option<&mut [f32]>,
        grads: &mut Vec<Grad>,
    ) {
        let kernels: Vec<low_rank::Adapter<'_>> = tapes
            .iter()
            .map(|&(tape, dy)| {
                let (factors, dropout) = tape.kernel_factors();
                let adapter = tape.adapter.as_ref().expect("a tape with an adapter");
                let (_, saved) = adapter.kernels.as_ref().expect("the kernels' adapter");
                low_rank::Adapter {
                    factors,
                    dropout,
                    saved,
                    dy,
                    dy_rs,
                }
            })
            .collect();
        let gradients = low_rank::backward(&kernels, input, dx);
        for ((tape, _), (d_a, d_b)) in tapes.iter().zip(gradients) {
            let adapter = tape.adapter.as_ref().expect("a tape with an adapter");
            let rank = adapter.rank;
            if let Some(id) = adapter.a_id {
                grads.push(Grad {
                    id,
                    shape: vec![tape.d_in, rank],
                    values: d_a,
                });
            }
            if let Some(id) = adapter.b_id {
                grads.push(Grad {
                    id,
                    shape: vec![rank, tape.d_out],
                    values: d_b,
                });
            }
        }
    }

    /// [`backward`](Self::backward) of projections that read the same input rows (`x`,
    /// `[rows, d_in]`), accumulating into `dx`: where all their adapters run on the
    /// small-rank kernels, the base products first, then the adapters together
    /// ([`kernels_backward`](Self::kernels_backward)).
    fn backward_sharing_input(
        tapes: &[(&LinearTape, &[f32])],
        x: &[f32],
        dy_rs: usize,
        rows: usize,
        mut dx: Option<&mut [f32]>,
        grads: &mut Vec<Grad>,
    ) {
        if !tapes.iter().all(|(tape, _)| tape.adapter_on_kernels()) {
            for &(tape, dy) in tapes {
                let input = low_rank::Input::Rows(x);
                tape.backward(input, dy, dy_rs, rows, dx.as_deref_mut(), true, grads);
            }
            return;
        }
        for &(tape, dy) in tapes {
            tape.base_backward(x, dy, dy_rs, rows, dx.as_deref_mut(), true, grads);
        }
        let d_in = tapes.first().map_or(0, |(tape, _)| tape.d_in);
        let input = low_rank::Input::Rows(&x[..rows * d_in]);
        Self::kernels_backward(tapes, input, dy_rs, dx, grads);
    }
}

/// A LayerNorm's parameters and, after its forward, the normalised rows and `1/σ`.
struct NormTape {
    gamma: HostTensor,
    beta: Option<HostTensor>,
    gamma_id: Option<ParamId>,
    beta_id: Option<ParamId>,
    normalized: Vec<f32>,
    inv_std: Vec<f32>,
}

impl NormTape {
    /// `x = LayerNorm(x + residual)` in place, saving what the backward needs.
    fn forward(norm: &LayerNorm, epsilon: f64, x: &mut [f32], residual: &[f32]) -> Self {
        let gamma = host_view(norm.gamma.val());
        let beta = norm.beta.as_ref().map(|b| host_view(b.val()));
        let d = gamma.len();
        let rows = x.len() / d;
        let mut normalized = fastmath::zeros(x.len());
        let mut inv_std = vec![0f32; rows];
        let eps = epsilon as f32;
        let zeros;
        let beta_or_zero: &[f32] = match &beta {
            Some(beta) => beta,
            None => {
                zeros = vec![0.0; d];
                &zeros
            }
        };
        x.par_chunks_mut(d)
            .zip(residual.par_chunks(d))
            .zip(normalized.par_chunks_mut(d).zip(inv_std.par_iter_mut()))
            .for_each(|((row, res), (hat, inv))| {
                fastmath::add_and_normalize(row, res, &gamma, beta_or_zero, eps, hat, inv)
            });
        NormTape {
            gamma_id: trains(&norm.gamma).then_some(norm.gamma.id),
            beta_id: norm.beta.as_ref().filter(|b| trains(b)).map(|b| b.id),
            gamma,
            beta,
            normalized,
            inv_std,
        }
    }

    /// The LayerNorm's output into `out` (resized; every value overwritten), made again from
    /// the normalised rows (the same values as the forward wrote): cheaper to redo than to
    /// keep, one pass over `[rows, d]`.
    fn output_into(&self, out: &mut Vec<f32>) {
        let d = self.gamma.len();
        let zeros = vec![0f32; d];
        let beta: &[f32] = self.beta.as_deref().unwrap_or(&zeros);
        reused(out, self.normalized.len())
            .par_chunks_mut(d * 64)
            .zip(self.normalized.par_chunks(d * 64))
            .for_each(|(out, hat)| {
                for (out, hat) in out.chunks_exact_mut(d).zip(hat.chunks_exact(d)) {
                    fastmath::scale_shift(out, hat, &self.gamma, beta);
                }
            });
    }

    /// Lets go of the saved rows (after the backward, their last reader).
    fn release(&mut self) {
        self.normalized = Vec::new();
        self.inv_std = Vec::new();
    }

    /// `∂L/∂(input)` from `∂L/∂(output)` (in place), with γ's and β's gradients.
    fn backward(&self, dy: &mut [f32], grads: &mut Vec<Grad>) {
        let d = self.gamma.len();
        if let Some(id) = self.gamma_id {
            let mut dg = vec![0f32; d];
            let partial: Vec<Vec<f32>> = dy
                .par_chunks(d * 64)
                .zip(self.normalized.par_chunks(d * 64))
                .map(|(g, h)| {
                    let mut acc = vec![0f32; d];
                    for (g, h) in g.chunks(d).zip(h.chunks(d)) {
                        fastmath::multiply_add(&mut acc, g, h);
                    }
                    acc
                })
                .collect();
            for p in partial {
                for (a, b) in dg.iter_mut().zip(p) {
                    *a += b;
                }
            }
            grads.push(Grad {
                id,
                shape: vec![d],
                values: dg,
            });
        }
        if let Some(id) = self.beta_id {
            grads.push(Grad {
                id,
                shape: vec![d],
                values: column_sums(dy, d, dy.len() / d, d),
            });
        }
        dy.par_chunks_mut(d)
            .zip(self.normalized.par_chunks(d).zip(self.inv_std.par_iter()))
            .for_each(|(g, (h, inv))| fastmath::normalize_backward(g, h, &self.gamma, *inv));
    }
}

/// What one layer's backward reads.
struct LayerTape {
    /// The layer's input, kept by the first layer only: any other's is the output of the
    /// layer before, made again from that layer's `norm2` ([`NormTape::output_into`]).
    input: Option<Vec<f32>>,
    /// Run for each sequence's first token only past the keys and values ([`layer_forward`]):
    /// the queries are those rows of `qkv`, and the buffers and tapes after the attention have
    /// `batch` rows.
    first_tokens: bool,
    qkv: Vec<f32>,
    /// Query, key, value.
    projections: Vec<LinearTape>,
    /// Which keys are real, `[batch, seq]` (for the attention probabilities, made again).
    keep: Vec<bool>,
    probs_mask: Option<LazyKeep>,
    context: Vec<f32>,
    attention_output: LinearTape,
    attention_mask: Option<LazyKeep>,
    /// Its output (`attended`, the feed-forward block's input) is made again in the backward.
    norm1: NormTape,
    intermediate: LinearTape,
    /// GELU's input, `[rows, intermediate]` (its value and derivative are recomputed in the
    /// backward: one pass, where keeping both would cost two buffers of this size per layer).
    pre_activation: Vec<f32>,
    output: LinearTape,
    output_mask: Option<LazyKeep>,
    norm2: NormTape,
}

/// The shapes of one batch.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    seq: usize,
    hidden: usize,
    heads: usize,
    intermediate: usize,
}

impl Dims {
    fn rows(&self) -> usize {
        self.batch * self.seq
    }
    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// One layer's forward over `x` in place; `keep_input`: keep the layer's input in its tape
/// (the first layer; see [`LayerTape::input`]). `first_tokens`: only each sequence's first
/// token's output is read (the last layer: `H`), so keys and values are made for every token
/// and the rest (query, attention, output projection, feed-forward, LayerNorms) for the first
/// tokens only, with the same dropout bytes those rows get in the whole layer; the other rows
/// of `x` are then left as they were.
#[allow(clippy::too_many_arguments)]
fn layer_forward(
    layer: &Layer,
    x: &mut [f32],
    keep: &[bool],
    dims: Dims,
    epsilon: f64,
    masks: &mut DropoutMasks,
    keep_input: bool,
    first_tokens: bool,
    precision: ProductPrecision,
    transposes: &FrozenTransposes,
) -> LayerTape {
    let Dims {
        batch,
        seq,
        hidden,
        heads,
        ..
    } = dims;
    let rows = dims.rows();
    // The rows past the attention, and their step in the mask streams.
    let (out_rows, step) = if first_tokens {
        (batch, seq)
    } else {
        (rows, 1)
    };
    let input = fastmath::copy_of(x);
    let firsts = first_tokens.then(|| first_rows(&input, dims));
    // The attention's and feed-forward's residual input, `[out_rows, hidden]`.
    let residual: &[f32] = firsts.as_deref().unwrap_or(&input);
    let attention = &layer.attention.self_attention;
    let mut qkv = fastmath::zeros(rows * 3 * hidden);
    let mut projections = Vec::with_capacity(3);
    for (i, projection) in [&attention.query, &attention.key, &attention.value]
        .into_iter()
        .enumerate()
    {
        // Queries of the first tokens only (at their rows of qkv), keys and values of all.
        let (x, rows_here, step, out_rs) = if i == 0 {
            (residual, out_rows, step, step * 3 * hidden)
        } else {
            (&input[..], rows, 1, 3 * hidden)
        };
        let mut tape = LinearTape::forward(
            projection,
            precision,
            x,
            (rows_here, step),
            Output::Columns {
                out: &mut qkv,
                out_rs,
                col0: i * hidden,
            },
            masks,
        );
        tape.transposes_from(projection, transposes);
        projections.push(tape);
    }

    // Attention per (sequence, head): softmax(scale · q kᵀ) (padded keys excluded), dropout, · v.
    let probs_mask = masks
        .host_keep_lazy(&attention.dropout, batch * heads * seq * seq)
        .map(|mask| mask.every_row(seq, step));
    let mut context = fastmath::zeros(out_rows * hidden);
    if first_tokens {
        context
            .par_chunks_mut(hidden)
            .enumerate()
            .for_each(|(b, context)| {
                let keep = &keep[b * seq..(b + 1) * seq];
                first_token_attention(&qkv, keep, dims, b, probs_mask, context);
            });
    } else {
        // Neither the probabilities nor their dropout mask are kept: the backward makes both
        // again (`attention_probs`, `LazyKeep::fill`).
        let dims = (batch, seq, hidden, heads);
        cpu_inference::attention((&mut qkv, None), &mut context, keep, dims, probs_mask);
    }

    let mut attended = Vec::new();
    let mut attention_output = LinearTape::forward(
        &layer.attention.output.dense,
        precision,
        &context,
        (out_rows, step),
        Output::New(&mut attended),
        masks,
    );
    attention_output.transposes_from(&layer.attention.output.dense, transposes);
    let attention_mask = stream_rows(
        masks,
        &layer.attention.output.dropout,
        (out_rows, hidden, step),
    );
    apply_mask(&mut attended, attention_mask);
    let norm1 = NormTape::forward(
        &layer.attention.output.layer_norm,
        epsilon,
        &mut attended,
        residual,
    );

    let mut pre_activation = Vec::new();
    let mut first_outputs = vec![0f32; if first_tokens { out_rows * hidden } else { 0 }];
    let out: &mut [f32] = if first_tokens { &mut first_outputs } else { x };
    let (expand, contract) = (&layer.intermediate.dense, &layer.output.dense);
    let (intermediate_tape, output) = if on_kernels(expand) && on_kernels(contract) {
        // LoRA: the intermediate adapter's update, GELU and the output adapter's low-rank rows
        // in one pass over the pre-activation, block by block (the masks reserved in the
        // same order as apart).
        let rows_step = (out_rows, step);
        let (mut expand, bias) = LinearTape::on_kernels(expand, precision, rows_step, masks);
        pre_activation = expand.base_product_new(&attended, out_rows);
        let (mut contract, contract_bias) =
            LinearTape::on_kernels(contract, precision, rows_step, masks);
        let (first, first_mask) = expand.kernel_factors();
        let (second, second_mask) = contract.kernel_factors();
        let (first_saved, expanded, second_saved) = low_rank::forward_through_gelu(
            (first, first_mask, bias.as_deref()),
            &attended[..out_rows * hidden],
            &mut pre_activation,
            (second, second_mask),
        );
        contract.base_product(&expanded, out_rows, out, hidden, 0);
        low_rank::forward_update(
            second,
            &second_saved,
            (out, hidden),
            contract_bias.as_deref(),
        );
        for (tape, saved) in [(&mut expand, first_saved), (&mut contract, second_saved)] {
            let adapter = tape.adapter.as_mut().expect("an adapter on the kernels");
            adapter.kernels.as_mut().expect("its kernels' factors").1 = saved;
        }
        (expand, contract)
    } else {
        let expand = LinearTape::forward(
            expand,
            precision,
            &attended,
            (out_rows, step),
            Output::New(&mut pre_activation),
            masks,
        );
        let expanded = fastmath::gelu_of(&pre_activation);
        let contract = LinearTape::forward(
            contract,
            precision,
            &expanded,
            (out_rows, step),
            Output::Columns {
                out,
                out_rs: hidden,
                col0: 0,
            },
            masks,
        );
        (expand, contract)
    };
    let output_mask = stream_rows(masks, &layer.output.dropout, (out_rows, hidden, step));
    apply_mask(out, output_mask);
    let norm2 = NormTape::forward(&layer.output.layer_norm, epsilon, out, &attended);
    if first_tokens {
        for (b, row) in first_outputs.chunks_exact(hidden).enumerate() {
            x[b * seq * hidden..][..hidden].copy_from_slice(row);
        }
    }
    LayerTape {
        input: keep_input.then_some(input),
        first_tokens,
        qkv,
        projections,
        keep: keep.to_vec(),
        probs_mask,
        context,
        attention_output,
        attention_mask,
        norm1,
        intermediate: intermediate_tape,
        pre_activation,
        output,
        output_mask,
        norm2,
    }
}

/// Each sequence's first row of `x` (`[batch · seq, hidden]`), `[batch, hidden]`.
fn first_rows(x: &[f32], dims: Dims) -> Vec<f32> {
    cpu_inference::first_rows(x, (dims.batch, dims.seq, dims.hidden))
}

/// Sequence `b`'s first query against all its keys, every head: `context` (`[hidden]`) ←
/// `dropout(softmax(scale · q kᵀ)) · v` (padded keys excluded). `probs_mask` is the first
/// query rows' mask: pair `(b, h)`'s row at `(b · heads + h) · seq`.
fn first_token_attention(
    qkv: &[f32],
    keep: &[bool],
    dims: Dims,
    b: usize,
    probs_mask: Option<LazyKeep>,
    context: &mut [f32],
) {
    let (seq, hidden, heads) = (dims.seq, dims.hidden, dims.heads);
    let head_dim = dims.head_dim();
    let mut probs = vec![0f32; seq];
    let mut bytes = vec![0u8; seq];
    for h in 0..heads {
        first_query_probs(qkv, keep, dims, (b, h), &mut probs);
        if let Some(mask) = probs_mask {
            mask.fill((b * heads + h) * seq, &mut bytes);
            fastmath::mask_scale(&mut probs, &bytes, mask.scale);
        }
        let value =
            |t: usize| &qkv[(b * seq + t) * 3 * hidden + 2 * hidden + h * head_dim..][..head_dim];
        weighted_values(
            &probs,
            value,
            &mut context[h * head_dim..(h + 1) * head_dim],
        );
    }
}

/// Pair `(b, h)`'s attention probabilities of its first query, `probs` (`[seq]`).
fn first_query_probs(
    qkv: &[f32],
    keep: &[bool],
    dims: Dims,
    (b, h): (usize, usize),
    probs: &mut [f32],
) {
    let (seq, hidden) = (dims.seq, dims.hidden);
    let head_dim = dims.head_dim();
    let row = |t: usize| &qkv[(b * seq + t) * 3 * hidden + h * head_dim..];
    let key = |t: usize| &row(t)[hidden..][..head_dim];
    one_query_probs(&row(0)[..head_dim], key, keep, probs);
}

/// [`first_token_attention`]'s backward for sequence `b`: from `d_context` (`[hidden]`), its
/// block of `d_qkv` (`[seq, 3 · hidden]`, zeros on entry) gets the first query's gradient and
/// every key's and value's.
fn first_token_attention_backward(
    qkv: &[f32],
    keep: &[bool],
    dims: Dims,
    b: usize,
    probs_mask: Option<LazyKeep>,
    d_context: &[f32],
    d_qkv: &mut [f32],
) {
    let (seq, hidden, heads) = (dims.seq, dims.hidden, dims.heads);
    let head_dim = dims.head_dim();
    let stride = 3 * hidden;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let row = |t: usize| &qkv[(b * seq + t) * stride..][..stride];
    let mut probs = vec![0f32; seq];
    let mut d_probs = vec![0f32; seq];
    let mut bytes = vec![0u8; seq];
    for h in 0..heads {
        let columns = h * head_dim..(h + 1) * head_dim;
        let dc = &d_context[columns.clone()];
        first_query_probs(qkv, keep, dims, (b, h), &mut probs);
        let mask = probs_mask.map(|mask| {
            mask.fill((b * heads + h) * seq, &mut bytes);
            mask.scale
        });
        // What the dropout multiplies probability `t` (and so its gradient) by.
        let factor = |t: usize| match mask {
            Some(scale) if bytes[t] != 0 => scale,
            Some(_) => 0.0,
            None => 1.0,
        };
        for t in 0..seq {
            // dV_t = p̃_t · dC; dp̃_t = dC · v_t (then through the dropout).
            let v = &row(t)[2 * hidden..][columns.clone()];
            let weight = probs[t] * factor(t);
            let dv = &mut d_qkv[t * stride + 2 * hidden..][columns.clone()];
            for (d, &c) in dv.iter_mut().zip(dc) {
                *d = weight * c;
            }
            let dp: f32 = dc.iter().zip(v).map(|(c, v)| c * v).sum();
            d_probs[t] = dp * factor(t);
        }
        // dS = P ⊙ (dP − rowsum(dP ⊙ P)); padded keys have P = 0, so dS = 0 there.
        fastmath::softmax_backward(&mut d_probs, &probs, seq);
        let q = &row(0)[columns.clone()];
        let mut dq = vec![0f32; head_dim];
        for (t, &ds) in d_probs.iter().enumerate() {
            // dQ = scale · dS · K; dK_t = scale · dS_t · q.
            let k = &row(t)[hidden..][columns.clone()];
            for (d, &k) in dq.iter_mut().zip(k) {
                // Not `mul_add`: a call to libm's `fmaf` here (see `weighted_values`).
                *d += scale * ds * k;
            }
            let dk = &mut d_qkv[t * stride + hidden..][columns.clone()];
            for (d, &q) in dk.iter_mut().zip(q) {
                *d = scale * ds * q;
            }
        }
        d_qkv[columns].copy_from_slice(&dq);
    }
}

/// The attention core's backward, every (sequence, head) pair on its own core: from the
/// context's gradient (`[rows, hidden]`), that of `qkv` (`[rows, 3 · hidden]`) into `d_qkv`
/// (each element written: whatever it held is not read). The probabilities and their dropout
/// bytes are made again, as the forward made them.
fn attention_backward(
    qkv: &[f32],
    keep: &[bool],
    probs_mask: Option<LazyKeep>,
    d_context: &[f32],
    dims: Dims,
    d_qkv: &mut Vec<f32>,
) {
    let Dims {
        batch,
        seq,
        hidden,
        heads,
        ..
    } = dims;
    let head_dim = dims.head_dim();
    let stride = 3 * hidden;
    let scale = 1.0 / (head_dim as f32).sqrt();
    // Every element is written below (each pair's q, k and v columns of its rows).
    let out = SharedOut::new(reused(d_qkv, dims.rows() * stride));
    (0..batch * heads).into_par_iter().for_each_init(
        || {
            (
                vec![0f32; seq * seq],
                vec![0f32; seq * seq],
                vec![0f32; seq * seq],
                vec![0u8; seq * seq],
                vec![0f32; head_dim * seq],
            )
        },
        |(d_probs, dropped, p, bytes, values_t), pair| {
            let (b, h) = (pair / heads, pair % heads);
            let first = b * seq * stride + h * head_dim;
            let context_first = b * seq * hidden + h * head_dim;
            let keep = &keep[b * seq..(b + 1) * seq];
            // `values_t` is scratch here: `Kᵀ` for the probabilities, then `Vᵀ` below.
            attention_probs(qkv, keep, (seq, hidden, heads), (b, h), p, values_t);
            let p = &p[..];
            let weights: &[f32] = match &probs_mask {
                Some(mask) => {
                    mask.fill(pair * seq * seq, bytes);
                    dropped.copy_from_slice(p);
                    fastmath::mask_scale(dropped, bytes, mask.scale);
                    dropped
                }
                None => p,
            };
            let values = qkv[first + 2 * hidden..].as_ptr();
            // SAFETY: every block read lies inside qkv / d_context; the d_qkv blocks written
            // (rows of b, this head's q, k and v columns) belong to this pair only; `values_t`
            // holds `head_dim × seq`.
            unsafe {
                // dV = P̃ᵀ · dC
                pair_product(
                    (seq, head_dim, seq),
                    (out.ptr().add(first + 2 * hidden), stride),
                    (weights.as_ptr(), (1, seq)),
                    (d_context.as_ptr().add(context_first), (hidden, 1)),
                    1.0,
                );
                // dP̃ = dC · Vᵀ, `Vᵀ` laid out row by row first where it can be.
                let values_t =
                    if panel_product::transpose(values_t, values, stride, (head_dim, seq)) {
                        (values_t.as_ptr(), (seq, 1))
                    } else {
                        (values, (1, stride))
                    };
                pair_product(
                    (seq, seq, head_dim),
                    (d_probs.as_mut_ptr(), seq),
                    (d_context.as_ptr().add(context_first), (hidden, 1)),
                    values_t,
                    1.0,
                );
            }
            if let Some(mask) = &probs_mask {
                fastmath::mask_scale(d_probs, bytes, mask.scale);
            }
            // dS = P ⊙ (dP − rowsum(dP ⊙ P)); padded keys have P = 0, so dS = 0 there.
            fastmath::softmax_backward(d_probs, p, seq);
            // SAFETY: as above.
            unsafe {
                // dQ = scale · dS · K
                pair_product(
                    (seq, head_dim, seq),
                    (out.ptr().add(first), stride),
                    (d_probs.as_ptr(), (seq, 1)),
                    (qkv.as_ptr().add(first + hidden), (stride, 1)),
                    scale,
                );
                // dK = scale · dSᵀ · Q
                pair_product(
                    (seq, head_dim, seq),
                    (out.ptr().add(first + hidden), stride),
                    (d_probs.as_ptr(), (1, seq)),
                    (qkv.as_ptr().add(first), (stride, 1)),
                    scale,
                );
            }
        },
    );
}

/// `dst (m × n, row stride dst_rs) = alpha · lhs · rhs` for one (sequence, head) pair, on this
/// thread: on the kernels straight from the operands where `rhs`'s rows are contiguous
/// ([`panel_product::small_product`]), through `gemm` otherwise; operands as (first element,
/// row and column strides).
///
/// # Safety
/// As [`product`]'s.
unsafe fn pair_product(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    (lhs, lhs_strides): (*const f32, (usize, usize)),
    (rhs, (rhs_rs, rhs_cs)): (*const f32, (usize, usize)),
    alpha: f32,
) {
    if rhs_cs == 1
        && panel_product::small_product(
            (m, n, k),
            dst,
            dst_rs,
            false,
            lhs,
            lhs_strides,
            rhs,
            rhs_rs,
            alpha,
        )
    {
        return;
    }
    product(
        (m, n, k),
        dst,
        (dst_rs, 1),
        false,
        lhs,
        lhs_strides,
        rhs,
        (rhs_rs, rhs_cs),
        alpha,
        false,
    );
}

/// Buffers a layer's backward overwrites whole, kept from one layer to the next: zeroed (and
/// faulted in) once a step rather than once a layer.
#[derive(Default)]
struct BackwardScratch {
    gelu_derivative: Vec<f32>,
    /// The attention core's gradients of the queries, keys and values.
    d_qkv: Vec<f32>,
    d_expanded: Vec<f32>,
    d_context: Vec<f32>,
    /// The attention block's output, made again.
    attended: Vec<f32>,
    /// The layer's input, made again from the layer below ([`LayerInput::Below`]).
    input: Vec<f32>,
}

/// A layer's input as its backward gets it: kept by its tape (the first layer), or the output
/// of the layer below, made again from that layer's saved LayerNorm rows only when the query,
/// key and value products read it (the backward's last step), so that it is not held through
/// the rest of the layer's backward (2 MB of MiniLM's LoRA peak, at the attention's backward).
enum LayerInput<'a> {
    Kept(&'a [f32]),
    Below(&'a NormTape),
}

/// `buffer` as `len` floats, holding whatever it held (its user overwrites every one). Grown
/// on every core ([`fastmath::zeros`]): `resize` zeroes the new part on one thread while the
/// other waits, ≈ 20 MB once a MiniLM step (1.5 ms, found under a debugger's breakpoint on
/// large `memset`s of the main thread).
fn reused(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        *buffer = fastmath::zeros(len);
    }
    buffer.truncate(len);
    buffer
}

/// `dy_out` (the gradient of the layer's output) becomes the gradient of its input; for a
/// first-tokens layer it holds only the sequences' first rows (`[batch, hidden]`: nothing
/// reads the others). `input`: the layer's input ([`LayerInput`]). The tape's
/// GELU input is consumed (turned into GELU's output in place). `needs_input_gradient`:
/// whether anything reads the input's gradient (not where the first layer's input is the frozen
/// embeddings': its query, key and value products through `Wᵀ` are skipped, and `dy_out` is
/// left as the residual path's part).
fn layer_backward(
    tape: &mut LayerTape,
    input: LayerInput<'_>,
    dy_out: &mut Vec<f32>,
    dims: Dims,
    grads: &mut Vec<Grad>,
    needs_input_gradient: bool,
    scratch: &mut BackwardScratch,
) {
    let Dims {
        batch,
        seq,
        hidden,
        intermediate,
        ..
    } = dims;
    let rows = dims.rows();
    let first_tokens = tape.first_tokens;
    // Past the attention a first-tokens layer has `batch` rows, and its `dy_out` those rows.
    let out_rows = if first_tokens { batch } else { rows };
    assert_eq!(
        dy_out.len(),
        out_rows * hidden,
        "the layer output's gradient"
    );
    let mut d_output = std::mem::take(dy_out);
    let dy = &mut d_output;
    // Output block: LN2(dropout(expanded W_o + b_o) + attended).
    tape.norm2.backward(dy, grads);
    // Each part of the tape goes once its last reader is done: the backward's peak comes in
    // an upper layer, while every layer below is still taped (MiniLM: the full step's at the
    // second layer from the top, LoRA's at the top's attention backward).
    tape.norm2.release();
    let mut d_attended = fastmath::copy_of(dy); // the residual path
    apply_mask(dy, tape.output_mask);
    let d_expanded = reused(&mut scratch.d_expanded, out_rows * intermediate);
    let mut pre_activation = std::mem::take(&mut tape.pre_activation);
    // Under LoRA only the output adapter reads GELU's output, and its kernels make it (and the
    // derivative, applied to `d_expanded`) block by block. Else GELU's output goes where its
    // input was (the tape's last reader of it) and the derivative is applied after.
    let fused = tape.output.takes_input_before_gelu();
    let gelu_derivative = (!fused).then(|| {
        let derivative = reused(&mut scratch.gelu_derivative, pre_activation.len());
        pre_activation
            .par_chunks_mut(1 << 14)
            .zip(derivative.par_chunks_mut(1 << 14))
            .for_each(|(v, d)| fastmath::gelu_with_derivative_slice(v, d));
        &*derivative
    });
    let expanded = if fused {
        low_rank::Input::BeforeGelu(&pre_activation)
    } else {
        low_rank::Input::Rows(&pre_activation)
    };
    let d_out = Some(&mut *d_expanded);
    tape.output
        .backward(expanded, dy, hidden, out_rows, d_out, false, grads);
    drop(pre_activation);
    if let Some(derivative) = gelu_derivative {
        d_expanded
            .par_chunks_mut(1 << 14)
            .zip(derivative.par_chunks(1 << 14))
            .for_each(|(g, d)| fastmath::multiply(g, d));
    }
    tape.norm1.output_into(&mut scratch.attended);
    tape.intermediate.backward(
        low_rank::Input::Rows(&scratch.attended),
        d_expanded,
        intermediate,
        out_rows,
        Some(&mut d_attended),
        true,
        grads,
    );

    // Attention output block: LN1(dropout(context W_ao + b_ao) + input).
    tape.norm1.backward(&mut d_attended, grads);
    tape.norm1.release();
    let d_input = fastmath::copy_of(&d_attended); // the residual path
    apply_mask(&mut d_attended, tape.attention_mask);
    let d_context = reused(&mut scratch.d_context, out_rows * hidden);
    tape.attention_output.backward(
        low_rank::Input::Rows(&tape.context),
        &d_attended,
        hidden,
        out_rows,
        Some(&mut *d_context),
        false,
        grads,
    );
    drop(std::mem::take(&mut tape.context));
    let d_context = &*d_context;

    // Attention core: the gradients of the queries, keys and values.
    let stride = 3 * hidden;
    let first_d_qkv;
    let d_qkv: &[f32] = if first_tokens {
        let mut d_qkv = fastmath::zeros(rows * stride);
        d_qkv
            .par_chunks_mut(seq * stride)
            .zip(d_context.par_chunks(hidden))
            .enumerate()
            .for_each(|(b, (d_qkv, d_context))| {
                let keep = &tape.keep[b * seq..(b + 1) * seq];
                first_token_attention_backward(
                    &tape.qkv,
                    keep,
                    dims,
                    b,
                    tape.probs_mask,
                    d_context,
                    d_qkv,
                );
            });
        first_d_qkv = d_qkv;
        &first_d_qkv
    } else {
        let d_qkv = &mut scratch.d_qkv;
        attention_backward(
            &tape.qkv,
            &tape.keep,
            tape.probs_mask,
            d_context,
            dims,
            d_qkv,
        );
        d_qkv
    };
    drop(std::mem::take(&mut tape.qkv));
    let input: &[f32] = match input {
        LayerInput::Kept(input) => input,
        LayerInput::Below(norm) => {
            norm.output_into(&mut scratch.input);
            &scratch.input
        }
    };
    // The queries of a first-tokens layer (their rows' residual gradient in `d_input`) go
    // apart and are added at their rows once keys and values (every token) are done.
    let (mut d_all, mut d_firsts) = if first_tokens {
        (fastmath::zeros(rows * hidden), Some(d_input))
    } else {
        (d_input, None)
    };
    if let Some(d_firsts) = d_firsts.as_mut() {
        tape.projections[0].backward(
            low_rank::Input::Rows(&first_rows(input, dims)),
            d_qkv,
            seq * stride,
            batch,
            needs_input_gradient.then_some(&mut d_firsts[..]),
            true,
            grads,
        );
    }
    // Keys and values (and queries, but in a first-tokens layer) read the same input.
    let sharing: Vec<(&LinearTape, &[f32])> = tape
        .projections
        .iter()
        .enumerate()
        .filter(|&(i, _)| !(i == 0 && first_tokens))
        .map(|(i, projection)| (projection, &d_qkv[i * hidden..]))
        .collect();
    LinearTape::backward_sharing_input(
        &sharing,
        input,
        stride,
        rows,
        needs_input_gradient.then_some(&mut d_all[..]),
        grads,
    );
    if let Some(d_firsts) = d_firsts {
        for (b, row) in d_firsts.chunks_exact(hidden).enumerate() {
            fastmath::add(&mut d_all[b * seq * hidden..][..hidden], row);
        }
    }
    *dy_out = d_all;
}

/// A training forward's saved state, for [`TrainTape::backward`].
pub struct TrainTape {
    device: Device,
    dims: Dims,
    /// The embeddings' output on burn's autodiff graph, when they train.
    embedded: Option<Tensor<3>>,
    /// The embeddings' tables and LayerNorm parameters (their graph's leaves).
    embedding_tables: Vec<(ParamId, Tensor<2>)>,
    embedding_norm: Vec<(ParamId, Tensor<1>)>,
    word_leaf: Option<WordLeaf>,
    layers: Vec<LayerTape>,
}

/// The word lookup as a leaf of the embeddings' graph, and what scattering its gradient into
/// the table needs.
struct WordLeaf {
    id: ParamId,
    vocab: usize,
    /// The batch's token ids, row-major `[batch, seq]`.
    ids: Vec<i64>,
    leaf: Tensor<3>,
}

impl TrainTape {
    /// The encoder's parameter gradients from `∂L/∂H` (`grad_h`, `[batch, hidden]`; `None`
    /// when no gradient reached `H`, which leaves the encoder without one), registered in
    /// `grads` (parameters that do not train are skipped, as burn's autodiff would).
    pub fn backward(self, grad_h: Option<Tensor<2>>, grads: &mut GradientsParams) {
        self.backward_inner(grad_h, grads, None);
    }

    /// [`backward`](Self::backward), handing each transformer layer's gradients to
    /// `layer_done` as soon as that layer's backward is over (last layer first), and the
    /// embeddings' into `grads` at the end. An optimizer that updates those parameters right
    /// away keeps a single layer's gradients alive instead of the whole encoder's (475 MiB on
    /// roberta-base; its measured peak fell by 124 MiB: BENCHMARKS.md). The layer's weights
    /// are no longer read by the rest of the backward, so updating them is safe.
    pub fn backward_by_layer(
        self,
        grad_h: Option<Tensor<2>>,
        grads: &mut GradientsParams,
        mut layer_done: impl FnMut(GradientsParams),
    ) {
        self.backward_inner(grad_h, grads, Some(&mut layer_done));
    }

    fn backward_inner(
        self,
        grad_h: Option<Tensor<2>>,
        grads: &mut GradientsParams,
        mut layer_done: Option<&mut dyn FnMut(GradientsParams)>,
    ) {
        let Some(grad_h) = grad_h else {
            return;
        };
        let dims = self.dims;
        let (rows, hidden) = (dims.rows(), dims.hidden);
        let grad_h = host(grad_h);
        // `H` is each sequence's first row of the top layer's output: a first-tokens layer
        // takes those rows alone ([`layer_backward`]), else they go into rows of zeros.
        let mut dy = if self.layers.last().is_some_and(|layer| layer.first_tokens) {
            grad_h[..dims.batch * hidden].to_vec()
        } else {
            let mut dy = fastmath::zeros(rows * hidden);
            for b in 0..dims.batch {
                dy[b * dims.seq * hidden..b * dims.seq * hidden + hidden]
                    .copy_from_slice(&grad_h[b * hidden..(b + 1) * hidden]);
            }
            dy
        };
        let mut collected = Vec::new();
        let mut scratch = BackwardScratch::default();
        let inner = self.device.clone().without_autodiff();
        // Each layer's tape is freed once its backward is done: the gradients grow while the
        // tape shrinks, so the peak holds about one of the two, not both.
        let mut layers = self.layers;
        while let Some(mut layer) = layers.pop() {
            let kept = layer.input.take();
            let input = match (&kept, layers.last()) {
                (Some(input), _) => LayerInput::Kept(input),
                (None, Some(before)) => LayerInput::Below(&before.norm2),
                (None, None) => unreachable!("the first layer keeps its input"),
            };
            // The first layer's input gradient is only read by the embeddings' backward.
            let needs_input_gradient = !layers.is_empty() || self.embedded.is_some();
            layer_backward(
                &mut layer,
                input,
                &mut dy,
                dims,
                &mut collected,
                needs_input_gradient,
                &mut scratch,
            );
            drop(layer);
            if let Some(done) = layer_done.as_mut() {
                let mut layer_grads = GradientsParams::new();
                register(std::mem::take(&mut collected), &mut layer_grads, &inner);
                done(layer_grads);
            }
        }
        register(collected, grads, &inner);
        if let Some(embedded) = self.embedded {
            // The embeddings' own graph: ∂/∂θ Σ (embedded ⊙ dy) = (∂embedded/∂θ)ᵀ dy.
            let dy = Tensor::<3>::from_data(
                TensorData::new(dy, [dims.batch, dims.seq, hidden]),
                &self.device,
            );
            let embedding_grads = (embedded * dy).sum().backward();
            for (id, table) in self.embedding_tables {
                if let Some(grad) = table.grad(&embedding_grads) {
                    grads.register(id, grad);
                }
            }
            for (id, vector) in self.embedding_norm {
                if let Some(grad) = vector.grad(&embedding_grads) {
                    grads.register(id, grad);
                }
            }
            if let Some(word) = self.word_leaf {
                if let Some(grad) = word.leaf.grad(&embedding_grads) {
                    // The table's gradient: each position's row added into its token's row
                    // (rows of tokens absent from the batch stay 0, as in burn and PyTorch).
                    let rows = host(grad);
                    let mut table = vec![0f32; word.vocab * hidden];
                    // A token's first row is written, not added: the table is fresh zeroed
                    // memory from the kernel, whose pages a read maps to the shared zero page
                    // and a write after it must copy, flushing every core's TLB, page by page
                    // (≈ 1 % of a full MiniLM step).
                    let mut seen = vec![false; word.vocab];
                    for (&token, row) in word.ids.iter().zip(rows.chunks_exact(hidden)) {
                        // Ids were checked by the lookup in the forward; never index past.
                        let index = usize::try_from(token).unwrap_or(usize::MAX / 2);
                        let start = index.saturating_mul(hidden);
                        let (Some(target), Some(seen)) = (
                            table.get_mut(start..start.saturating_add(hidden)),
                            seen.get_mut(index),
                        ) else {
                            continue;
                        };
                        if std::mem::replace(seen, true) {
                            fastmath::add(target, row);
                        } else {
                            target.copy_from_slice(row);
                        }
                    }
                    grads.register(
                        word.id,
                        Tensor::<2>::from_data(
                            TensorData::new(table, [word.vocab, hidden]),
                            &inner,
                        ),
                    );
                }
            }
        }
    }
}

/// Moves `collected` into `grads` as tensors on `device`.
fn register(collected: Vec<Grad>, grads: &mut GradientsParams, device: &Device) {
    for grad in collected {
        match grad.shape.len() {
            1 => grads.register(
                grad.id,
                Tensor::<1>::from_data(TensorData::new(grad.values, grad.shape), device),
            ),
            _ => grads.register(
                grad.id,
                Tensor::<2>::from_data(TensorData::new(grad.values, grad.shape), device),
            ),
        }
    }
}

/// The training forward by hand: `None` where it does not apply (not the CPU, not GELU, not
/// training), else `H` as a fresh autodiff leaf and the tape for its backward.
pub(crate) fn forward(encoder: &Encoder, input: EncoderInput) -> Option<(Tensor<2>, TrainTape)> {
    let device = input.input_ids.device();
    let config = encoder.config();
    // Decided before the masks' seed is drawn, so a caller that falls back to `forward`
    // finds the device's random stream untouched.
    if !device.is_autodiff()
        || device.clone().without_autodiff() != Device::flex()
        || config.hidden_act != HiddenAct::Gelu
    {
        return None;
    }
    let mut masks = DropoutMasks::new(&device);
    let [batch, seq] = input.input_ids.dims();
    let keep = real_tokens(input.attention_mask.clone());
    let input_ids = input.input_ids.clone();
    let e = &encoder.embeddings;
    let frozen = !(trains(&e.word_embeddings.weight)
        || trains(&e.position_embeddings.weight)
        || trains(&e.token_type_embeddings.weight)
        || trains(&e.layer_norm.gamma)
        || e.layer_norm.beta.as_ref().is_some_and(trains));
    let on_host = frozen
        .then(|| {
            e.forward_on_host(
                &input.input_ids,
                &input.token_type_ids,
                config.layer_norm_eps,
                &mut masks,
            )
        })
        .flatten();
    let (mut x, embedded, word_leaf) = match on_host {
        Some(x) => (x, None, None),
        None => {
            let (embedded, word_leaf) = encoder.embeddings_forward_train(input, &mut masks);
            (host(embedded.clone().detach()), Some(embedded), word_leaf)
        }
    };
    let dims = Dims {
        batch,
        seq,
        hidden: config.hidden_size,
        heads: config.num_attention_heads,
        intermediate: config.intermediate_size,
    };
    let layers = encoder
        .encoder
        .layer
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            layer_forward(
                layer,
                &mut x,
                &keep,
                dims,
                config.layer_norm_eps,
                &mut masks,
                i == 0,
                i + 1 == encoder.encoder.layer.len(),
                encoder.product_precision(),
                encoder.frozen_transposes(),
            )
        })
        .collect();
    let hidden = dims.hidden;
    let mut h = vec![0f32; batch * hidden];
    for b in 0..batch {
        h[b * hidden..(b + 1) * hidden]
            .copy_from_slice(&x[b * seq * hidden..b * seq * hidden + hidden]);
    }
    let h = Tensor::<2>::from_data(TensorData::new(h, [batch, hidden]), &device).require_grad();
    let e = &encoder.embeddings;
    let word_table = &e.word_embeddings.weight;
    // The batch's ids on the host only when the word table trains (not under LoRA).
    let word_leaf = word_leaf.map(|leaf| WordLeaf {
        id: word_table.id,
        vocab: word_table.dims()[0],
        ids: input_ids
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap_or_default(),
        leaf,
    });
    // The word table's gradient comes through its leaf (`word_leaf`), not burn's graph.
    let embedding_tables: Vec<_> = [
        &e.position_embeddings.weight,
        &e.token_type_embeddings.weight,
    ]
    .into_iter()
    .filter(|p| trains(p))
    .map(|p| (p.id, p.val()))
    .collect();
    let embedding_norm: Vec<_> = std::iter::once(&e.layer_norm.gamma)
        .chain(e.layer_norm.beta.as_ref())
        .filter(|p| trains(p))
        .map(|p| (p.id, p.val()))
        .collect();
    Some((
        h,
        TrainTape {
            device,
            dims,
            embedded: embedded.filter(|_| !frozen),
            embedding_tables,
            embedding_norm,
            word_leaf,
            layers,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fastmath::test_values as values;

    /// `wᵀ` of the row-major `rows × columns` matrix `w`.
    fn transposed(w: &[f32], columns: usize) -> Vec<f32> {
        let rows = w.len() / columns;
        (0..columns)
            .flat_map(|c| (0..rows).map(move |r| w[r * columns + c]))
            .collect()
    }

    #[test]
    fn frozen_transposes_follow_their_weight() {
        let device = Device::flex();
        let (d_in, d_out) = (6, 4);
        let first = values(d_in * d_out, 3);
        let weight = Tensor::<2>::from_data(TensorData::new(first.clone(), [d_in, d_out]), &device);
        let cache = FrozenTransposes::default();
        let id = ParamId::new();
        let made = cache.get(id, &weight).expect("a weight read in place");
        assert_eq!(*made, transposed(&first, d_out));
        // The same storage (a clone of the tensor): the kept copy.
        let kept = cache.get(id, &weight.clone()).expect("kept");
        assert!(Arc::ptr_eq(&made, &kept));
        // New values under the same parameter (loaded, merged): a fresh copy of them.
        let second = values(d_in * d_out, 4);
        let reloaded =
            Tensor::<2>::from_data(TensorData::new(second.clone(), [d_in, d_out]), &device);
        let remade = cache.get(id, &reloaded).expect("remade");
        assert!(!Arc::ptr_eq(&made, &remade));
        assert_eq!(*remade, transposed(&second, d_out));
        // Forgotten (the weight trains now): the next request makes it again.
        cache.forget(id);
        let after = cache.get(id, &reloaded).expect("made again");
        assert!(!Arc::ptr_eq(&remade, &after));
        assert_eq!(*after, *remade);
    }

    /// A bias's and a weight's gradients are the same bits on one thread as on three, run
    /// after run (a training run gives the same numbers each time, and after `--resume`).
    #[test]
    fn bias_and_weight_gradients_do_not_depend_on_the_threads() {
        let (rows, n, dy_rs, k) = (1000, 37, 40, 24);
        let dy = values(rows * dy_rs, 5);
        let x = values(rows * k, 6);
        let on = |threads: usize| {
            crate::fastmath::on_threads(threads, || {
                let sums = column_sums(&dy, dy_rs, rows, n);
                let dw = weight_gradient(ProductPrecision::F32, &x, &dy, dy_rs, (rows, k, n), 1.0);
                (sums, dw)
            })
        };
        let once = on(1);
        for j in 0..n {
            let exact: f64 = (0..rows).map(|r| f64::from(dy[r * dy_rs + j])).sum();
            assert!((f64::from(once.0[j]) - exact).abs() <= 1e-4, "column {j}");
        }
        for _ in 0..3 {
            assert!(on(3) == once, "three threads gave other sums than one");
        }
    }

    #[test]
    fn weight_gradient_writes_every_value_without_zeroing_first() {
        // Past the size where `dw` is not zeroed, and below it; `dy` with a row stride wider
        // than its columns, as the query/key/value gradients are read.
        for (rows, k, n) in [(37, 256, 320), (5, 8, 12)] {
            let dy_rs = n + 3;
            let x = values(rows * k, 1);
            let dy = values(rows * dy_rs, 2);
            // Leave NaNs in freed heap memory of the result's size: a value the product did
            // not write would come back as one of them.
            drop(std::hint::black_box(vec![f32::NAN; k * n]));
            let dw = weight_gradient(ProductPrecision::F32, &x, &dy, dy_rs, (rows, k, n), 0.5);
            assert_eq!(dw.len(), k * n);
            for i in 0..k {
                for j in 0..n {
                    let exact: f64 = (0..rows)
                        .map(|r| x[r * k + i] as f64 * dy[r * dy_rs + j] as f64)
                        .sum::<f64>()
                        * 0.5;
                    let got = dw[i * n + j] as f64;
                    assert!(
                        (got - exact).abs() <= 1e-5,
                        "dw[{i}, {j}] = {got}, not {exact}"
                    );
                }
            }
        }
    }
}
