//! The encoder's forward for inference on the CPU, fused by hand over flat buffers.
//!
//! Same function as [`Encoder::forward`]'s burn path (tested equal to it and to Hugging Face's
//! hidden states), but where burn runs each operation as a separate pass, mostly on one thread
//! and through a fresh tensor each time, this path calls the same matrix-product library (`gemm`)
//! straight into reused buffers and fuses the rest:
//! - the bias is the product's starting value (no extra pass);
//! - Q, K and V are written side by side and attention reads them in place, per
//!   (sequence, head) on every core: scores, a vectorised softmax, the context written at its
//!   final position (no transposes, no `[b, h, s, s]` tensor, no bias tensor for padding);
//! - the residual sum and LayerNorm are one pass, the activation another, both parallel.
//!
//! In a MiniLM inference batch the burn path spent more time around its matrix products than in
//! them (BENCHMARKS.md).

use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use crate::config::HiddenAct;
use crate::fastmath;
use crate::model::{Encoder, EncoderInput, EncoderOutput, Layer};
use lora::LoraLinear;

/// A layer's parameters as host vectors, burn's layouts (`W: [in, out]`).
struct HostLinear {
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    d_in: usize,
    d_out: usize,
    /// An unmerged adapter: `A [in, r]`, `B [r, out]`, scaling.
    adapter: Option<(Vec<f32>, Vec<f32>, usize, f32)>,
}

pub(crate) fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32")
}

fn host_linear(layer: &LoraLinear) -> HostLinear {
    let (d_in, d_out) = layer.dims();
    let adapter = layer.adapter.as_ref().filter(|a| !a.is_merged()).map(|a| {
        (
            host(a.lora_a.weight.val()),
            host(a.lora_b.weight.val()),
            a.rank(),
            a.scaling() as f32,
        )
    });
    let Linear { weight, bias } = &layer.base;
    HostLinear {
        weight: host(weight.val()),
        bias: bias.as_ref().map(|b| host(b.val())),
        d_in,
        d_out,
        adapter,
    }
}

struct HostLayerNorm {
    gamma: Vec<f32>,
    beta: Option<Vec<f32>>,
    epsilon: f32,
}

