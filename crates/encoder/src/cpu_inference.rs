//! The encoder's forward for inference on the CPU, fused by hand over flat buffers.
//!
//! Same function as [`Encoder::forward`]'s burn path (tested equal to it and to Hugging Face's
//! hidden states), but where burn runs each operation as a separate pass, mostly on one thread
//! and through a fresh tensor each time, this path calls the same matrix-product library (`gemm`)
//! straight into reused buffers and fuses the rest:
//! - no pass of its own for a bias: the bf16 tiles start from it; an f32 product leaves it to
//!   the pass that reads its output next (the query's to the attention, the others' to the
//!   activation or the LayerNorm after them), or to none at all (the key's, and the value's,
//!   which the output projection's bias carries: [`query_key_value`]);
//! - Q, K and V are written side by side and attention reads them in place, per
//!   (sequence, head) on every core: scores, a vectorised softmax, the context written at its
//!   final position (no transposes, no `[b, h, s, s]` tensor, no bias tensor for padding);
//! - the residual sum and LayerNorm are one pass, the activation another, both parallel.
//!
//! In a MiniLM inference batch the burn path spent more time around its matrix products than in
//! them (BENCHMARKS.md).

use std::borrow::Cow;
use std::ops::Deref;

use burn::backend::{flex::FlexTensor, Flex};
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::amx::{self, Start, Strided};
use crate::attention_kernel;
use crate::config::HiddenAct;
use crate::fastmath;
use crate::model::{Encoder, EncoderInput, EncoderOutput, Layer, LazyKeep, ProductPrecision};
use crate::panel_product;
use crate::speed_split::SpeedSplit;
use lora::LoraLinear;

/// A layer's parameters as host vectors, burn's layouts (`W: [in, out]`).
struct HostLinear {
    weight: HostTensor,
    bias: Option<HostTensor>,
    d_in: usize,
    d_out: usize,
    /// An unmerged adapter: `A [in, r]`, `B [r, out]`, scaling.
    adapter: Option<(HostTensor, HostTensor, usize, f32)>,
}

pub(crate) fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32")
}

/// A tensor's f32 values on the host, read in place from burn's CPU storage when the tensor
/// lives there contiguously (parameters do: no copy, the storage is shared and immutable while
/// held), copied otherwise (another backend or element type, a strided view).
pub(crate) enum HostTensor {
    Shared(FlexTensor),
    Owned(Vec<f32>),
}

impl Deref for HostTensor {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            // Checked contiguous f32 when made (`host_view`); a FlexTensor never changes layout.
            HostTensor::Shared(tensor) => tensor.as_slice::<f32>().unwrap_or(&[]),
            HostTensor::Owned(values) => values,
        }
    }
}

/// [`HostTensor`] of `t` (its autodiff wrapper, if any, set aside: values only).
pub(crate) fn host_view<const D: usize>(t: Tensor<D>) -> HostTensor {
    let t = t.inner();
    match t.clone().try_into_primitive::<Flex>() {
        Ok(primitive) if primitive.as_slice::<f32>().is_some() => HostTensor::Shared(primitive),
        _ => HostTensor::Owned(host(t)),
    }
}

fn host_linear(layer: &LoraLinear) -> HostLinear {
    let (d_in, d_out) = layer.dims();
    let adapter = layer.adapter.as_ref().filter(|a| !a.is_merged()).map(|a| {
        (
            host_view(a.lora_a.weight.val()),
            host_view(a.lora_b.weight.val()),
            a.rank(),
            a.scaling() as f32,
        )
    });
    let Linear { weight, bias } = &layer.base;
    HostLinear {
        weight: host_view(weight.val()),
        bias: bias.as_ref().map(|b| host_view(b.val())),
        d_in,
        d_out,
        adapter,
    }
}

struct HostLayerNorm {
    gamma: HostTensor,
    beta: Option<HostTensor>,
    epsilon: f32,
}

fn host_layer_norm(norm: &LayerNorm, epsilon: f64) -> HostLayerNorm {
    HostLayerNorm {
        gamma: host_view(norm.gamma.val()),
        beta: norm.beta.as_ref().map(|b| host_view(b.val())),
        epsilon: epsilon as f32,
    }
}

/// A pointer that several threads write through at disjoint positions.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);
// SAFETY: every user writes a region no other thread touches (documented at each use).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(buffer: &mut [f32]) -> Self {
        Self(buffer.as_mut_ptr())
    }

    /// Through a method, so closures capture the (Sync) wrapper rather than its raw field.
    pub(crate) fn ptr(&self) -> *mut f32 {
        self.0
    }
}

