//! The row kernels on AVX-512, eight ranks at a time with the rank dimension in registers.
//!
//! The portable kernels ([`super::forward_low_rows`], [`super::forward_update_rows`],
//! [`super::backward_rows`]) add each 4 × 4 tile of products into `out`, `dAᵀ`, `dB` and a
//! scratch `dx` row by row: every multiply-add reads and writes its target, and for the wide
//! adapters (`d = 1536`) the targets live in L2, not in registers (`perf annotate`: the stores
//! and the loads feeding them were the hottest lines).
//! Here each product keeps its targets in registers for a whole block of rows instead:
//! - a dot product (`(m ⊙ x) Aᵀ`, `dy Bᵀ`) is a 2-row × 8-rank tile of sixteen sums;
//! - an update along the long dimension (`out += s · low B`, `dB += low dy`, `dAᵀ += d_low
//!   (m ⊙ x)`, `dx += m ⊙ d_low A`) runs column chunk by column chunk, with the eight factor
//!   rows (or eight gradient rows) of the chunk in registers and the block's rows streamed
//!   past them; the input gradient's dropout is applied as it is stored, with no scratch row.
//!
//! The factors are padded to a multiple of [`GROUP`] ranks with zero rows ([`Factors`]).

// The register tiles are indexed by rank and row, as the formulas are.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::{BlockDropout, Factors};
use crate::model::LazyKeep;

/// Ranks per register group.
pub(super) const GROUP: usize = 8;

/// f32 lanes of a vector register.
const LANES: usize = 16;

/// Whether the CPU runs these kernels.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
}

/// The lanes of the chunk at `o` in a row of `n`: all sixteen, or the tail's.
#[inline(always)]
fn lanes(n: usize, o: usize) -> __mmask16 {
    if n - o >= LANES {
        0xffff
    } else {
        (1u16 << (n - o)) - 1
    }
}

/// The dropout of a block (`[n, d]`): its keep bytes, made for the block, or the bits the
/// forward kept (`d` a multiple of 16: one `u16` per chunk), and the scale.
#[derive(Clone, Copy)]
struct Keep<'a> {
    source: KeepSource<'a>,
    scale: f32,
}

#[derive(Clone, Copy)]
enum KeepSource<'a> {
    Bytes(&'a [u8]),
    Bits(&'a [u16]),
}

impl<'a> Keep<'a> {
    /// The block's (`[n, d]`) mask as bits, one `u16` per chunk of 16.
    fn from_bits(mask: &LazyKeep, bits: &'a [u16], n: usize, d: usize) -> Self {
        assert!(d.is_multiple_of(LANES) && bits.len() * LANES == n * d);
        Keep {
            source: KeepSource::Bits(bits),
            scale: mask.scale,
        }
    }

    /// The keep bits of the chunk at `offset` (lanes `m`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    fn bits(self, offset: usize, m: __mmask16) -> __mmask16 {
        match self.source {
            KeepSource::Bytes(bytes) => {
                assert!(offset + m.count_ones() as usize <= bytes.len());
                // SAFETY: the lanes `m` covers lie inside `bytes` (asserted); masked lanes are
                // not read.
                let chunk = unsafe { _mm_maskz_loadu_epi8(m, bytes.as_ptr().add(offset).cast()) };
                _mm_mask_test_epi8_mask(m, chunk, chunk)
            }
            KeepSource::Bits(bits) => {
                debug_assert!(offset.is_multiple_of(LANES), "rows of whole chunks");
                bits[offset / LANES] & m
            }
        }
    }
}

/// How far ahead, in column chunks, the column-chunk loops below ask for each row's next
/// chunk. They visit a block's rows one chunk (a cache line) each before moving on, a stride
/// the hardware prefetchers do not follow: waiting on those loads was most of these kernels'
/// time (`perf annotate`). Asked for in the loop, two chunks ahead, rather than a block's
/// rows into L2 before it (which cost a quarter of the forward update by itself): the
/// adapters' kernels took 0.13 of `gemm`'s time in a LoRA step against 0.20 before, one
/// chunk ahead 0.15, three 0.15 ("Twenty-first session" in BENCHMARKS.md).
const AHEAD: usize = 2;

