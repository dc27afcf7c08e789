//! One attention head of one sequence on AVX-512, for CPU inference and the training forward:
//! `dropout(softmax(scale · q kᵀ)) v` six query rows at a time, their scores, softmax and
//! context made while the rows sit in L1.
//!
//! Why: through `gemm`, each (sequence, head) pair was two small products (`[seq, seq]` by a
//! head width of 32 or 64) that packed both operands, with the whole `[seq, seq]` score matrix
//! (64 KiB at 128 tokens) going through L2 for a row-by-row softmax between them, whose
//! horizontal maxima and sums cost as much as its exponentials on 128-wide rows: 11–15 % of a
//! MiniLM inference batch for 5 % of its arithmetic (BENCHMARKS.md). Here the keys are
//! gathered once per pair into `kᵀ` (`[head_dim, seq]`, padded to 16 keys), the values copied
//! into one block, and a six-row tile keeps its running maxima in registers; the context is
//! `Σ_t e_t v_t / Σ_t e_t` with `e_t = exp(s_t − max)`, so no pass normalises the weights
//! (with dropout, `e_t` in the numerator only is multiplied by the mask).
//!
//! The same function as the `gemm` path, summed in another order (equal up to f32 rounding):
//! masked keys (and the padding) get `−∞` before the softmax, every key counts when a sequence
//! has none or only real ones, as in [`crate::cpu_inference`].

/// Whether this CPU and head width take the kernel: AVX-512, and a head width that is a
/// multiple of 16 (MiniLM's 32, roberta-base's and -large's 64).
pub(crate) fn takes(head_dim: usize) -> bool {
    head_dim > 0 && head_dim.is_multiple_of(LANES) && available()
}

fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// f32 lanes of a vector register.
const LANES: usize = 16;
/// Query rows per tile: 6 rows × 4 vectors of scores are 24 of the 32 registers.
const ROWS: usize = 6;

/// One (sequence, head) pair: its query, key and value rows (`head_dim` values each, at row
/// stride `stride`: the `[tokens, 3 · hidden]` buffer), which keys are real, and where the
/// context rows go (row stride `out_stride`).
pub(crate) struct Pair<'a> {
    pub qkv: &'a [f32],
    pub stride: usize,
    /// Offsets in `qkv` of the first token's query, key and value.
    pub offsets: [usize; 3],
    pub seq: usize,
    pub head_dim: usize,
    pub keep: &'a [bool],
    /// The dropout of the attention weights: keep bytes (`[seq, seq]`, query row by row) and
    /// the scale of a kept weight.
    pub dropout: Option<(&'a [u8], f32)>,
}

/// Buffers one thread reuses from pair to pair.
#[derive(Default)]
pub(crate) struct Scratch {
    keys_transposed: Vec<f32>,
    values: Vec<f32>,
    key_bias: Vec<f32>,
    scores: Vec<f32>,
}