/// The rate, in GFLOP/s (two per multiply-add), of the weight product `x [m, k] · W [k, n]` as
/// CPU inference runs it at `precision`: f32 on the panels (or `gemm`), bf16 on the packed
/// kernel with the weight packed once; the best of `repeats` runs on made-up values. `None`
/// for bf16 where no bf16 kernel runs here. For `cargo xtask bench --modes products`, which
/// sets these rates beside PyTorch's `matmul` at the same shapes.
pub fn weight_product_gflops(
    (m, k, n): (usize, usize, usize),
    precision: ProductPrecision,
    repeats: usize,
) -> Option<f64> {
    let (x, w) = (
        fastmath::test_values(m * k, 1),
        fastmath::test_values(k * n, 1 << 40),
    );
    let mut out = vec![0f32; m * n];
    let packed = match precision {
        ProductPrecision::F32 => None,
        ProductPrecision::Bf16 => Some(amx::pack_weight(Strided::new(&w, n, 1), k, n)?),
    };
    let seconds = (0..repeats.max(1))
        .map(|_| {
            let started = std::time::Instant::now();
            match &packed {
                // SAFETY: `x`, `w` and `out` hold `m × k`, `k × n` and `m × n` values, row-major.
                None => unsafe {
                    product(
                        (m, n, k),
                        out.as_mut_ptr(),
                        (n, 1),
                        false,
                        x.as_ptr(),
                        (k, 1),
                        w.as_ptr(),
                        (n, 1),
                        1.0,
                        true,
                    )
                },
                Some(packed) => {
                    let x = Strided::new(&x, k, 1);
                    amx::product_packed(m, &mut out, n, Start::Zero, x, packed);
                }
            }
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    std::hint::black_box(&out);
    Some(2.0 * (m * n * k) as f64 / seconds / 1e9)
}

/// A product this large (multiply-adds) or larger is split between the threads by
/// [`product`]; smaller ones go to `gemm` whole.
const SPLIT_MIN_WORK: usize = 1 << 20;

/// The fewest rows (or columns) a thread's block of a split product may have: each block
/// packs the whole of the other factor, so its multiply-adds must outnumber that packing's
/// elements by this much (with many threads `gemm`'s own split, which packs it once, wins;
/// on two threads 128 measured better than 0, 256 or 512 for both training steps).
const SPLIT_MIN_BLOCK: usize = 128;

/// `dst (m × n) = alpha · lhs (m × k) · rhs (k × n)` (`+ dst` when `accumulate`), each matrix
/// given by its first element and its row and column strides. With `parallel`, a large product
/// is cut along the longer of `m` and `n` into one block per thread, each a one-thread `gemm`,
/// the blocks' sizes in proportion to the CPUs' measured speeds ([`SpeedSplit`]).
///
/// Why not `gemm`'s own threads: it splits each depth block's tiles between them and joins at
/// the end of each (twice, with its packing), so each product waits at several barriers for
/// the slower core, and both threads pack the same rows of the left factor; one block per
/// thread waits once. Measured with the steps of both builds interleaved (BENCHMARKS.md,
/// "Fifteenth session"): the full MiniLM training step ≈ 4–5 % faster (its weight gradients,
/// whose depth is the batch's rows, gain most), LoRA's ≈ 2 %, inference ≈ 1 %.
///
/// # Safety
/// Every element the strides address must lie inside the caller's buffers, and `dst` must not
/// overlap `lhs` or `rhs` or be written by another thread meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    alpha: f32,
    parallel: bool,
) {
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let by_rows = m >= n;
    let len = m.max(n);
    // Blocks of whole 16-float vectors.
    let block = len.div_ceil(threads).next_multiple_of(16);
    // A weight product (rows of `lhs` and `dst` contiguous): the weight packed once for all
    // threads, the rows claimed as they go.
    if parallel
        && panel_takes((m, n, k))
        && lhs_cs == 1
        && dst_cs == 1
        && panel_product::product(
            (m, n, k),
            dst,
            dst_rs,
            accumulate,
            lhs,
            lhs_rs,
            rhs,
            (rhs_rs, rhs_cs),
            alpha,
            threads,
        )
    {
        return;
    }
    if threads > 1 && m * n * k >= SPLIT_MIN_WORK && block >= SPLIT_MIN_BLOCK {
        // The factors as addresses (and `dst` wrapped), so the tasks may share them.
        let (dst, lhs, rhs) = (SharedOut(dst), lhs as usize, rhs as usize);
        // Each thread's share in proportion to its CPU's speed (equal halves on a VM whose
        // cores differ leave the faster one waiting).
        let split = SpeedSplit::new(len, 16, threads);
        (0..threads).into_par_iter().for_each(|_| {
            let claim = split.claim();
            let (start, size) = (claim.rows.start, claim.rows.len());
            if size == 0 {
                return;
            }
            let (lhs, rhs) = (lhs as *const f32, rhs as *const f32);
            // SAFETY: the caller's bounds hold for every sub-block; each task writes its own
            // rows (or columns) of `dst`.
            unsafe {
                if by_rows {
                    product(
                        (size, n, k),
                        dst.ptr().add(start * dst_rs),
                        (dst_rs, dst_cs),
                        accumulate,
                        lhs.add(start * lhs_rs),
                        (lhs_rs, lhs_cs),
                        rhs,
                        (rhs_rs, rhs_cs),
                        alpha,
                        false,
                    )
                } else {
                    product(
                        (m, size, k),
                        dst.ptr().add(start * dst_cs),
                        (dst_rs, dst_cs),
                        accumulate,
                        lhs,
                        (lhs_rs, lhs_cs),
                        rhs.add(start * rhs_cs),
                        (rhs_rs, rhs_cs),
                        alpha,
                        false,
                    )
                }
            }
            split.done(claim);
        });
        split.learn();
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        1.0,
        alpha,
        false,
        false,
        false,
        // Small or narrow products: `gemm` decides whether a second thread pays.
        if parallel {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        },
    );
}

/// `out (rows × n, row stride out_rs) (+)= x (rows × k) · w (k × n)`, row-major.
pub(crate) fn forward_product(
    x: &[f32],
    w: &[f32],
    (rows, k, n): (usize, usize, usize),
    out: &mut [f32],
    out_rs: usize,
    accumulate: bool,
    alpha: f32,
) {
    assert!(x.len() >= rows * k && w.len() >= k * n && out.len() >= (rows - 1) * out_rs + n);
    // SAFETY: bounds checked above; out is a distinct buffer.
    unsafe {
        product(
            (rows, n, k),
            out.as_mut_ptr(),
            (out_rs, 1),
            accumulate,
            x.as_ptr(),
            (k, 1),
            w.as_ptr(),
            (n, 1),
            alpha,
            true,
        )
    }
}

/// Whether a parallel product of `m × n × k` whose rows are contiguous goes to the panel
/// products: on two threads or more, enough rows for each to claim a few blocks, large enough
/// to be split at all.
pub(crate) fn panel_takes((m, n, k): (usize, usize, usize)) -> bool {
    let threads = rayon::current_num_threads();
    panel_product::available()
        && threads > 1
        && m >= 2 * threads * panel_product::MIN_CLAIM
        && m * n * k >= SPLIT_MIN_WORK
}

/// A projection's weight (`[d_in, d_out]`, burn's layout) and bias, on the host.
pub(crate) struct Dense<'a> {
    pub weight: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub d_in: usize,
    pub d_out: usize,
}

/// A LoRA adapter's factors (`A [d_in, rank]`, `B [rank, d_out]`) and the input it sees (`x`,
/// or `x` after the adapter's dropout).
pub(crate) struct LowRank<'a> {
    pub input: &'a [f32],
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub rank: usize,
    pub scaling: f32,
}