/// Asks for the first [`AHEAD`] chunks of `n` rows (row `i` at `i · stride` of `data`): the
/// ones a column-chunk loop reads before its own requests run ahead of it.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn ask_first_chunks(data: &[f32], n: usize, stride: usize) {
    for i in 0..n {
        for chunk in 0..AHEAD {
            ask(data.as_ptr().wrapping_add(i * stride + chunk * LANES));
        }
    }
}

/// Asks for the chunk [`AHEAD`] chunks after the one at `at`, in the same row.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
fn ask_ahead(at: *const f32) {
    ask(at.wrapping_add(AHEAD * LANES));
}

/// Asks for the cache line at `at` into L1.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
fn ask(at: *const f32) {
    // A prefetch reads nothing and cannot fault: the address need not be inside the buffer.
    _mm_prefetch::<_MM_HINT_T0>(at.cast());
}

/// The block's keep bytes into `buffer` (`n · d` of them), or `None` without dropout.
fn block_keep(dropout: BlockDropout, n: usize, d: usize, buffer: &mut Vec<u8>) -> Option<Keep<'_>> {
    let (mask, first) = dropout?;
    buffer.resize(n * d, 0);
    mask.fill(first, &mut buffer[..n * d]);
    Some(Keep {
        source: KeepSource::Bytes(&buffer[..n * d]),
        scale: mask.scale,
    })
}

/// `x` masked by `keep` (× scale) where there is dropout, chunk at `offset` of the block.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
fn dropped(x: __m512, keep: Option<Keep<'_>>, offset: usize, m: __mmask16) -> __m512 {
    match keep {
        Some(keep) => _mm512_maskz_mul_ps(keep.bits(offset, m), x, _mm512_set1_ps(keep.scale)),
        None => x,
    }
}

/// `[rows[t] · vectors[k]]` for two rows and the [`GROUP`] vectors of length `d` at
/// `vectors[k · d ..]`, each row masked by its keep bytes first (at `keep_at[t]`); the rows
/// at `ahead` are asked into L1 on the way.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
fn dots(
    rows: [&[f32]; 2],
    keep: Option<Keep<'_>>,
    keep_at: [usize; 2],
    vectors: &[f32],
    d: usize,
    ahead: [*const f32; 2],
) -> [[f32; GROUP]; 2] {
    assert!(rows.iter().all(|r| r.len() >= d) && vectors.len() >= GROUP * d);
    let mut acc = [[_mm512_setzero_ps(); GROUP]; 2];
    let mut o = 0;
    while o < d {
        let m = lanes(d, o);
        ask(ahead[0].wrapping_add(o));
        ask(ahead[1].wrapping_add(o));
        // SAFETY: lanes o..d of every row and vector (lengths asserted above).
        let x = unsafe {
            [
                _mm512_maskz_loadu_ps(m, rows[0].as_ptr().add(o)),
                _mm512_maskz_loadu_ps(m, rows[1].as_ptr().add(o)),
            ]
        };
        let x = [
            dropped(x[0], keep, keep_at[0] + o, m),
            dropped(x[1], keep, keep_at[1] + o, m),
        ];
        for k in 0..GROUP {
            // SAFETY: as above.
            let v = unsafe { _mm512_maskz_loadu_ps(m, vectors.as_ptr().add(k * d + o)) };
            acc[0][k] = _mm512_fmadd_ps(x[0], v, acc[0][k]);
            acc[1][k] = _mm512_fmadd_ps(x[1], v, acc[1][k]);
        }
        o += LANES;
    }
    [sums_of(&acc[0]), sums_of(&acc[1])]
}