/// `out[i, ..head_dim] = Σ_t p_it v_t` with `p_i = softmax_t(scale · q_i · k_t)` for every
/// query row `i` of `pair`, `out` holding row `i` at `i · out_stride`.
///
/// # Panics
/// When [`takes`] is false for the pair's head width, or a row lies outside its buffer.
pub(crate) fn attend(pair: &Pair<'_>, out: &mut [f32], out_stride: usize, scratch: &mut Scratch) {
    let Pair {
        qkv,
        stride,
        offsets,
        seq,
        head_dim,
        keep,
        dropout,
    } = *pair;
    assert!(dropout.is_none_or(|(bytes, _)| bytes.len() >= seq * seq));
    assert!(
        takes(head_dim),
        "no AVX-512 attention kernel for this CPU or head width"
    );
    assert!(
        seq > 0 && keep.len() == seq && offsets.iter().all(|&o| o % stride + head_dim <= stride)
    );
    let last = offsets.iter().max().expect("three offsets") + (seq - 1) * stride + head_dim;
    assert!(last <= qkv.len() && (seq - 1) * out_stride + head_dim <= out.len());
    let padded = seq.div_ceil(LANES) * LANES;
    scratch.keys_transposed.resize(head_dim * padded, 0.0);
    scratch.values.clear();
    for t in 0..seq {
        let row = offsets[2] + t * stride;
        scratch.values.extend_from_slice(&qkv[row..row + head_dim]);
    }
    scratch.scores.resize(ROWS * padded, 0.0);
    // Masked keys and the padding out of every softmax, unless the sequence has no masked key
    // or no real one (then all of its keys count).
    let every_key = keep.iter().all(|&k| k) || !keep.iter().any(|&k| k);
    scratch.key_bias.clear();
    scratch.key_bias.extend((0..padded).map(|t| {
        let counts = t < seq && (every_key || keep[t]);
        if counts {
            0.0
        } else {
            f32::NEG_INFINITY
        }
    }));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F is present (`takes`); every row read lies inside `qkv` and every row
    // written inside `out` (asserted above), the scratch buffers have the lengths the kernels
    // index (resized above).
    unsafe {
        avx512::attend(pair, padded, out, out_stride, scratch)
    };
    // Elsewhere `takes` is false and the first assertion has already stopped the call.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (out, out_stride);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    // The register tiles are indexed by row and vector, as the formulas are.
    #![allow(clippy::needless_range_loop)]

    use std::arch::x86_64::*;

    use super::{Pair, Scratch, LANES, ROWS};
    use crate::fastmath;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn attend(
        pair: &Pair<'_>,
        padded: usize,
        out: &mut [f32],
        out_stride: usize,
        scratch: &mut Scratch,
    ) {
        let Pair {
            qkv,
            stride,
            offsets: [query, key, _],
            seq,
            head_dim,
            ..
        } = *pair;
        let scale = 1.0 / (head_dim as f32).sqrt();
        transpose_keys(
            qkv.as_ptr().add(key),
            stride,
            seq,
            head_dim,
            padded,
            scratch,
        );
        let kt = scratch.keys_transposed.as_ptr();
        for first in (0..seq).step_by(ROWS) {
            // The last tile repeats the last row where it runs out (computed, not stored).
            let rows: [usize; ROWS] = std::array::from_fn(|r| (first + r).min(seq - 1));
            let q: [*const f32; ROWS] = rows.map(|i| qkv.as_ptr().add(query + i * stride));
            let scores = scratch.scores.as_mut_ptr();
            let bias = scratch.key_bias.as_ptr();
            let mut maxima = [_mm512_set1_ps(f32::NEG_INFINITY); ROWS];
            let mut chunk = 0;
            while chunk < padded {
                let tile = (scores.add(chunk), padded);
                let keys = (kt.add(chunk), padded);
                let bias = bias.add(chunk);
                let m = &mut maxima;
                match (padded - chunk) / LANES {
                    1 => score_chunk::<1>(q, keys, head_dim, (scale, bias), tile, m),
                    2 => score_chunk::<2>(q, keys, head_dim, (scale, bias), tile, m),
                    3 => score_chunk::<3>(q, keys, head_dim, (scale, bias), tile, m),
                    _ => score_chunk::<4>(q, keys, head_dim, (scale, bias), tile, m),
                }
                chunk += 4 * LANES;
            }
            // e_t = exp(s_t − max) in place, and their sum: the context is Σ e_t v_t / Σ e_t.
            let mut inverse_sums = [0f32; ROWS];
            for r in 0..ROWS {
                let row = &mut scratch.scores[r * padded..(r + 1) * padded];
                let max = _mm512_reduce_max_ps(maxima[r]);
                for v in row.iter_mut() {
                    *v = fastmath::exp(*v - max);
                }
                let mut sum = _mm512_setzero_ps();
                for c in (0..padded).step_by(LANES) {
                    sum = _mm512_add_ps(sum, _mm512_loadu_ps(row.as_ptr().add(c)));
                }
                inverse_sums[r] = 1.0 / _mm512_reduce_add_ps(sum);
                // Dropout on the weights, after their sum (the softmax's) is taken.
                if let Some((bytes, scale)) = pair.dropout {
                    let keep = &bytes[rows[r] * seq..(rows[r] + 1) * seq];
                    fastmath::mask_scale(&mut row[..seq], keep, scale);
                }
            }
            let weights = scratch.scores.as_ptr();
            let stored = ROWS.min(seq - first);
            let mut column = 0;
            while column < head_dim {
                let values = (scratch.values.as_ptr().add(column), head_dim);
                let dst = (
                    out.as_mut_ptr().add(first * out_stride + column),
                    out_stride,
                );
                let tile = (weights, padded, seq);
                let rows = (inverse_sums, stored);
                match (head_dim - column) / LANES {
                    1 => context_chunk::<1>(tile, values, dst, rows),
                    2 => context_chunk::<2>(tile, values, dst, rows),
                    3 => context_chunk::<3>(tile, values, dst, rows),
                    _ => context_chunk::<4>(tile, values, dst, rows),
                }
                column += 4 * LANES;
            }
        }
    }

    /// `kᵀ[d, t] = k[t, d]` for the pair's keys, `[head_dim, padded]`, zeros past the last key:
    /// sixteen keys of one column per gather.
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose_keys(
        keys: *const f32,
        stride: usize,
        seq: usize,
        head_dim: usize,
        padded: usize,
        scratch: &mut Scratch,
    ) {
        let kt = scratch.keys_transposed.as_mut_ptr();
        let step = stride as i32;
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let index = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(step));
        for t0 in (0..padded).step_by(LANES) {
            let real = (seq - t0).min(LANES);
            let mask: __mmask16 = if real == LANES {
                0xffff
            } else {
                (1 << real) - 1
            };
            let base = keys.add(t0 * stride);
            for d in 0..head_dim {
                let column =
                    _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, index, base.add(d));
                _mm512_storeu_ps(kt.add(d * padded + t0), column);
            }
        }
    }

    /// Scores of the tile's rows against `V` vectors of keys: `tile[r, j] = scale ·
    /// Σ_d q_r[d] kᵀ[d, j] + bias[j]`, each row's running maximum in `maxima[r]`.
    #[inline(always)]
    unsafe fn score_chunk<const V: usize>(
        q: [*const f32; ROWS],
        (kt, kt_stride): (*const f32, usize),
        head_dim: usize,
        (scale, bias): (f32, *const f32),
        (tile, tile_stride): (*mut f32, usize),
        maxima: &mut [__m512; ROWS],
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; ROWS];
        for d in 0..head_dim {
            let keys: [__m512; V] =
                std::array::from_fn(|v| _mm512_loadu_ps(kt.add(d * kt_stride + v * LANES)));
            for r in 0..ROWS {
                let qd = _mm512_set1_ps(*q[r].add(d));
                for v in 0..V {
                    acc[r][v] = _mm512_fmadd_ps(qd, keys[v], acc[r][v]);
                }
            }
        }
        let scale = _mm512_set1_ps(scale);
        for v in 0..V {
            let b = _mm512_loadu_ps(bias.add(v * LANES));
            for r in 0..ROWS {
                let s = _mm512_fmadd_ps(acc[r][v], scale, b);
                maxima[r] = _mm512_max_ps(maxima[r], s);
                _mm512_storeu_ps(tile.add(r * tile_stride + v * LANES), s);
            }
        }
    }

    /// The tile's first `stored` rows of context over `U` vectors of value columns:
    /// `dst[r, ..] = inverse_sums[r] · Σ_t e[r, t] v_t[..]`.
    #[inline(always)]
    unsafe fn context_chunk<const U: usize>(
        (weights, weights_stride, seq): (*const f32, usize, usize),
        (values, stride): (*const f32, usize),
        (dst, dst_stride): (*mut f32, usize),
        (inverse_sums, stored): ([f32; ROWS], usize),
    ) {
        let mut acc = [[_mm512_setzero_ps(); U]; ROWS];
        for t in 0..seq {
            let row = values.add(t * stride);
            let v: [__m512; U] = std::array::from_fn(|u| _mm512_loadu_ps(row.add(u * LANES)));
            for r in 0..ROWS {
                let e = _mm512_set1_ps(*weights.add(r * weights_stride + t));
                for u in 0..U {
                    acc[r][u] = _mm512_fmadd_ps(e, v[u], acc[r][u]);
                }
            }
        }
        for r in 0..stored {
            let inverse_sum = _mm512_set1_ps(inverse_sums[r]);
            for u in 0..U {
                let context = _mm512_mul_ps(acc[r][u], inverse_sum);
                _mm512_storeu_ps(dst.add(r * dst_stride + u * LANES), context);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dropout(softmax(q kᵀ / √d)) v` in f64, over the real keys (all of them when none or all
    /// are).
    fn reference(pair: &Pair<'_>, i: usize) -> Vec<f64> {
        let Pair {
            qkv,
            stride,
            offsets: [q0, k0, v0],
            seq,
            head_dim,
            keep,
            dropout,
        } = *pair;
        let dropped = |t: usize| match dropout {
            Some((bytes, scale)) => f64::from(bytes[i * seq + t]) * f64::from(scale),
            None => 1.0,
        };
        let every_key = keep.iter().all(|&k| k) || !keep.iter().any(|&k| k);
        let row = |offset: usize, t: usize| &qkv[offset + t * stride..][..head_dim];
        let scale = 1.0 / (head_dim as f64).sqrt();
        let counted: Vec<usize> = (0..seq).filter(|&t| every_key || keep[t]).collect();
        let scores: Vec<f64> = counted
            .iter()
            .map(|&t| {
                let dot: f64 = (row(q0, i).iter().zip(row(k0, t)))
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                scale * dot
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        (0..head_dim)
            .map(|d| {
                counted
                    .iter()
                    .zip(&weights)
                    .map(|(&t, w)| w / total * dropped(t) * f64::from(row(v0, t)[d]))
                    .sum()
            })
            .collect()
    }

    #[test]
    fn attention_tiles_equal_the_definition() {
        if !takes(16) {
            eprintln!("skipped: no AVX-512 on this CPU");
            return;
        }
        let mut scratch = Scratch::default();
        for head_dim in [16, 32, 48, 64, 128] {
            for seq in [1, 7, 37, 128] {
                let heads = 2;
                let hidden = heads * head_dim;
                let stride = 3 * hidden;
                // Values of order one with large scores in places (a sharp softmax).
                let qkv: Vec<f32> = (0..seq * stride)
                    .map(|i| (((i * 7919 + head_dim) % 1013) as f32 / 1013.0 - 0.5) * 3.0)
                    .collect();
                let masks: [Vec<bool>; 3] = [
                    vec![true; seq],
                    (0..seq).map(|t| t % 3 != 1).collect(),
                    vec![false; seq],
                ];
                let bytes: Vec<u8> = (0..seq * seq).map(|i| u8::from(i % 7 != 3)).collect();
                let dropouts = [None, Some((&bytes[..], 1.25))];
                for (keep, dropout) in masks.iter().flat_map(|k| dropouts.map(|d| (k, d))) {
                    for h in 0..heads {
                        let first = h * head_dim;
                        let pair = Pair {
                            qkv: &qkv,
                            stride,
                            offsets: [first, first + hidden, first + 2 * hidden],
                            seq,
                            head_dim,
                            keep,
                            dropout,
                        };
                        // NaN where nothing may be written: the other head's columns.
                        let mut out = vec![f32::NAN; seq * hidden];
                        attend(&pair, &mut out[first..], hidden, &mut scratch);
                        for i in 0..seq {
                            let expected = reference(&pair, i);
                            let row = &out[i * hidden..(i + 1) * hidden];
                            for (d, want) in expected.iter().enumerate() {
                                let got = f64::from(row[first + d]);
                                let error = (got - want).abs();
                                assert!(
                                    error <= 1e-5,
                                    "head_dim {head_dim}, seq {seq}, head {h}, row {i}, \
                                     column {d}: {got} against {want}"
                                );
                            }
                            let other = (1 - h) * head_dim;
                            assert!(row[other..other + head_dim].iter().all(|v| v.is_nan()));
                        }
                    }
                }
            }
        }
    }
}