/// `out[rows, col0 .. col0 + d_out]` (row stride `out_rs`) `= x · W + b`, plus the adapter's
/// `scaling · (input A) B` when it has one; returns `input · A` (`[rows, rank]`, what the
/// adapter's backward reads). The bias is the product's starting value, not an extra pass.
/// `precision` is that of the base weight's product (the adapter's stays f32).
#[allow(clippy::too_many_arguments)]
pub(crate) fn project(
    dense: Dense<'_>,
    precision: ProductPrecision,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
    out_rs: usize,
    col0: usize,
    adapter: Option<LowRank<'_>>,
) -> Option<Vec<f32>> {
    let Dense {
        weight,
        bias,
        d_in,
        d_out,
    } = dense;
    let out = &mut out[col0..];
    let lhs = Strided::new(x, d_in, 1);
    let rhs = Strided::new(weight, d_out, 1);
    let start = bias.map_or(Start::Zero, Start::Bias);
    let tiled = precision == ProductPrecision::Bf16
        && amx::product_bf16((rows, d_out, d_in), out, out_rs, start, lhs, rhs, 1.0);
    if !tiled {
        if let Some(bias) = bias {
            out.par_chunks_mut(out_rs)
                .take(rows)
                .for_each(|row| row[..d_out].copy_from_slice(bias));
        }
        forward_product(
            x,
            weight,
            (rows, d_in, d_out),
            out,
            out_rs,
            bias.is_some(),
            1.0,
        );
    }
    adapter.map(|adapter| {
        let mut low = fastmath::zeros(rows * adapter.rank);
        let rank = adapter.rank;
        forward_product(
            adapter.input,
            adapter.a,
            (rows, d_in, rank),
            &mut low,
            rank,
            false,
            1.0,
        );
        forward_product(
            &low,
            adapter.b,
            (rows, rank, d_out),
            out,
            out_rs,
            true,
            adapter.scaling,
        );
        low
    })
}

/// `x · W + b` (no adapter) as a new `[rows, d_out]` buffer: [`project`] into zeros, without
/// the pass that zeroes it. A training forward's large outputs (the feed-forward
/// pre-activation, the attention output) were each a `memset` of memory the product then
/// wrote over whole. Every value is written once before any is read: the bias rows first
/// (then the product adds to them), or, without a bias, the product's own first sums (an f32
/// `gemm` product without accumulation never reads its destination, see
/// [`overwrites_whole`]). Elsewhere (bf16 tiles, small or thin products) it starts from zeros.
pub(crate) fn project_new(
    dense: Dense<'_>,
    precision: ProductPrecision,
    x: &[f32],
    rows: usize,
) -> Vec<f32> {
    let (weight, d_in, d_out) = (dense.weight, dense.d_in, dense.d_out);
    let len = rows * d_out;
    if precision != ProductPrecision::F32 || !overwrites_whole((rows, d_out)) {
        let mut out = fastmath::zeros(len);
        project(dense, precision, x, rows, &mut out, d_out, 0, None);
        return out;
    }
    let mut out = Vec::with_capacity(len);
    match dense.bias {
        Some(bias) => {
            assert_eq!(bias.len(), d_out);
            out.spare_capacity_mut()[..len]
                .par_chunks_mut(d_out)
                .for_each(|row| {
                    for (value, &b) in row.iter_mut().zip(bias) {
                        value.write(b);
                    }
                });
            // SAFETY: every row's `d_out` values were just written.
            unsafe { out.set_len(len) };
            forward_product(x, weight, (rows, d_in, d_out), &mut out, d_out, true, 1.0);
        }
        None => {
            assert!(x.len() >= rows * d_in && weight.len() >= d_in * d_out);
            // SAFETY: bounds checked above; `out` holds `len` places (its capacity), distinct
            // from the factors; the product writes all of them without reading any
            // (`overwrites_whole`), so every value is initialised when the length is set.
            unsafe {
                product(
                    (rows, d_out, d_in),
                    out.as_mut_ptr(),
                    (d_out, 1),
                    false,
                    x.as_ptr(),
                    (d_in, 1),
                    weight.as_ptr(),
                    (d_out, 1),
                    1.0,
                    true,
                );
                out.set_len(len);
            }
        }
    }
    out
}

/// Whether an f32 [`product`] into `m × n` values without accumulation writes every value of
/// its destination and reads none: `gemm`'s blocked path stores its first depth block's sums
/// (zeros for an empty depth); its paths for a single row or column, and small products, may
/// read the destination, so those start from zeros.
pub(crate) fn overwrites_whole((m, n): (usize, usize)) -> bool {
    m * n >= 1 << 16 && m > 1 && n > 1
}

/// [`project`] with host copies of a layer's weights (inference: no dropout on the adapter).
fn linear_into(
    layer: &HostLinear,
    precision: ProductPrecision,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
    out_rs: usize,
    col0: usize,
) {
    linear_into_with(layer, precision, x, rows, out, out_rs, col0, true);
}

/// `out = [x W_q + b_q | x W_k | x W_v]`, `[rows, 3 · d_out]`: the query, key and value
/// projections side by side, their biases left out where a bias costs a copy into every row
/// ([`bias_is_a_copy`]); returns the query's and the value's biases when they were left out.
///
/// The query's is added by [`attention`], each sequence's rows just before it reads them. The
/// others are not needed there: the key's bias adds `q · b_k` to a whole row of scores, which
/// the softmax does not see, and the value's adds `b_v` to every context row (the
/// probabilities sum to one), which the attention's output projection carries as its own bias
/// ([`value_bias_through`]).
fn query_key_value<'a>(
    [query, key, value]: [&'a HostLinear; 3],
    precision: ProductPrecision,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
) -> (Option<&'a [f32]>, Option<&'a [f32]>) {
    let width = query.d_out + key.d_out + value.d_out;
    let fold = bias_is_a_copy(precision);
    linear_into_with(query, precision, x, rows, out, width, 0, !fold);
    linear_into_with(key, precision, x, rows, out, width, query.d_out, !fold);
    let col0 = query.d_out + key.d_out;
    linear_into_with(value, precision, x, rows, out, width, col0, !fold);
    let left_out = |layer: &'a HostLinear| layer.bias.as_deref().filter(|_| fold);
    (left_out(query), left_out(value))
}

/// The attention output projection's bias with the value bias `b_v` left out of the context
/// ([`query_key_value`]): `b_v W_o + b_o`, the projection (and its adapter) of `b_v`.
fn value_bias_through(output: &HostLinear, value_bias: &[f32]) -> Vec<f32> {
    let mut bias = vec![0f32; output.d_out];
    let precision = ProductPrecision::F32;
    linear_into(output, precision, value_bias, 1, &mut bias, output.d_out, 0);
    bias
}