/// The eight lane sums of `vectors`, `[Σ vectors[0], …, Σ vectors[7]]`: halves added, then a
/// tree of pairwise additions that transposes as it sums (a third of the instructions of eight
/// separate reductions; a closure over `_mm512_reduce_add_ps` was not even inlined, being
/// compiled without this function's target features).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
fn sums_of(vectors: &[__m512; GROUP]) -> [f32; GROUP] {
    let mut halves = [_mm256_setzero_ps(); GROUP];
    for k in 0..GROUP {
        halves[k] = _mm256_add_ps(
            _mm512_castps512_ps256(vectors[k]),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(vectors[k]))),
        );
    }
    // Lanes [v0: 0+1, 2+3, v1: 0+1, 2+3 | v0: 4+5, 6+7, v1: 4+5, 6+7], and so on.
    let pairs = [
        _mm256_hadd_ps(halves[0], halves[1]),
        _mm256_hadd_ps(halves[2], halves[3]),
        _mm256_hadd_ps(halves[4], halves[5]),
        _mm256_hadd_ps(halves[6], halves[7]),
    ];
    // [v0..v3: lanes 0–3 | v0..v3: lanes 4–7] and the same for v4..v7.
    let low = _mm256_hadd_ps(pairs[0], pairs[1]);
    let high = _mm256_hadd_ps(pairs[2], pairs[3]);
    let sums = _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(low, high),
        _mm256_permute2f128_ps::<0x31>(low, high),
    );
    let mut out = [0f32; GROUP];
    // SAFETY: eight floats into `out`.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sums) };
    out
}

/// `low[i, g·8 ..][k] = (rows_i ⊙ m_i) · vectors_g[k]` (scaled by `scale`) for the `n` rows of
/// `source` (row `i` at `i · stride`, length `d`) and every group `g` of `vectors`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
fn low_products(
    source: &[f32],
    stride: usize,
    d: usize,
    n: usize,
    keep: Option<Keep<'_>>,
    vectors: &[f32],
    padded: usize,
    scale: f32,
    low: &mut [f32],
) {
    for i0 in (0..n).step_by(2) {
        // An odd last row is paired with itself; its second copy is not stored.
        let i1 = (i0 + 1).min(n - 1);
        let rows = [&source[i0 * stride..], &source[i1 * stride..]];
        // The next pair's rows, asked for while this pair's first group runs.
        let next = |i: usize| source[(i.min(n - 1)) * stride..].as_ptr();
        let ahead = [next(i0 + 2), next(i0 + 3)];
        for g in 0..padded / GROUP {
            let ahead = if g == 0 {
                ahead
            } else {
                rows.map(<[f32]>::as_ptr)
            };
            let sums = dots(
                rows,
                keep,
                [i0 * d, i1 * d],
                &vectors[g * GROUP * d..],
                d,
                ahead,
            );
            for (t, sums) in sums.iter().enumerate().take(n - i0) {
                let at = (i0 + t) * padded + g * GROUP;
                for (l, s) in low[at..at + GROUP].iter_mut().zip(sums) {
                    *l = scale * s;
                }
            }
        }
    }
}

/// The forward's low-rank rows `low = (m ⊙ x) A` of one block (`low.len() / padded` rows), the
/// dropout drawn straight into the bits the backward reads where it keeps them.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) fn forward_low_rows(
    factors: &Factors,
    dropout: BlockDropout,
    x: &[f32],
    low: &mut [f32],
    (keep_buffer, kept_bits): (&mut Vec<u8>, Option<&mut [u16]>),
) {
    let (d_in, padded, _, _) = factors.layout();
    let n = low.len() / padded;
    assert!(n > 0 && x.len() >= n * d_in);
    let keep = match (dropout, kept_bits) {
        // Drawn straight into the bits the backward reads.
        (Some((mask, first)), Some(bits)) => {
            mask.fill_bits(first, bits);
            Some(Keep::from_bits(&mask, bits, n, d_in))
        }
        _ => block_keep(dropout, n, d_in, keep_buffer),
    };
    low_products(
        x,
        d_in,
        d_in,
        n,
        keep,
        &factors.a_transposed,
        padded,
        1.0,
        low,
    );
}