fn host_layer_norm(norm: &LayerNorm, epsilon: f64) -> HostLayerNorm {
    HostLayerNorm {
        gamma: host(norm.gamma.val()),
        beta: norm.beta.as_ref().map(|b| host(b.val())),
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

/// `out[rows, col0 .. col0 + d_out]` (row stride `out_stride`) `= x[rows, d_in] · W + b`, plus
/// the adapter's `scaling · (x A) B` when it has one.
fn linear_into(
    layer: &HostLinear,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
    out_stride: usize,
    col0: usize,
) {
    let (d_in, d_out) = (layer.d_in, layer.d_out);
    assert!(x.len() >= rows * d_in && out.len() >= (rows - 1) * out_stride + col0 + d_out);
    if let Some(bias) = &layer.bias {
        out.par_chunks_mut(out_stride)
            .take(rows)
            .for_each(|row| row[col0..col0 + d_out].copy_from_slice(bias));
    }
    // SAFETY: the bounds were checked above; gemm reads `x` and `W` in their row-major
    // layouts and writes only the `rows × d_out` block of `out` starting at `col0`.
    unsafe {
        gemm::gemm(
            rows,
            d_out,
            d_in,
            out.as_mut_ptr().add(col0),
            1,
            out_stride as isize,
            layer.bias.is_some(),
            x.as_ptr(),
            1,
            d_in as isize,
            layer.weight.as_ptr(),
            1,
            d_out as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
    if let Some((a, b, rank, scaling)) = &layer.adapter {
        let mut low = vec![0f32; rows * rank];
        // SAFETY: `low` is `rows × rank`, `a` is `d_in × rank`, `b` is `rank × d_out`.
        unsafe {
            gemm::gemm(
                rows,
                *rank,
                d_in,
                low.as_mut_ptr(),
                1,
                *rank as isize,
                false,
                x.as_ptr(),
                1,
                d_in as isize,
                a.as_ptr(),
                1,
                *rank as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
            gemm::gemm(
                rows,
                d_out,
                *rank,
                out.as_mut_ptr().add(col0),
                1,
                out_stride as isize,
                true,
                low.as_ptr(),
                1,
                *rank as isize,
                b.as_ptr(),
                1,
                d_out as isize,
                1.0,
                *scaling,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
    }
}

/// `x = LayerNorm(x + residual)` row by row (HF's `LayerNorm(dropout(dense(h)) + input)`).
fn add_and_norm(x: &mut [f32], residual: &[f32], norm: &HostLayerNorm) {
    let d = norm.gamma.len();
    let zeros;
    let beta = match &norm.beta {
        Some(beta) => beta,
        None => {
            zeros = vec![0.0; d];
            &zeros
        }
    };
    x.par_chunks_mut(d)
        .zip(residual.par_chunks(d))
        .for_each(|(row, res)| {
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

/// Multi-head attention over `qkv` (`[batch·seq, 3·hidden]`: Q, K, V side by side) into
/// `context` (`[batch·seq, hidden]`). `keep[b·seq + j]`: key `j` of sequence `b` is a real token.
#[allow(clippy::too_many_arguments)]
fn attention(
    qkv: &[f32],
    context: &mut [f32],
    keep: &[bool],
    batch: usize,
    seq: usize,
    hidden: usize,
    heads: usize,
) {
    let head_dim = hidden / heads;
    let stride = 3 * hidden;
    let scale = 1.0 / (head_dim as f32).sqrt();
    assert!(qkv.len() == batch * seq * stride && context.len() == batch * seq * hidden);
    let out = SharedOut::new(context);
    (0..batch * heads).into_par_iter().for_each_init(
        || vec![0f32; seq * seq],
        |scores, pair| {
            let (b, h) = (pair / heads, pair % heads);
            let first = b * seq * stride + h * head_dim;
            let (q, k, v) = (
                &qkv[first..],
                &qkv[first + hidden..],
                &qkv[first + 2 * hidden..],
            );
            let keep = &keep[b * seq..(b + 1) * seq];
            // SAFETY: q, k and v start inside `qkv` and gemm reads `seq` rows of `head_dim`
            // values at row stride `3·hidden` from each (within the sequence's block). The
            // context block (rows of sequence b, columns of head h) is written by this
            // (b, h) pair only.
            unsafe {
                // scores[i, j] = scale · q_i · k_j
                gemm::gemm(
                    seq,
                    seq,
                    head_dim,
                    scores.as_mut_ptr(),
                    1,
                    seq as isize,
                    false,
                    q.as_ptr(),
                    1,
                    stride as isize,
                    k.as_ptr(),
                    stride as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                let all_kept = keep.iter().all(|&k| k);
                let any_kept = keep.iter().any(|&k| k);
                for row in scores.chunks_mut(seq) {
                    if all_kept || !any_kept {
                        fastmath::softmax(row);
                    } else {
                        fastmath::softmax_masked(row, keep);
                    }
                }
                // context[b·seq + i, h·head_dim + c] = Σ_j p_ij v_jc
                gemm::gemm(
                    seq,
                    head_dim,
                    seq,
                    out.ptr().add(b * seq * hidden + h * head_dim),
                    1,
                    hidden as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    seq as isize,
                    v.as_ptr(),
                    1,
                    stride as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        },
    );
}

fn activation(values: &mut [f32], act: HiddenAct) {
    let kernel = match act {
        HiddenAct::Gelu => fastmath::gelu_slice,
        HiddenAct::GeluTanh => fastmath::gelu_tanh_slice,
        HiddenAct::Relu => fastmath::relu_slice,
        HiddenAct::Silu => fastmath::silu_slice,
    };
    fastmath::map_parallel(values, kernel);
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
    let (hidden, rows) = (config.hidden_size, batch * seq);
    let attention_block = &layer.attention;
    let self_attention = &attention_block.self_attention;
    for (i, projection) in [
        &self_attention.query,
        &self_attention.key,
        &self_attention.value,
    ]
    .into_iter()
    .enumerate()
    {
        let weights = host_linear(projection);
        linear_into(&weights, x, rows, &mut scratch.qkv, 3 * hidden, i * hidden);
    }
    attention(
        &scratch.qkv,
        &mut scratch.context,
        keep,
        batch,
        seq,
        hidden,
        config.num_attention_heads,
    );
    let eps = config.layer_norm_eps;
    let output = &attention_block.output;
    linear_into(
        &host_linear(&output.dense),
        &scratch.context,
        rows,
        &mut scratch.attended,
        hidden,
        0,
    );
    add_and_norm(
        &mut scratch.attended,
        x,
        &host_layer_norm(&output.layer_norm, eps),
    );
    let intermediate = config.intermediate_size;
    linear_into(
        &host_linear(&layer.intermediate.dense),
        &scratch.attended,
        rows,
        &mut scratch.expanded,
        intermediate,
        0,
    );
    activation(&mut scratch.expanded, config.hidden_act);
    linear_into(
        &host_linear(&layer.output.dense),
        &scratch.expanded,
        rows,
        x,
        hidden,
        0,
    );
    add_and_norm(
        x,
        &scratch.attended,
        &host_layer_norm(&layer.output.layer_norm, eps),
    );
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
    let keep: Vec<bool> = input
        .attention_mask
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("converted to i64")
        .into_iter()
        .map(|m| m != 0)
        .collect();
    let mut x = host(embedded);
    let config = encoder.config();
    let rows = batch * seq;
    let mut scratch = Scratch {
        qkv: vec![0f32; rows * 3 * hidden],
        context: vec![0f32; rows * hidden],
        attended: vec![0f32; rows * hidden],
        expanded: vec![0f32; rows * config.intermediate_size],
    };
    for layer in &encoder.encoder.layer {
        layer_forward(layer, &mut x, &mut scratch, &keep, (batch, seq), encoder);
    }
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