/// Whether a product's bias is a copy into every row of its output before the product (f32
/// products), not its free starting value (the bf16 tiles).
fn bias_is_a_copy(precision: ProductPrecision) -> bool {
    precision == ProductPrecision::F32 || !amx::available()
}

/// [`linear_into`] leaving the bias to the pass that reads the output next, which adds it
/// to each row while the row is in cache: an f32 product would otherwise start from a copy
/// of the bias in every row, one more pass over the output. Returns the bias to add (`None`
/// when it was added here: bf16 tiles start from it at no cost).
fn linear_into_deferring_bias<'a>(
    layer: &'a HostLinear,
    precision: ProductPrecision,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
) -> Option<&'a [f32]> {
    let defer = bias_is_a_copy(precision);
    linear_into_with(layer, precision, x, rows, out, layer.d_out, 0, !defer);
    layer.bias.as_deref().filter(|_| defer)
}

#[allow(clippy::too_many_arguments)]
fn linear_into_with(
    layer: &HostLinear,
    precision: ProductPrecision,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
    out_rs: usize,
    col0: usize,
    with_bias: bool,
) {
    let dense = Dense {
        weight: &layer.weight,
        bias: layer.bias.as_deref().filter(|_| with_bias),
        d_in: layer.d_in,
        d_out: layer.d_out,
    };
    let adapter = layer.adapter.as_ref().map(|(a, b, rank, scaling)| LowRank {
        input: x,
        a,
        b,
        rank: *rank,
        scaling: *scaling,
    });
    project(dense, precision, x, rows, out, out_rs, col0, adapter);
}

/// `x = LayerNorm(x (+ bias) + residual)` row by row (HF's
/// `LayerNorm(dropout(dense(h)) + input)`, the dense layer's bias added here when its product
/// left it out).
fn add_and_norm(x: &mut [f32], bias: Option<&[f32]>, residual: &[f32], norm: &HostLayerNorm) {
    let d = norm.gamma.len();
    let zeros;
    let beta: &[f32] = match &norm.beta {
        Some(beta) => beta,
        None => {
            zeros = vec![0.0; d];
            &zeros
        }
    };
    x.par_chunks_mut(d)
        .zip(residual.par_chunks(d))
        .for_each(|(row, res)| {
            if let Some(bias) = bias {
                fastmath::add(row, bias);
            }
            let mut inv = 0.0;
            fastmath::add_and_normalize(
                row,
                res,
                &norm.gamma,
                beta,
                norm.epsilon,
                &mut [],
                &mut inv,
            )
        });
}

/// The attention probabilities of one (sequence `b`, head `h`) pair into `probs`
/// (`[seq, seq]`): `softmax(scale · q kᵀ)` over the kept keys. Deterministic (one thread), so
/// the training backward can make them again rather than keep them. `keys_t`: scratch (the
/// pair's `kᵀ`, `head_dim × seq`), the caller's so that it is not allocated a pair.
pub(crate) fn attention_probs(
    qkv: &[f32],
    keep: &[bool],
    (seq, hidden, heads): (usize, usize, usize),
    (b, h): (usize, usize),
    probs: &mut [f32],
    keys_t: &mut Vec<f32>,
) {
    let head_dim = hidden / heads;
    let stride = 3 * hidden;
    let first = b * seq * stride + h * head_dim;
    assert!(qkv.len() >= (b + 1) * seq * stride && probs.len() == seq * seq);
    assert!(h < heads && keep.len() == seq);
    let scale = 1.0 / (head_dim as f32).sqrt();
    // SAFETY: the q and k rows of this pair lie inside the sequence's block of qkv (asserted
    // above: b's block ends within qkv, h's columns within a row); probs is a distinct buffer
    // of seq × seq, `keys_t` one of head_dim × seq.
    unsafe {
        // On the kernels straight from `q` and `kᵀ` (laid out row by row first, in the caller's
        // scratch) where they run.
        keys_t.resize(head_dim * seq, 0.0);
        let keys = qkv.as_ptr().add(first + hidden);
        if panel_product::transpose(keys_t, keys, stride, (head_dim, seq))
            && panel_product::small_product(
                (seq, seq, head_dim),
                probs.as_mut_ptr(),
                seq,
                false,
                qkv.as_ptr().add(first),
                (stride, 1),
                keys_t.as_ptr(),
                seq,
                scale,
            )
        {
            return softmax_over_kept(probs, keep);
        }
        product(
            (seq, seq, head_dim),
            probs.as_mut_ptr(),
            (seq, 1),
            false,
            qkv.as_ptr().add(first),
            (stride, 1),
            qkv.as_ptr().add(first + hidden),
            (1, stride),
            scale,
            false,
        );
    }
    softmax_over_kept(probs, keep);
}

/// `scores ← softmax(scores)` for each row (`keep.len()` entries) over a sequence's real keys
/// (`keep`), over all of them when every key or none is real (checked once for all the rows).
fn softmax_over_kept(scores: &mut [f32], keep: &[bool]) {
    if keep.iter().all(|&k| k) || !keep.iter().any(|&k| k) {
        fastmath::softmax(scores, keep.len());
    } else {
        fastmath::softmax_masked(scores, keep);
    }
}

/// One query's attention probabilities over a sequence: `probs[t] = softmax_t(q · k_t / √d)`
/// over the real keys, `key(t)` being key `t`'s columns of the query's head (`d` = `q.len()`).
pub(crate) fn one_query_probs<'a>(
    q: &[f32],
    key: impl Fn(usize) -> &'a [f32],
    keep: &[bool],
    probs: &mut [f32],
) {
    let scale = 1.0 / (q.len() as f32).sqrt();
    for (t, score) in probs.iter_mut().enumerate() {
        *score = scale * q.iter().zip(key(t)).map(|(q, k)| q * k).sum::<f32>();
    }
    softmax_over_kept(probs, keep);
}

/// `out = Σ_t weights[t] · value(t)`.
pub(crate) fn weighted_values<'a>(
    weights: &[f32],
    value: impl Fn(usize) -> &'a [f32],
    out: &mut [f32],
) {
    out.fill(0.0);
    for (t, &w) in weights.iter().enumerate() {
        for (o, v) in out.iter_mut().zip(value(t)) {
            // Not `mul_add`: compiled for the baseline x86-64 (no FMA), each would be a call to
            // libm's `fmaf` (0.25 % of a LoRA step in `perf`); this loop vectorises.
            *o += w * v;
        }
    }
}