/// The forward's update of one block, `out_i += (bias +) s · low_i B`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) fn forward_update_rows(
    factors: &Factors,
    low: &[f32],
    (out, out_rs): (&mut [f32], usize),
    bias: Option<&[f32]>,
) {
    let (_, padded, d_out, scaling) = factors.layout();
    let n = low.len() / padded;
    assert!(n > 0 && out.len() >= (n - 1) * out_rs + d_out);
    // out_i += (bias +) Σ_k low[i, k] · (s B_k): the chunk's eight rows of s·B in registers.
    ask_first_chunks(out, n, out_rs);
    assert!(bias.is_none_or(|bias| bias.len() >= d_out));
    let scaling = _mm512_set1_ps(scaling);
    for g in 0..padded / GROUP {
        let b = &factors.b[g * GROUP * d_out..(g + 1) * GROUP * d_out];
        for o in (0..d_out).step_by(LANES) {
            let m = lanes(d_out, o);
            let b: [__m512; GROUP] = std::array::from_fn(|k| {
                // SAFETY: lanes o..d_out of row k of b.
                let v = unsafe { _mm512_maskz_loadu_ps(m, b.as_ptr().add(k * d_out + o)) };
                _mm512_mul_ps(scaling, v)
            });
            // The bias with the first group of ranks.
            let start = match bias.filter(|_| g == 0) {
                // SAFETY: lanes o..d_out of the bias (asserted above).
                Some(bias) => unsafe { _mm512_maskz_loadu_ps(m, bias.as_ptr().add(o)) },
                None => _mm512_setzero_ps(),
            };
            for i in 0..n {
                let l = &low[i * padded + g * GROUP..][..GROUP];
                let target = &mut out[i * out_rs + o..];
                assert!(target.len() >= m.count_ones() as usize);
                ask_ahead(target.as_ptr());
                // SAFETY: lanes o..d_out of row i of out (asserted).
                let mut acc =
                    _mm512_add_ps(start, unsafe { _mm512_maskz_loadu_ps(m, target.as_ptr()) });
                for k in 0..GROUP {
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(l[k]), b[k], acc);
                }
                // SAFETY: as above.
                unsafe { _mm512_mask_storeu_ps(target.as_mut_ptr(), m, acc) };
            }
        }
    }
}