/// Each sequence's first row of `x` (`[batch · seq, hidden]`): `[batch, hidden]`.
pub(crate) fn first_rows(x: &[f32], (batch, seq, hidden): (usize, usize, usize)) -> Vec<f32> {
    (0..batch)
        .flat_map(|b| &x[b * seq * hidden..][..hidden])
        .copied()
        .collect()
}

/// One (sequence `b`, head `h`) pair of multi-head attention over `qkv` (`[batch·seq, 3·hidden]`:
/// Q, K, V side by side): `probs` (`[seq, seq]`) ← softmax(q kᵀ/√head_dim) over the sequence's
/// real keys (`keep`, its `seq` flags; all keys when none is real), then the pair's block of
/// `context` (`[batch·seq, hidden]`) ← `dropout(probs) · v`, `dropout` being this pair's mask
/// bytes and scale when there is one.
///
/// # Safety
/// `context` must point to a `[batch·seq, hidden]` buffer whose block (rows of sequence `b`,
/// columns of head `h`) no other thread reads or writes meanwhile.
unsafe fn attend_pair(
    qkv: &[f32],
    keep: &[bool],
    (seq, hidden, heads): (usize, usize, usize),
    (b, h): (usize, usize),
    probs: &mut [f32],
    dropout: Option<(&[u8], f32)>,
    context: SharedOut,
) {
    let head_dim = hidden / heads;
    let stride = 3 * hidden;
    let first = b * seq * stride + h * head_dim;
    attention_probs(
        qkv,
        keep,
        (seq, hidden, heads),
        (b, h),
        probs,
        &mut Vec::new(),
    );
    let dropped: Vec<f32>;
    let weights = match dropout {
        Some((mask, scale)) => {
            let mut masked = probs.to_vec();
            fastmath::mask_scale(&mut masked, mask, scale);
            dropped = masked;
            &dropped[..]
        }
        None => &probs[..],
    };
    product(
        (seq, head_dim, seq),
        context.ptr().add(b * seq * hidden + h * head_dim),
        (hidden, 1),
        false,
        weights.as_ptr(),
        (seq, 1),
        qkv.as_ptr().add(first + 2 * hidden),
        (stride, 1),
        1.0,
        false,
    );
}

/// Multi-head attention over `qkv` into `context`, `dropout` on the attention weights (the
/// training forward's; the mask of pair `b · heads + h` at `pair · seq²`), the pairs over the
/// cores: through [`attention_kernel`] where the CPU and head width take it, else two `gemm`
/// products a pair. `query_bias`, where the queries in `qkv` are still without it, is added to
/// them first, each sequence's rows while in cache for its heads.
pub(crate) fn attention(
    (qkv, query_bias): (&mut [f32], Option<&[f32]>),
    context: &mut [f32],
    keep: &[bool],
    (batch, seq, hidden, heads): (usize, usize, usize, usize),
    dropout: Option<LazyKeep>,
) {
    assert!(qkv.len() == batch * seq * 3 * hidden && context.len() == batch * seq * hidden);
    assert!(query_bias.is_none_or(|bias| bias.len() == hidden));
    let stride = 3 * hidden;
    let add_query_bias = |rows: &mut [f32]| {
        if let Some(bias) = query_bias {
            rows.chunks_exact_mut(stride)
                .for_each(|row| fastmath::add(&mut row[..hidden], bias));
        }
    };
    let head_dim = hidden / heads;
    let bytes = || vec![0u8; if dropout.is_some() { seq * seq } else { 0 }];
    // The pair's mask bytes, made into `bytes`.
    let pair_dropout = |bytes: &mut [u8], pair: usize| {
        dropout.map(|mask| {
            mask.fill(pair * seq * seq, bytes);
            mask.scale
        })
    };
    if attention_kernel::takes(head_dim) {
        // Each sequence's context rows, `[seq, hidden]`, are written by its own pairs only,
        // from its own rows of `qkv`.
        context
            .par_chunks_mut(seq * hidden)
            .zip(qkv.par_chunks_mut(seq * stride))
            .enumerate()
            .for_each_init(
                || (attention_kernel::Scratch::default(), bytes()),
                |(scratch, bytes), (b, (out, qkv))| {
                    add_query_bias(qkv);
                    let qkv = &*qkv;
                    for h in 0..heads {
                        let first = h * head_dim;
                        let scale = pair_dropout(bytes, b * heads + h);
                        let pair = attention_kernel::Pair {
                            qkv,
                            stride,
                            offsets: [first, first + hidden, first + 2 * hidden],
                            seq,
                            head_dim,
                            keep: &keep[b * seq..(b + 1) * seq],
                            dropout: scale.map(|scale| (&bytes[..], scale)),
                        };
                        attention_kernel::attend(&pair, &mut out[h * head_dim..], hidden, scratch);
                    }
                },
            );
        return;
    }
    qkv.par_chunks_mut(seq * stride).for_each(add_query_bias);
    let qkv = &*qkv;
    let out = SharedOut::new(context);
    (0..batch * heads).into_par_iter().for_each_init(
        || (vec![0f32; seq * seq], bytes()),
        |(probs, bytes), pair| {
            let (b, h) = (pair / heads, pair % heads);
            let keep = &keep[b * seq..(b + 1) * seq];
            let dropout = pair_dropout(bytes, pair).map(|scale| (&bytes[..], scale));
            // SAFETY: the context block of (b, h) is written by this pair only.
            unsafe { attend_pair(qkv, keep, (seq, hidden, heads), (b, h), probs, dropout, out) };
        },
    );
}

/// Whether each position of `attention_mask` (`[batch, seq]`) is a real token.
pub(crate) fn real_tokens(attention_mask: Tensor<2, Int>) -> Vec<bool> {
    attention_mask
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("converted to i64")
        .into_iter()
        .map(|m| m != 0)
        .collect()
}

fn activation(values: &mut [f32], bias: Option<&[f32]>, act: HiddenAct) {
    let kernel = match act {
        HiddenAct::Gelu => fastmath::gelu_slice,
        HiddenAct::GeluTanh => fastmath::gelu_tanh_slice,
        HiddenAct::Relu => fastmath::relu_slice,
        HiddenAct::Silu => fastmath::silu_slice,
    };
    match bias {
        None => fastmath::map_parallel(values, kernel),
        // Row by row: the bias added, then the activation, while the row is in cache (GELU's
        // in the same pass).
        Some(bias) => values.par_chunks_mut(16 * bias.len()).for_each(|rows| {
            for row in rows.chunks_exact_mut(bias.len()) {
                if act == HiddenAct::Gelu {
                    fastmath::gelu_biased_slice(row, bias);
                } else {
                    fastmath::add(row, bias);
                    kernel(row);
                }
            }
        }),
    }
}

/// Rows of the feed-forward block computed at a time: 2048 rows of roberta-large's 4096-wide
/// activation are 32 MiB (the whole batch 32 × 128 was 64). Each product ends with one core
/// waiting for the other's last tiles, so fewer, larger ones pay: 1024-row chunks were
/// 2.5 % (MiniLM) to 5 % (roberta-base) slower at batch 32, for 12–15 MiB less peak.
/// The unit tests' batches are small: 8 rows there, so they cover several chunks and a
/// partial one.
const FFN_ROWS: usize = if cfg!(test) { 8 } else { 2048 };

/// `out [rows, d_out] = x W + b` for one chunk of rows, through `packed` when given; the bias
/// may be left to the next pass ([`linear_into_deferring_bias`]).
fn chunk_linear<'a>(
    layer: &'a HostLinear,
    packed: Option<&amx::PackedRhs>,
    precision: ProductPrecision,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
) -> Option<&'a [f32]> {
    let Some(packed) = packed else {
        return linear_into_deferring_bias(layer, precision, x, rows, out);
    };
    let x = Strided::new(x, layer.d_in, 1);
    let start = layer.bias.as_deref().map_or(Start::Zero, Start::Bias);
    amx::product_packed(rows, out, layer.d_out, start, x, packed);
    None
}

/// Buffers reused by every layer of one forward.
struct Scratch {
    qkv: Vec<f32>,
    context: Vec<f32>,
    attended: Vec<f32>,
    expanded: Vec<f32>,
}

fn layer_forward(
    layer: &Layer,
    x: &mut [f32],
    scratch: &mut Scratch,
    keep: &[bool],
    (batch, seq): (usize, usize),
    encoder: &Encoder,
) {
    let config = encoder.config();
    let precision = encoder.product_precision();
    let (hidden, rows) = (config.hidden_size, batch * seq);
    let attention_block = &layer.attention;
    let self_attention = &attention_block.self_attention;
    let projections = [
        &host_linear(&self_attention.query),
        &host_linear(&self_attention.key),
        &host_linear(&self_attention.value),
    ];
    let (query_bias, value_bias) =
        query_key_value(projections, precision, x, rows, &mut scratch.qkv);
    attention(
        (&mut scratch.qkv, query_bias),
        &mut scratch.context,
        keep,
        (batch, seq, hidden, config.num_attention_heads),
        None,
    );
    let eps = config.layer_norm_eps;
    let output = &attention_block.output;
    let attention_output = host_linear(&output.dense);
    let bias = linear_into_deferring_bias(
        &attention_output,
        precision,
        &scratch.context,
        rows,
        &mut scratch.attended,
    );
    let folded = value_bias.map(|b_v| value_bias_through(&attention_output, b_v));
    add_and_norm(
        &mut scratch.attended,
        folded.as_deref().or(bias),
        x,
        &host_layer_norm(&output.layer_norm, eps),
    );
    // The feed-forward block in chunks of rows: its `[rows, intermediate]` activation, the
    // largest buffer of the forward, is needed one chunk at a time.
    let intermediate = config.intermediate_size;
    let (expand, contract) = (
        host_linear(&layer.intermediate.dense),
        host_linear(&layer.output.dense),
    );
    // bf16: each weight packed once for all chunks (where the tiles take it).
    let pack = |l: &HostLinear| {
        if precision != ProductPrecision::Bf16 || l.adapter.is_some() {
            return None;
        }
        let weight = Strided::new(&l.weight, l.d_out, 1);
        amx::pack_weight(weight, l.d_in, l.d_out)
    };
    let (expand_packed, contract_packed) = (pack(&expand), pack(&contract));
    let mut contract_bias = None;
    for start in (0..rows).step_by(FFN_ROWS) {
        let chunk = FFN_ROWS.min(rows - start);
        let attended = &scratch.attended[start * hidden..(start + chunk) * hidden];
        let expanded = &mut scratch.expanded[..chunk * intermediate];
        let bias = chunk_linear(
            &expand,
            expand_packed.as_ref(),
            precision,
            attended,
            chunk,
            expanded,
        );
        activation(expanded, bias, config.hidden_act);
        let out = &mut x[start * hidden..(start + chunk) * hidden];
        contract_bias = chunk_linear(
            &contract,
            contract_packed.as_ref(),
            precision,
            expanded,
            chunk,
            out,
        );
    }
    add_and_norm(
        x,
        contract_bias,
        &scratch.attended,
        &host_layer_norm(&layer.output.layer_norm, eps),
    );
}

/// The last layer for each sequence's first token only, from the layer's input `x`
/// (`[batch·seq, hidden]`); returns `H` (`[batch, hidden]`). Nothing else of the last layer
/// reaches `H`: the query, the attention, its output projection, the feed-forward block and
/// both LayerNorms run on `batch` rows instead of `batch · seq`, and the keys and values are
/// never made ([`first_token_context`]): none of the layer's 12 `rows × hidden²` products.
fn last_layer_first_tokens(
    layer: &Layer,
    x: &[f32],
    keep: &[bool],
    (batch, seq): (usize, usize),
    encoder: &Encoder,
) -> Vec<f32> {
    let config = encoder.config();
    let precision = encoder.product_precision();
    let (hidden, heads) = (config.hidden_size, config.num_attention_heads);
    let self_attention = &layer.attention.self_attention;
    let first = first_rows(x, (batch, seq, hidden));
    let mut query = vec![0f32; batch * hidden];
    let weights = host_linear(&self_attention.query);
    linear_into(&weights, precision, &first, batch, &mut query, hidden, 0);
    let projections = (
        &host_linear(&self_attention.key),
        &host_linear(&self_attention.value),
    );
    let context = first_token_context(x, &query, keep, projections, (batch, seq, hidden, heads));

    let eps = config.layer_norm_eps;
    let output = &layer.attention.output;
    let mut attended = vec![0f32; batch * hidden];
    let attention_output = host_linear(&output.dense);
    let bias =
        linear_into_deferring_bias(&attention_output, precision, &context, batch, &mut attended);
    let norm = host_layer_norm(&output.layer_norm, eps);
    add_and_norm(&mut attended, bias, &first, &norm);
    let mut expanded = vec![0f32; batch * config.intermediate_size];
    let expand = host_linear(&layer.intermediate.dense);
    let bias = linear_into_deferring_bias(&expand, precision, &attended, batch, &mut expanded);
    activation(&mut expanded, bias, config.hidden_act);
    let mut h = vec![0f32; batch * hidden];
    let contract = host_linear(&layer.output.dense);
    let bias = linear_into_deferring_bias(&contract, precision, &expanded, batch, &mut h);
    let norm = host_layer_norm(&layer.output.layer_norm, eps);
    add_and_norm(&mut h, bias, &attended, &norm);
    h
}