/// [`super::backward`] over one block of rows, adding into the task's `dAᵀ` and `dB` partial
/// sums; `d_low` is scratch of `rows · padded` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_rows(
    factors: &Factors,
    (dropout, kept_bits): (BlockDropout, Option<&[u16]>),
    x: &[f32],
    low: &[f32],
    (dy, dy_rs): (&[f32], usize),
    mut dx: Option<&mut [f32]>,
    (d_a_transposed, d_b): (&mut [f32], &mut [f32]),
    (d_low, keep_buffer): (&mut Vec<f32>, &mut Vec<u8>),
) {
    let (d_in, padded, d_out, scaling) = factors.layout();
    let n = x.len() / d_in;
    assert!(n > 0 && low.len() >= n * padded && dy.len() >= (n - 1) * dy_rs + d_out);
    assert!(d_a_transposed.len() >= padded * d_in && d_b.len() >= padded * d_out);
    assert!(dx.as_ref().is_none_or(|dx| dx.len() >= n * d_in));
    // ∂L/∂low = s · dy Bᵀ.
    d_low.resize(n * padded, 0.0);
    low_products(
        dy, dy_rs, d_out, n, None, &factors.b, padded, scaling, d_low,
    );
    // The forward's bits where it kept them, else the bytes made again.
    let keep = match (dropout, kept_bits) {
        (Some((mask, _)), Some(bits)) => Some(Keep::from_bits(&mask, bits, n, d_in)),
        _ => block_keep(dropout, n, d_in, keep_buffer),
    };
    ask_first_chunks(x, n, d_in);
    if let Some(dx) = dx.as_deref() {
        ask_first_chunks(dx, n, d_in);
    }
    for g in 0..padded / GROUP {
        // ∂L/∂B_k += s · Σ_i low[i, k] · dy_i: the chunk's eight sums in registers.
        for o in (0..d_out).step_by(LANES) {
            let m = lanes(d_out, o);
            let mut acc = [_mm512_setzero_ps(); GROUP];
            for i in 0..n {
                ask_ahead(dy.as_ptr().wrapping_add(i * dy_rs + o));
                // SAFETY: lanes o..d_out of row i of dy (its length asserted above).
                let y = unsafe { _mm512_maskz_loadu_ps(m, dy.as_ptr().add(i * dy_rs + o)) };
                let l = &low[i * padded + g * GROUP..][..GROUP];
                for k in 0..GROUP {
                    acc[k] = _mm512_fmadd_ps(_mm512_set1_ps(l[k]), y, acc[k]);
                }
            }
            for (k, acc) in acc.iter().enumerate() {
                let p = &mut d_b[(g * GROUP + k) * d_out + o..][..m.count_ones() as usize];
                // SAFETY: lanes o..d_out of row g·8 + k of d_b (the slice just taken).
                unsafe {
                    let sum = _mm512_fmadd_ps(
                        _mm512_set1_ps(scaling),
                        *acc,
                        _mm512_maskz_loadu_ps(m, p.as_ptr()),
                    );
                    _mm512_mask_storeu_ps(p.as_mut_ptr(), m, sum);
                }
            }
        }
        // ∂L/∂Aᵀ_k += Σ_i d_low[i, k] · (m ⊙ x)_i and dx_i += m ⊙ Σ_k d_low[i, k] · Aᵀ_k, the
        // chunk's eight sums and eight rows of Aᵀ in registers.
        let a = &factors.a_transposed[g * GROUP * d_in..(g + 1) * GROUP * d_in];
        for o in (0..d_in).step_by(LANES) {
            let m = lanes(d_in, o);
            // SAFETY: lanes o..d_in of row k of a.
            let a: [__m512; GROUP] = std::array::from_fn(|k| unsafe {
                _mm512_maskz_loadu_ps(m, a.as_ptr().add(k * d_in + o))
            });
            let mut acc = [_mm512_setzero_ps(); GROUP];
            for i in 0..n {
                let at = i * d_in + o;
                ask_ahead(x.as_ptr().wrapping_add(at));
                if let Some(dx) = dx.as_deref() {
                    ask_ahead(dx.as_ptr().wrapping_add(at));
                }
                // SAFETY: lanes o..d_in of row i of x (x.len() ≥ n · d_in).
                let input = unsafe { _mm512_maskz_loadu_ps(m, x.as_ptr().add(at)) };
                let bits = keep.map(|keep| keep.bits(at, m));
                let input = match (bits, keep) {
                    (Some(bits), Some(keep)) => {
                        _mm512_maskz_mul_ps(bits, input, _mm512_set1_ps(keep.scale))
                    }
                    _ => input,
                };
                let coefficients = &d_low[i * padded + g * GROUP..][..GROUP];
                let c: [__m512; GROUP] = std::array::from_fn(|k| _mm512_set1_ps(coefficients[k]));
                for k in 0..GROUP {
                    acc[k] = _mm512_fmadd_ps(c[k], input, acc[k]);
                }
                let Some(dx) = dx.as_deref_mut() else {
                    continue;
                };
                let mut through = _mm512_mul_ps(c[0], a[0]);
                for k in 1..GROUP {
                    through = _mm512_fmadd_ps(c[k], a[k], through);
                }
                if let (Some(bits), Some(keep)) = (bits, keep) {
                    through = _mm512_maskz_mul_ps(bits, through, _mm512_set1_ps(keep.scale));
                }
                // SAFETY: lanes o..d_in of row i of dx (dx.len() ≥ n · d_in, asserted).
                unsafe {
                    let p = dx.as_mut_ptr().add(at);
                    let sum = _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), through);
                    _mm512_mask_storeu_ps(p, m, sum);
                }
            }
            for (k, acc) in acc.iter().enumerate() {
                let p =
                    &mut d_a_transposed[(g * GROUP + k) * d_in + o..][..m.count_ones() as usize];
                // SAFETY: lanes o..d_in of row g·8 + k of dAᵀ (the slice just taken).
                unsafe {
                    let sum = _mm512_add_ps(*acc, _mm512_maskz_loadu_ps(m, p.as_ptr()));
                    _mm512_mask_storeu_ps(p.as_mut_ptr(), m, sum);
                }
            }
        }
    }
}