/// A projection's weight with its unmerged adapter folded in (`W + s · A B`), or the weight.
fn merged_weight(layer: &HostLinear) -> Cow<'_, [f32]> {
    let Some((a, b, rank, scaling)) = &layer.adapter else {
        return Cow::Borrowed(&layer.weight);
    };
    let mut merged = layer.weight.to_vec();
    let dims = (layer.d_in, *rank, layer.d_out);
    forward_product(a, b, dims, &mut merged, layer.d_out, true, *scaling);
    Cow::Owned(merged)
}

/// The last layer's attention context for each sequence's first token (`[batch, hidden]`),
/// from the layer's input `x` and the first tokens' `query`, without any token's key or
/// value: for head `h` with query `q`, `q · k_t = x_t · (W_k,h q) + q · b_k,h`, and as the
/// probabilities sum to one, `Σ_t p_t v_t = (Σ_t p_t x_t) W_v,h + b_v,h`. Two
/// `rows × hidden²` products become products over `batch · heads` vectors. `q · b_k,h` is
/// left out: one value added to a whole row of scores, which the softmax does not see.
fn first_token_context(
    x: &[f32],
    query: &[f32],
    keep: &[bool],
    (key, value): (&HostLinear, &HostLinear),
    (batch, seq, hidden, heads): (usize, usize, usize, usize),
) -> Vec<f32> {
    let head_dim = hidden / heads;
    assert!(x.len() == batch * seq * hidden && query.len() == batch * hidden);
    assert!(keep.len() == batch * seq && head_dim * heads == hidden);
    assert!([key.d_in, key.d_out, value.d_in, value.d_out] == [hidden; 4]);
    let (w_key, w_value) = (merged_weight(key), merged_weight(value));
    // folded[b, h] = W_k,h q_{b,h}, `[batch, heads, hidden]`.
    let mut folded = vec![0f32; batch * heads * hidden];
    let out = SharedOut::new(&mut folded);
    (0..heads).into_par_iter().for_each(|h| {
        // SAFETY: head h writes row (b, h) of folded for each b, no other head does; its
        // query columns and key weight columns lie inside the asserted lengths.
        unsafe {
            product(
                (batch, hidden, head_dim),
                out.ptr().add(h * hidden),
                (heads * hidden, 1),
                false,
                query.as_ptr().add(h * head_dim),
                (hidden, 1),
                w_key.as_ptr().add(h * head_dim),
                (1, hidden),
                1.0,
                false,
            )
        }
    });
    // pooled[b, h] = Σ_t p_t x_t over sequence b, `[batch, heads, hidden]`.
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut pooled = vec![0f32; batch * heads * hidden];
    pooled
        .par_chunks_mut(heads * hidden)
        .zip(folded.par_chunks(heads * hidden))
        .enumerate()
        .for_each(|(b, (pooled, folded))| {
            let tokens = &x[b * seq * hidden..(b + 1) * seq * hidden];
            let mut probs = vec![0f32; heads * seq];
            // SAFETY: probs is [heads, seq], folded [heads, hidden], tokens [seq, hidden]
            // (read transposed), pooled [heads, hidden]: every index inside them.
            unsafe {
                product(
                    (heads, seq, hidden),
                    probs.as_mut_ptr(),
                    (seq, 1),
                    false,
                    folded.as_ptr(),
                    (hidden, 1),
                    tokens.as_ptr(),
                    (1, hidden),
                    scale,
                    false,
                );
                softmax_over_kept(&mut probs, &keep[b * seq..(b + 1) * seq]);
                product(
                    (heads, hidden, seq),
                    pooled.as_mut_ptr(),
                    (hidden, 1),
                    false,
                    probs.as_ptr(),
                    (seq, 1),
                    tokens.as_ptr(),
                    (hidden, 1),
                    1.0,
                    false,
                );
            }
        });
    // context[b, h's columns] = pooled[b, h] W_v,h + b_v,h.
    let mut context = vec![0f32; batch * hidden];
    if let Some(bias) = &value.bias {
        context
            .chunks_exact_mut(hidden)
            .for_each(|row| row.copy_from_slice(bias));
    }
    let out = SharedOut::new(&mut context);
    (0..heads).into_par_iter().for_each(|h| {
        // SAFETY: head h writes its own columns of each context row; pooled's rows (b, h)
        // and the value weight's columns of h lie inside their buffers.
        unsafe {
            product(
                (batch, head_dim, hidden),
                out.ptr().add(h * head_dim),
                (hidden, 1),
                value.bias.is_some(),
                pooled.as_ptr().add(h * hidden),
                (heads * hidden, 1),
                w_value.as_ptr().add(h * head_dim),
                (hidden, 1),
                1.0,
                false,
            )
        }
    });
    context
}

/// [`Encoder::forward`] on the CPU without autodiff: embeddings through burn (a gather and one
/// LayerNorm), every layer through this module.
pub(crate) fn forward(
    encoder: &Encoder,
    input: EncoderInput,
    embedded: Tensor<3>,
) -> EncoderOutput {
    let [batch, seq, hidden] = embedded.dims();
    let device = embedded.device();
    let layers = &encoder.encoder.layer[..];
    let (x, _) = run_layers(encoder, layers, input, embedded);
    let last_hidden_state =
        Tensor::<3>::from_data(TensorData::new(x, [batch, seq, hidden]), &device);
    let first_token = last_hidden_state
        .clone()
        .narrow(1, 0, 1)
        .reshape([batch, hidden]);
    EncoderOutput {
        last_hidden_state,
        first_token,
    }
}

/// [`Encoder::first_token`] on the CPU without autodiff: [`forward`] with the last layer for
/// the first tokens only ([`last_layer_first_tokens`]).
pub(crate) fn first_token(
    encoder: &Encoder,
    input: EncoderInput,
    embedded: Tensor<3>,
) -> Tensor<2> {
    let [batch, seq, hidden] = embedded.dims();
    let device = embedded.device();
    let layers = &encoder.encoder.layer[..];
    let Some((last, before)) = layers.split_last() else {
        return forward(encoder, input, embedded).first_token;
    };
    let (x, keep) = run_layers(encoder, before, input, embedded);
    let h = last_layer_first_tokens(last, &x, &keep, (batch, seq), encoder);
    Tensor::<2>::from_data(TensorData::new(h, [batch, hidden]), &device)
}

/// The embeddings' output through `layers`: the last one's output, `[batch·seq, hidden]`, and
/// which tokens are real.
fn run_layers(
    encoder: &Encoder,
    layers: &[Layer],
    input: EncoderInput,
    embedded: Tensor<3>,
) -> (Vec<f32>, Vec<bool>) {
    let [batch, seq, hidden] = embedded.dims();
    let keep = real_tokens(input.attention_mask);
    let mut x = host(embedded);
    let config = encoder.config();
    let rows = batch * seq;
    let mut scratch = Scratch {
        qkv: fastmath::zeros(rows * 3 * hidden),
        context: fastmath::zeros(rows * hidden),
        attended: fastmath::zeros(rows * hidden),
        expanded: fastmath::zeros(rows.min(FFN_ROWS) * config.intermediate_size),
    };
    for layer in layers {
        layer_forward(layer, &mut x, &mut scratch, &keep, (batch, seq), encoder);
    }
    (x, keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastmath::test_values as values;

    /// The products' rates `xtask bench --modes products` reports: finite and positive for
    /// f32 (panels and `gemm` sizes both), and for bf16 exactly where a bf16 kernel runs.
    #[test]
    fn product_rates_are_measured_where_the_products_run() {
        for shape in [(256, 64, 96), (8, 16, 32)] {
            let f32 = weight_product_gflops(shape, ProductPrecision::F32, 2);
            assert!(
                f32.is_some_and(|r| r.is_finite() && r > 0.0),
                "{shape:?}: {f32:?}"
            );
            let bf16 = weight_product_gflops(shape, ProductPrecision::Bf16, 2);
            assert_eq!(bf16.is_some(), amx::available(), "{shape:?}");
            assert!(
                bf16.is_none_or(|r| r.is_finite() && r > 0.0),
                "{shape:?}: {bf16:?}"
            );
        }
    }

    /// `product` against a sum in f64, on pools of 2 and 3 threads: cut by rows (m > n) and by
    /// columns, blocks of unequal size (lengths not a multiple of the block), the left factor
    /// read transposed, accumulating into `dst` or not, and products too narrow (200 × 220) or
    /// too small to be cut.
    #[test]
    fn split_products_equal_the_whole() {
        for threads in [2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for (m, n, k) in [
                (1000, 40, 30),
                (30, 1100, 40),
                (520, 530, 8),
                (200, 220, 30),
                (9, 40, 30),
            ] {
                for (transposed_lhs, accumulate) in [(false, false), (true, true)] {
                    let lhs = values(m * k, 1);
                    let rhs = values(k * n, 2);
                    let start = values(m * n, 3);
                    let lhs_strides = if transposed_lhs { (1, m) } else { (k, 1) };
                    let lhs_at = |i: usize, p: usize| lhs[i * lhs_strides.0 + p * lhs_strides.1];
                    let mut dst = start.clone();
                    pool.install(|| unsafe {
                        product(
                            (m, n, k),
                            dst.as_mut_ptr(),
                            (n, 1),
                            accumulate,
                            lhs.as_ptr(),
                            lhs_strides,
                            rhs.as_ptr(),
                            (n, 1),
                            0.5,
                            true,
                        )
                    });
                    for i in 0..m {
                        for j in 0..n {
                            let sum: f64 = (0..k)
                                .map(|p| f64::from(lhs_at(i, p)) * f64::from(rhs[p * n + j]))
                                .sum();
                            let before = if accumulate { start[i * n + j] } else { 0.0 };
                            let exact = f64::from(before) + 0.5 * sum;
                            let got = f64::from(dst[i * n + j]);
                            assert!(
                                (got - exact).abs() <= 1e-5,
                                "{threads} threads, {m}×{n}×{k}: [{i}, {j}] = {got}, not {exact}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// `project_new` writes every value, without a bias and with one, past the size where it
    /// skips zeroing and below it: NaNs left in freed memory of the result's size would come
    /// back where a value was not written. Its values are `project`'s into zeros, bit for bit.
    #[test]
    fn a_new_projection_writes_every_value() {
        for (rows, d_in, d_out) in [(300, 24, 260), (7, 24, 20)] {
            let x = values(rows * d_in, 4);
            let weight = values(d_in * d_out, 5);
            let bias = values(d_out, 6);
            assert_eq!(overwrites_whole((rows, d_out)), rows == 300);
            for bias in [None, Some(&bias[..])] {
                let dense = || Dense {
                    weight: &weight,
                    bias,
                    d_in,
                    d_out,
                };
                drop(std::hint::black_box(vec![f32::NAN; rows * d_out]));
                let new = project_new(dense(), ProductPrecision::F32, &x, rows);
                let mut zeroed = vec![0f32; rows * d_out];
                project(
                    dense(),
                    ProductPrecision::F32,
                    &x,
                    rows,
                    &mut zeroed,
                    d_out,
                    0,
                    None,
                );
                assert_eq!(new.len(), rows * d_out);
                for (i, (a, b)) in new.iter().zip(&zeroed).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{rows} rows, bias {}: [{i}]",
                        bias.is_some()
                    );
                }
                // And `project` itself against a sum in f64.
                for (i, value) in zeroed.iter().enumerate() {
                    let (r, j) = (i / d_out, i % d_out);
                    let exact: f64 = (0..d_in)
                        .map(|p| f64::from(x[r * d_in + p]) * f64::from(weight[p * d_out + j]))
                        .sum::<f64>()
                        + bias.map_or(0.0, |b| f64::from(b[j]));
                    assert!((f64::from(*value) - exact).abs() <= 1e-5, "[{r}, {j}]");
                }
            }
        }
    }
}
