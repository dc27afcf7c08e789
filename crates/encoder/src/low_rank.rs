//! A LoRA adapter's training products with its input dropout fused in, for small ranks:
//! forward `out += s · (m ⊙ x) A B`, backward `dB`, `dA` and `dx += m ⊙ (s · dy Bᵀ) Aᵀ`.
//!
//! At small ranks these products are tall and thin (`[rows, d] × [d, r]`): `gemm` spends its
//! time packing the wide operand, and the dropout needs a masked copy of the input (and of its
//! gradient) per adapter. Here rows are taken four at a time, masked on the fly into a small
//! buffer, and every product is a 4 × 4 tile of dot products (or of `axpy`s), so each input
//! element is loaded once per four ranks and each factor element once per four rows. The
//! factors are padded to a multiple of eight ranks with zero rows ([`Factors`]), which
//! contribute nothing. Above [`ROW_KERNEL_MAX_RANK`] the
//! products are real matrix products and the caller uses `gemm`. On CPUs with AVX-512 the
//! [`avx512`] kernels run instead: eight ranks at a time in registers, each update's targets
//! held across a block of rows (these portable kernels stay for every other CPU).
//!
//! At rank 8 the adapters are ≈ 4 % of a LoRA step's multiply-adds but wait on memory, so what
//! is saved is passes over memory rather than arithmetic: in the backward, adapters that read
//! the same input (query, key, value) run block by block together, and an adapter whose input
//! is GELU's output that nothing else keeps ([`Input::BeforeGelu`]) makes GELU and its
//! derivative per block and finishes the chain rule there; in the forward,
//! the feed-forward block's two adapters and GELU run as one pass ([`forward_through_gelu`]).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::fastmath::{self, multiversion};
use crate::model::LazyKeep;

#[cfg(target_arch = "x86_64")]
mod avx512;

/// The largest rank these kernels are used for (≈ where `gemm` catches up on this CPU).
pub(crate) const ROW_KERNEL_MAX_RANK: usize = 32;

/// Blocks of rows whose `dA`, `dB` are summed together before the groups' sums are added (in
/// order): large enough to amortise a group's partial sums, small enough to share the rows
/// between the threads.
const GROUP_BLOCKS: usize = 2;

/// Rows per block of the backward (and per parallel task elsewhere).
const BLOCK: usize = 64;

/// Rows, and ranks, per tile.
const TILE: usize = 4;

/// Vector lanes the tiles accumulate in.
const LANES: usize = 16;

/// The factors' ranks are padded to a multiple of this: the AVX-512 kernels' group of ranks
/// held in registers (a multiple of [`TILE`]).
const PADDING: usize = 8;
#[cfg(target_arch = "x86_64")]
const _: () = assert!(PADDING.is_multiple_of(avx512::GROUP) && PADDING.is_multiple_of(TILE));

#[cfg(test)]
thread_local! {
    /// Set by the tests to run the portable kernels on a CPU that has AVX-512 (this thread's
    /// calls only).
    static PORTABLE_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the AVX-512 kernels run here.
fn wide() -> bool {
    #[cfg(test)]
    if PORTABLE_ONLY.with(std::cell::Cell::get) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    return avx512::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// An adapter's factors laid out for the kernels: `A` transposed (`[padded, d_in]`) and `B`
/// (`[padded, d_out]`), `padded` = the rank rounded up to a multiple of [`PADDING`] (zero rows),
/// and its scaling `s`.
pub(crate) struct Factors {
    a_transposed: Vec<f32>,
    b: Vec<f32>,
    scaling: f32,
    d_in: usize,
    rank: usize,
    padded: usize,
    d_out: usize,
}

impl Factors {
    /// From burn's layouts, `A [d_in, rank]` and `B [rank, d_out]`.
    pub(crate) fn new(
        a: &[f32],
        b: &[f32],
        scaling: f32,
        (d_in, rank, d_out): (usize, usize, usize),
    ) -> Self {
        let padded = rank.div_ceil(PADDING) * PADDING;
        let mut a_transposed = vec![0f32; padded * d_in];
        transpose(&a[..d_in * rank], rank, &mut a_transposed);
        let mut b_padded = vec![0f32; padded * d_out];
        b_padded[..rank * d_out].copy_from_slice(&b[..rank * d_out]);
        Self {
            a_transposed,
            b: b_padded,
            scaling,
            d_in,
            rank,
            padded,
            d_out,
        }
    }

    /// `(d_in, padded rank, d_out, scaling)`.
    fn layout(&self) -> (usize, usize, usize, f32) {
        (self.d_in, self.padded, self.d_out, self.scaling)
    }

    /// `Aᵀ`'s rows `TILE·g ..` (ranks of tile `g`).
    fn a_rows(&self, g: usize) -> [&[f32]; TILE] {
        let d = self.d_in;
        std::array::from_fn(|k| &self.a_transposed[(g * TILE + k) * d..(g * TILE + k + 1) * d])
    }

    /// `B`'s rows `TILE·g ..`.
    fn b_rows(&self, g: usize) -> [&[f32]; TILE] {
        let d = self.d_out;
        std::array::from_fn(|k| &self.b[(g * TILE + k) * d..(g * TILE + k + 1) * d])
    }
}

/// `dst[c · rows + r] = src[r · columns + c]` for the `rows × columns` matrix `src`.
pub(crate) fn transpose(src: &[f32], columns: usize, dst: &mut [f32]) {
    let rows = src.len() / columns;
    for (r, row) in src.chunks_exact(columns).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            dst[c * rows + r] = v;
        }
    }
}

/// The adapter's input dropout over `[rows, d_in]`, made block by block where it is used (the
/// same draws in the forward and the backward; the AVX-512 forward draws them as bits and
/// keeps those for the backward, see [`Saved`]).
pub(crate) type Dropout = Option<LazyKeep>;

/// The dropout of one block of rows: the mask and the index of the block's first element.
type BlockDropout = Option<(LazyKeep, usize)>;

/// What the forward leaves for [`backward`].
#[derive(Default)]
pub(crate) struct Saved {
    /// `(m ⊙ x) A`, `[rows, padded rank]`.
    low: Vec<f32>,
    /// The dropout mask as bits, one `u16` per 16 elements, where the AVX-512 kernels ran with
    /// dropout and `d_in` is a multiple of 16 (else the backward hashes the mask again).
    kept_bits: Option<Vec<u16>>,
}

impl Saved {
    /// Room for an adapter's forward over `rows` rows: `low`, and the mask's bits where the
    /// AVX-512 kernels keep them (dropout, `d_in` a multiple of 16: a block's 64 rows always
    /// fill whole `u16`s).
    fn new(factors: &Factors, dropout: Dropout, rows: usize, wide: bool) -> Self {
        let d_in = factors.d_in;
        Saved {
            low: vec![0f32; rows * factors.padded],
            kept_bits: (wide && dropout.is_some() && d_in.is_multiple_of(16))
                .then(|| vec![0u16; rows * d_in / 16]),
        }
    }
}

/// Kept mask bits' share of each block of rows (`None` each where there are none).
fn bit_blocks(bits: &mut Option<Vec<u16>>, d_in: usize, rows: usize) -> Vec<Option<&mut [u16]>> {
    match bits.as_mut() {
        Some(bits) => bits.chunks_mut(BLOCK * d_in / 16).map(Some).collect(),
        None => (0..rows.div_ceil(BLOCK)).map(|_| None).collect(),
    }
}

/// `out[i, ..d_out] += (bias +) s · (m ⊙ x)_i A B` for every row `i` of `x` (`[rows, d_in]`;
/// `out` starts at the adapter's first output column, row stride `out_rs`). The base layer's
/// bias comes here rather than into its product's starting value: one pass over `out` fewer.
pub(crate) fn forward(
    factors: &Factors,
    dropout: Dropout,
    x: &[f32],
    (out, out_rs): (&mut [f32], usize),
    bias: Option<&[f32]>,
) -> Saved {
    let Factors {
        d_in,
        padded,
        d_out,
        ..
    } = *factors;
    let rows = x.len() / d_in;
    assert!(rows == 0 || out.len() >= (rows - 1) * out_rs + d_out);
    assert!(bias.is_none_or(|bias| bias.len() == d_out));
    let wide = wide();
    let mut saved = Saved::new(factors, dropout, rows, wide);
    let bits = bit_blocks(&mut saved.kept_bits, d_in, rows);
    out.par_chunks_mut(BLOCK * out_rs)
        .zip(saved.low.par_chunks_mut(BLOCK * padded))
        .zip(bits)
        .enumerate()
        .for_each_init(
            ForwardScratch::default,
            |scratch, (block, ((out, low), bits))| {
                let first = block * BLOCK;
                let n = low.len() / padded;
                let dropout = rows_of(dropout, first, d_in);
                let x = &x[first * d_in..(first + n) * d_in];
                low_block(factors, dropout, x, low, bits, scratch, wide);
                update_block(factors, low, (out, out_rs), bias, wide);
            },
        );
    saved
}

/// The forward of two adapted projections with GELU between them (LoRA's intermediate and
/// output projections), block by block of rows while each block is in cache: the first
/// adapter's update of its output `pre` (`[rows, d_mid]`, its base product already there),
/// `gelu(pre)` into a new buffer, and the second adapter's low-rank rows of that. Apart, these
/// are three passes over `pre` and one over GELU's output. Returns what each adapter's
/// forward leaves and GELU's output; the second adapter's update goes onto its own base
/// product later ([`forward_update`]).
pub(crate) fn forward_through_gelu(
    (first, first_dropout, bias): (&Factors, Dropout, Option<&[f32]>),
    x: &[f32],
    pre: &mut [f32],
    (second, second_dropout): (&Factors, Dropout),
) -> (Saved, Vec<f32>, Saved) {
    let (d_in, d_mid) = (first.d_in, first.d_out);
    let rows = x.len() / d_in;
    assert!(second.d_in == d_mid && pre.len() >= rows * d_mid);
    assert!(bias.is_none_or(|bias| bias.len() == d_mid));
    let wide = wide();
    let mut first_saved = Saved::new(first, first_dropout, rows, wide);
    let mut second_saved = Saved::new(second, second_dropout, rows, wide);
    let first_bits = bit_blocks(&mut first_saved.kept_bits, d_in, rows);
    let second_bits = bit_blocks(&mut second_saved.kept_bits, d_mid, rows);
    let mut activated = Vec::with_capacity(rows * d_mid);
    pre[..rows * d_mid]
        .par_chunks_mut(BLOCK * d_mid)
        .zip(activated.spare_capacity_mut()[..rows * d_mid].par_chunks_mut(BLOCK * d_mid))
        .zip(first_saved.low.par_chunks_mut(BLOCK * first.padded))
        .zip(second_saved.low.par_chunks_mut(BLOCK * second.padded))
        .zip(first_bits)
        .zip(second_bits)
        .enumerate()
        .for_each_init(ForwardScratch::default, |scratch, (block, parts)| {
            let (((((pre, out), first_low), second_low), first_bits), second_bits) = parts;
            let start = block * BLOCK;
            let n = first_low.len() / first.padded;
            let x = &x[start * d_in..(start + n) * d_in];
            let dropout = rows_of(first_dropout, start, d_in);
            low_block(first, dropout, x, first_low, first_bits, scratch, wide);
            update_block(first, first_low, (pre, d_mid), bias, wide);
            assert_eq!(out.len(), pre.len());
            fastmath::gelu_into_slice(pre, out);
            // SAFETY: `gelu_into_slice` wrote every element of `out` (as long as `pre`).
            let activated = unsafe { &*(out as *const [MaybeUninit<f32>] as *const [f32]) };
            let dropout = rows_of(second_dropout, start, d_mid);
            low_block(
                second,
                dropout,
                activated,
                second_low,
                second_bits,
                scratch,
                wide,
            );
        });
    // SAFETY: the blocks above wrote GELU's output into all of the first `rows · d_mid` places.
    unsafe { activated.set_len(rows * d_mid) };
    (first_saved, activated, second_saved)
}

/// `out[i, ..d_out] += (bias +) s · low_i B` (row stride `out_rs`) for an adapter whose
/// low-rank rows were made before, by [`forward_through_gelu`].
pub(crate) fn forward_update(
    factors: &Factors,
    saved: &Saved,
    (out, out_rs): (&mut [f32], usize),
    bias: Option<&[f32]>,
) {
    let (padded, d_out) = (factors.padded, factors.d_out);
    let rows = saved.low.len() / padded;
    assert!(rows == 0 || out.len() >= (rows - 1) * out_rs + d_out);
    assert!(bias.is_none_or(|bias| bias.len() == d_out));
    let wide = wide();
    out.par_chunks_mut(BLOCK * out_rs)
        .zip(saved.low.par_chunks(BLOCK * padded))
        .for_each(|(out, low)| update_block(factors, low, (out, out_rs), bias, wide));
}

/// Scratch of a task running the forward's block kernels: masked rows (the portable kernel),
/// keep bytes (the AVX-512 one, where it does not keep bits).
#[derive(Default)]
struct ForwardScratch {
    masked: Vec<f32>,
    keep: Vec<u8>,
}

/// The forward's low-rank rows `(m ⊙ x) A` of one block of rows (`low.len() / padded` of
/// them), and its mask's bits where the backward reads them (`bits`).
fn low_block(
    factors: &Factors,
    dropout: BlockDropout,
    x: &[f32],
    low: &mut [f32],
    bits: Option<&mut [u16]>,
    scratch: &mut ForwardScratch,
    wide: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if wide {
        // SAFETY: `wide` says the CPU has the kernels' features.
        return unsafe {
            avx512::forward_low_rows(factors, dropout, x, low, (&mut scratch.keep, bits))
        };
    }
    let _ = (wide, bits);
    scratch.masked.resize(TILE * factors.d_in, 0.0);
    forward_low_rows(factors, dropout, x, low, &mut scratch.masked);
}

/// The forward's update of one block of output rows (row stride `out_rs`): `out_i += (bias +)
/// s · low_i B`.
fn update_block(
    factors: &Factors,
    low: &[f32],
    (out, out_rs): (&mut [f32], usize),
    bias: Option<&[f32]>,
    wide: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if wide {
        // SAFETY: `wide` says the CPU has the kernels' features.
        return unsafe { avx512::forward_update_rows(factors, low, (out, out_rs), bias) };
    }
    let _ = wide;
    if let Some(bias) = bias {
        let n = low.len() / factors.padded;
        for row in out.chunks_mut(out_rs).take(n) {
            fastmath::add(&mut row[..factors.d_out], bias);
        }
    }
    forward_update_rows(factors, low, out, out_rs);
}

/// The adapter's input as its backward is given it.
#[derive(Clone, Copy)]
pub(crate) enum Input<'a> {
    /// The input rows, `[rows, d_in]`.
    Rows(&'a [f32]),
    /// The rows before GELU: the input is `gelu(pre)` and the gradient of `pre`, not of the
    /// input, is wanted. Where nothing else reads GELU's output or its derivative (LoRA's
    /// frozen output projection), both are made here block by block, and the input gradient
    /// multiplied by the derivative while the block is in cache: no GELU-sized buffers, and
    /// two passes over the input gradient fewer.
    BeforeGelu(&'a [f32]),
}

/// One of the adapters whose gradients [`backward`] makes: its factors and dropout, what its
/// forward left, and its output's gradient (`[rows, d_out]` at row stride `dy_rs`).
pub(crate) struct Adapter<'a> {
    pub factors: &'a Factors,
    pub dropout: Dropout,
    pub saved: &'a Saved,
    pub dy: &'a [f32],
    pub dy_rs: usize,
}

/// The gradients `(dA [d_in, rank], dB [rank, d_out])` of adapters that read the same input
/// (a layer's query, key and value), adding the input's gradient of each to `dx`
/// (`[rows, d_in]`; `None`: nothing reads it, so it is not made; with [`Input::BeforeGelu`],
/// `dx` is then multiplied by GELU's derivative). Block by block of rows, every
/// adapter in turn: a block of the input and of `dx` is read from memory once for all of
/// them, the others find it in cache.
pub(crate) fn backward(
    adapters: &[Adapter<'_>],
    input: Input<'_>,
    dx: Option<&mut [f32]>,
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let x = match input {
        Input::Rows(x) | Input::BeforeGelu(x) => x,
    };
    let Some(d_in) = adapters.first().map(|adapter| adapter.factors.d_in) else {
        return Vec::new();
    };
    let rows = x.len() / d_in;
    for Adapter {
        factors,
        saved,
        dy,
        dy_rs,
        ..
    } in adapters
    {
        let (padded, d_out) = (factors.padded, factors.d_out);
        assert!(factors.d_in == d_in && saved.low.len() >= rows * padded);
        assert!(rows == 0 || dy.len() >= (rows - 1) * dy_rs + d_out);
    }
    assert!(dx.as_ref().is_none_or(|dx| dx.len() >= rows * d_in));
    // Each adapter's (dAᵀ, dB) partial sums, padded like its factors; scratch: rows for the
    // portable kernel, the AVX-512 one's `∂L/∂low` and keep bytes, and a block's GELU
    // and derivative.
    let zero_sums = || -> Vec<(Vec<f32>, Vec<f32>)> {
        adapters
            .iter()
            .map(|adapter| {
                let (d_in, padded, d_out, _) = adapter.factors.layout();
                (vec![0f32; padded * d_in], vec![0f32; padded * d_out])
            })
            .collect()
    };
    let new_scratch = || {
        (
            vec![0f32; 2 * TILE * d_in],
            Vec::new(),
            Vec::new(),
            (Vec::new(), Vec::new()),
        )
    };
    let wide = wide();
    let blocks: Vec<Option<&mut [f32]>> = match dx {
        Some(dx) => dx[..rows * d_in]
            .chunks_mut(BLOCK * d_in)
            .map(Some)
            .collect(),
        None => (0..rows.div_ceil(BLOCK)).map(|_| None).collect(),
    };
    // Each group of blocks sums into its own partial sums, and the groups' are added in order:
    // the same bits whichever thread runs a group and however many there are (a parallel
    // fold's accumulators follow the work stealing, so its sums changed from run to run).
    let groups: Vec<Vec<(Vec<f32>, Vec<f32>)>> = blocks
        .into_par_iter()
        .enumerate()
        .chunks(GROUP_BLOCKS)
        .map_init(new_scratch, |scratch, group| {
            let mut sums = zero_sums();
            for (block, mut dx) in group {
                let first = block * BLOCK;
                let n = BLOCK.min(rows - first);
                let x = &x[first * d_in..(first + n) * d_in];
                let (rows_scratch, d_low, keep, (activated, derivative)) = &mut *scratch;
                let x = match input {
                    Input::Rows(_) => x,
                    Input::BeforeGelu(_) => {
                        activated.resize(x.len(), 0.0);
                        derivative.resize(x.len(), 0.0);
                        fastmath::gelu_with_derivative_into(x, activated, derivative);
                        &activated[..]
                    }
                };
                for (adapter, (d_at, d_b)) in adapters.iter().zip(sums.iter_mut()) {
                    let factors = adapter.factors;
                    let padded = factors.padded;
                    let dropout = rows_of(adapter.dropout, first, d_in);
                    let low = &adapter.saved.low[first * padded..(first + n) * padded];
                    let dy = &adapter.dy[first * adapter.dy_rs..];
                    #[cfg(target_arch = "x86_64")]
                    if wide {
                        let bits = adapter.saved.kept_bits.as_deref();
                        let bits =
                            bits.map(|bits| &bits[first * d_in / 16..(first + n) * d_in / 16]);
                        // SAFETY: `wide` says the CPU has the kernels' features.
                        unsafe {
                            avx512::backward_rows(
                                factors,
                                (dropout, bits),
                                x,
                                low,
                                (dy, adapter.dy_rs),
                                dx.as_deref_mut(),
                                (d_at, d_b),
                                (d_low, keep),
                            )
                        };
                        continue;
                    }
                    let _ = (wide, &d_low, &keep);
                    backward_rows(
                        factors,
                        dropout,
                        x,
                        low,
                        dy,
                        adapter.dy_rs,
                        dx.as_deref_mut(),
                        (d_at, d_b),
                        rows_scratch,
                    );
                }
                // The block's input gradient times the derivative, once the adapters' parts are in.
                if let (Input::BeforeGelu(_), Some(dx)) = (input, dx) {
                    fastmath::multiply(&mut dx[..n * d_in], derivative);
                }
            }
            sums
        })
        .collect();
    let mut groups = groups.into_iter();
    let mut sums = groups.next().unwrap_or_else(zero_sums);
    for group in groups {
        for ((a1, b1), (a2, b2)) in sums.iter_mut().zip(group) {
            fastmath::add(a1, &a2);
            fastmath::add(b1, &b2);
        }
    }
    adapters
        .iter()
        .zip(sums)
        .map(|(adapter, (d_a_transposed, d_b_padded))| {
            let Factors {
                d_in, rank, d_out, ..
            } = *adapter.factors;
            let mut d_a = vec![0f32; d_in * rank];
            transpose(&d_a_transposed[..rank * d_in], d_in, &mut d_a);
            (d_a, d_b_padded[..rank * d_out].to_vec())
        })
        .collect()
}

/// The dropout of the block of rows starting at row `first`.
fn rows_of(dropout: Dropout, first: usize, d_in: usize) -> BlockDropout {
    dropout.map(|keep| (keep, first * d_in))
}

/// `result[i][k] = rows[i] · vectors[k]` (all of length `n`, the rows' length).
#[inline(always)]
fn dots(rows: [&[f32]; TILE], vectors: [&[f32]; TILE]) -> [[f32; TILE]; TILE] {
    // Not `rows.map(…)`: a closure is compiled without its caller's target features.
    [
        dot4(rows[0], vectors),
        dot4(rows[1], vectors),
        dot4(rows[2], vectors),
        dot4(rows[3], vectors),
    ]
}

/// `[x · v₀, x · v₁, x · v₂, x · v₃]`: one pass over `x`, four sets of [`LANES`] partial sums.
#[inline(always)]
fn dot4(x: &[f32], [v0, v1, v2, v3]: [&[f32]; TILE]) -> [f32; TILE] {
    let n = x.len();
    let (v0, v1, v2, v3) = (&v0[..n], &v1[..n], &v2[..n], &v3[..n]);
    let mut acc = [[0f32; LANES]; TILE];
    let body = n - n % LANES;
    for ((((x, a), b), c), d) in x[..body]
        .chunks_exact(LANES)
        .zip(v0.chunks_exact(LANES))
        .zip(v1.chunks_exact(LANES))
        .zip(v2.chunks_exact(LANES))
        .zip(v3.chunks_exact(LANES))
    {
        for l in 0..LANES {
            acc[0][l] = x[l].mul_add(a[l], acc[0][l]);
            acc[1][l] = x[l].mul_add(b[l], acc[1][l]);
            acc[2][l] = x[l].mul_add(c[l], acc[2][l]);
            acc[3][l] = x[l].mul_add(d[l], acc[3][l]);
        }
    }
    let mut result = acc.map(|lanes| lanes.iter().sum::<f32>());
    for o in body..n {
        result[0] += x[o] * v0[o];
        result[1] += x[o] * v1[o];
        result[2] += x[o] * v2[o];
        result[3] += x[o] * v3[o];
    }
    result
}

/// `targets[j] += Σᵢ coefficients[j][i] · sources[i]` over the targets' length.
#[inline(always)]
fn combine(
    targets: [&mut [f32]; TILE],
    coefficients: [[f32; TILE]; TILE],
    sources: [&[f32]; TILE],
) {
    for (target, [c0, c1, c2, c3]) in targets.into_iter().zip(coefficients) {
        let n = target.len();
        let [s0, s1, s2, s3] = sources.map(|s| &s[..n]);
        for ((((t, &a), &b), &c), &d) in target.iter_mut().zip(s0).zip(s1).zip(s2).zip(s3) {
            *t = c3.mul_add(d, c2.mul_add(c, c1.mul_add(b, c0.mul_add(a, *t))));
        }
    }
}

/// Splits `buffer` into [`TILE`] rows of `width`.
fn tile_rows(buffer: &mut [f32], width: usize) -> [&mut [f32]; TILE] {
    let (r0, rest) = buffer.split_at_mut(width);
    let (r1, rest) = rest.split_at_mut(width);
    let (r2, rest) = rest.split_at_mut(width);
    [r0, r1, r2, &mut rest[..width]]
}

/// Rows `i0 .. i0 + TILE` of `x` (`[n, d_in]`) with the dropout applied, into `masked`, and
/// their keep bytes into `keep` (when there is dropout); rows past `n` are zeros.
#[inline(always)]
fn masked_tile<'a>(
    x: &[f32],
    dropout: BlockDropout,
    i0: usize,
    d_in: usize,
    masked: &'a mut [f32],
    keep: &mut [u8],
) -> [&'a [f32]; TILE] {
    let n = x.len() / d_in;
    for (t, (row, keep)) in masked
        .chunks_exact_mut(d_in)
        .zip(keep.chunks_exact_mut(d_in))
        .take(TILE)
        .enumerate()
    {
        let i = i0 + t;
        if i >= n {
            row.fill(0.0);
            continue;
        }
        let source = &x[i * d_in..(i + 1) * d_in];
        match dropout {
            Some((mask, first)) => {
                mask.fill(first + i * d_in, keep);
                fastmath::mask_scale_copy(row, source, keep, mask.scale);
            }
            None => row.copy_from_slice(source),
        }
    }
    let [a, b, c, d] = tile_rows(masked, d_in);
    [a, b, c, d]
}

multiversion! {
    /// The forward's low-rank rows of one block (`low.len() / padded` rows of `x`).
    fn forward_low_rows(
        factors: &Factors,
        dropout: BlockDropout,
        x: &[f32],
        low: &mut [f32],
        masked: &mut [f32]
    ) {
        let Factors { d_in, padded, .. } = *factors;
        let n = low.len() / padded;
        let mut keep = vec![0u8; TILE * d_in];
        for i0 in (0..n).step_by(TILE) {
            let input = masked_tile(x, dropout, i0, d_in, masked, &mut keep);
            for g in 0..padded / TILE {
                let d = dots(input, factors.a_rows(g));
                for (i, d) in d.iter().enumerate().take(n - i0) {
                    low[(i0 + i) * padded + g * TILE..][..TILE].copy_from_slice(d);
                }
            }
        }
    }
}

multiversion! {
    /// The forward's update of one block, `out_i += s · low_i B`.
    fn forward_update_rows(factors: &Factors, low: &[f32], out: &mut [f32], out_rs: usize) {
        let Factors { padded, d_out, scaling, .. } = *factors;
        let n = low.len() / padded;
        let mut spare = vec![0f32; (TILE - 1) * d_out];
        for i0 in (0..n).step_by(TILE) {
            // Rows i0.. of out += s · low_i B, four ranks at a time (spare rows past n).
            let rows_here = (n - i0).min(TILE);
            let mut rows = out[i0 * out_rs..]
                .chunks_mut(out_rs)
                .take(rows_here)
                .map(|row| &mut row[..d_out])
                .chain(spare.chunks_exact_mut(d_out));
            let mut targets: [&mut [f32]; TILE] =
                std::array::from_fn(|_| rows.next().expect("TILE rows with the spare ones"));
            for g in 0..padded / TILE {
                let b = factors.b_rows(g);
                let coefficients: [[f32; TILE]; TILE] = std::array::from_fn(|t| {
                    std::array::from_fn(|k| {
                        let i = i0 + t;
                        if i < n { scaling * low[i * padded + g * TILE + k] } else { 0.0 }
                    })
                });
                combine(targets.each_mut().map(|t| &mut **t), coefficients, b);
            }
        }
    }
}

multiversion! {
    /// [`backward`] over one block of rows, adding into the task's `dAᵀ` and `dB` partial
    /// sums; `scratch` holds `2 · TILE · d_in` floats.
    #[allow(clippy::too_many_arguments)]
    fn backward_rows(
        factors: &Factors,
        dropout: BlockDropout,
        x: &[f32],
        low: &[f32],
        dy: &[f32],
        dy_rs: usize,
        dx: Option<&mut [f32]>,
        partial: (&mut [f32], &mut [f32]),
        scratch: &mut [f32]
    ) {
        let Factors { d_in, padded, d_out, scaling, .. } = *factors;
        let n = x.len() / d_in;
        let mut dx = dx;
        let (d_a_transposed, d_b) = partial;
        let (masked, d_input) = scratch.split_at_mut(TILE * d_in);
        let zeros = vec![0f32; d_out];
        let mut keep = vec![0u8; TILE * d_in];
        for i0 in (0..n).step_by(TILE) {
            let rows_here = (n - i0).min(TILE);
            let dy_rows: [&[f32]; TILE] = std::array::from_fn(|t| {
                let i = i0 + t;
                if i < n { &dy[i * dy_rs..i * dy_rs + d_out] } else { &zeros[..] }
            });
            let low_at = |t: usize, k: usize| {
                let i = i0 + t;
                if i < n { low[i * padded + k] } else { 0.0 }
            };
            // ∂L/∂low = s · dy Bᵀ, a TILE × padded block.
            let mut d_low = [[0f32; TILE]; ROW_KERNEL_MAX_RANK];
            for g in 0..padded / TILE {
                let d = dots(dy_rows, factors.b_rows(g));
                for (k, column) in d_low[g * TILE..(g + 1) * TILE].iter_mut().enumerate() {
                    for t in 0..TILE {
                        column[t] = scaling * d[t][k];
                    }
                }
                // ∂L/∂B[k] += Σ_t s · low[t][k] · dy[t]
                let targets = tile_rows(&mut d_b[g * TILE * d_out..(g + 1) * TILE * d_out], d_out);
                let coefficients: [[f32; TILE]; TILE] =
                    std::array::from_fn(|k| std::array::from_fn(|t| scaling * low_at(t, g * TILE + k)));
                combine(targets, coefficients, dy_rows);
            }
            // ∂L/∂Aᵀ[k] += Σ_t ∂L/∂low[t][k] · (m ⊙ x)[t]; ∂L/∂x̃[t] = Σ_k ∂L/∂low[t][k] · Aᵀ[k].
            let input = masked_tile(x, dropout, i0, d_in, masked, &mut keep);
            if dx.is_some() {
                d_input.fill(0.0);
            }
            for g in 0..padded / TILE {
                let targets =
                    tile_rows(&mut d_a_transposed[g * TILE * d_in..(g + 1) * TILE * d_in], d_in);
                let coefficients: [[f32; TILE]; TILE] = std::array::from_fn(|k| d_low[g * TILE + k]);
                combine(targets, coefficients, input);
                if dx.is_some() {
                    let coefficients: [[f32; TILE]; TILE] =
                        std::array::from_fn(|t| std::array::from_fn(|k| d_low[g * TILE + k][t]));
                    combine(tile_rows(d_input, d_in), coefficients, factors.a_rows(g));
                }
            }
            let Some(dx) = dx.as_deref_mut() else {
                continue;
            };
            for t in 0..rows_here {
                let i = i0 + t;
                let dx = &mut dx[i * d_in..(i + 1) * d_in];
                let g = &d_input[t * d_in..(t + 1) * d_in];
                match dropout {
                    None => fastmath::add(dx, g),
                    Some((mask, _)) => {
                        fastmath::mask_scale_add(dx, g, &keep[t * d_in..(t + 1) * d_in], mask.scale)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`backward`] of one adapter.
    fn backward_one(
        factors: &Factors,
        dropout: Dropout,
        input: Input<'_>,
        saved: &Saved,
        dy: &[f32],
        dy_rs: usize,
        dx: Option<&mut [f32]>,
    ) -> (Vec<f32>, Vec<f32>) {
        let adapter = Adapter {
            factors,
            dropout,
            saved,
            dy,
            dy_rs,
        };
        let mut gradients = backward(&[adapter], input, dx);
        assert_eq!(gradients.len(), 1);
        gradients.remove(0)
    }

    /// A reproducible value in [-1, 1).
    fn value(i: usize) -> f32 {
        (crate::fastmath::splitmix64(i as u64) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// The factors' gradients are the same bits on one thread as on three, run after run: a
    /// training run gives the same numbers each time, and after `--resume`.
    #[test]
    fn backward_sums_do_not_depend_on_the_threads() {
        let (rows, d_in, rank, d_out) = (1000, 48, 8, 40);
        let x: Vec<f32> = (0..rows * d_in).map(value).collect();
        let a: Vec<f32> = (0..d_in * rank).map(|i| value(i + 10_000)).collect();
        let b: Vec<f32> = (0..rank * d_out).map(|i| value(i + 20_000)).collect();
        let dy: Vec<f32> = (0..rows * d_out).map(|i| value(i + 30_000)).collect();
        let factors = Factors::new(&a, &b, 0.5, (d_in, rank, d_out));
        let dropout = Some(LazyKeep::new(5, 123, 0.2));
        let mut out = vec![0f32; rows * d_out];
        let saved = forward(&factors, dropout, &x, (&mut out, d_out), None);
        // `wide` is read on the calling thread: a pool's here, both times.
        let on = |threads: usize| {
            crate::fastmath::on_threads(threads, || {
                let mut dx = vec![0f32; rows * d_in];
                let sums = backward_one(
                    &factors,
                    dropout,
                    Input::Rows(&x),
                    &saved,
                    &dy,
                    d_out,
                    Some(&mut dx),
                );
                (sums, dx)
            })
        };
        let once = on(1);
        for _ in 0..3 {
            assert!(on(3) == once, "three threads gave other sums than one");
        }
    }

    /// Forward and backward against the definitions in f64 over shapes that leave partial
    /// tiles and blocks everywhere: rows not a multiple of 4 or of a block, a rank not a
    /// multiple of 4, lengths not a multiple of 16, strided outputs and gradients.
    #[test]
    fn row_kernels_equal_the_definitions() {
        for portable in [false, true] {
            // Both kernels where the CPU has AVX-512 (elsewhere the portable one twice).
            PORTABLE_ONLY.with(|only| only.set(portable));
            row_kernels_equal_the_definitions_here();
        }
    }

    fn row_kernels_equal_the_definitions_here() {
        for (rows, d_in, rank, d_out, with_dropout) in [
            (70, 37, 5, 21, true),
            (131, 40, 8, 48, false),
            (3, 17, 1, 5, true),
            (64, 16, 32, 33, true),
            // d_in a multiple of 16: the AVX-512 forward keeps the mask as bits.
            (150, 48, 8, 21, true),
            // Whole vectors both ways with dropout, two groups of ranks, a last block of 5 rows.
            (69, 32, 16, 16, true),
        ] {
            let (out_rs, col0, dy_rs) = (d_out + 7, 3, d_out + 2);
            let x: Vec<f32> = (0..rows * d_in).map(value).collect();
            let a: Vec<f32> = (0..d_in * rank).map(|i| value(i + 10_000)).collect();
            let b: Vec<f32> = (0..rank * d_out).map(|i| value(i + 20_000)).collect();
            let dy: Vec<f32> = (0..rows * dy_rs).map(|i| value(i + 30_000)).collect();
            // The whole mask at once; the kernels make it row by row (odd starts when d_in is).
            let lazy = LazyKeep::new(5, 123, 0.2);
            let mut keep = vec![0u8; rows * d_in];
            lazy.fill(0, &mut keep);
            let (scale, scaling) = (lazy.scale, 0.75f32);
            let dropout = with_dropout.then_some(lazy);
            let masked = |i: usize, j: usize| -> f64 {
                let m = if with_dropout {
                    f64::from(keep[i * d_in + j]) * f64::from(scale)
                } else {
                    1.0
                };
                f64::from(x[i * d_in + j]) * m
            };
            let mask_of = |i: usize, j: usize| -> f64 {
                if with_dropout {
                    f64::from(keep[i * d_in + j]) * f64::from(scale)
                } else {
                    1.0
                }
            };
            // Definitions.
            let low: Vec<f64> = (0..rows * rank)
                .map(|ik| {
                    let (i, k) = (ik / rank, ik % rank);
                    (0..d_in)
                        .map(|j| masked(i, j) * f64::from(a[j * rank + k]))
                        .sum()
                })
                .collect();
            let d_low: Vec<f64> = (0..rows * rank)
                .map(|ik| {
                    let (i, k) = (ik / rank, ik % rank);
                    f64::from(scaling)
                        * (0..d_out)
                            .map(|o| f64::from(dy[i * dy_rs + o]) * f64::from(b[k * d_out + o]))
                            .sum::<f64>()
                })
                .collect();

            let factors = Factors::new(&a, &b, scaling, (d_in, rank, d_out));
            let start: Vec<f32> = (0..rows * out_rs).map(|i| value(i + 50_000)).collect();
            let mut out = start.clone();
            let bias: Vec<f32> = (0..d_out).map(|i| value(i + 40_000)).collect();
            let bias = with_dropout.then_some(&bias[..]);
            let saved = forward(&factors, dropout, &x, (&mut out[col0..], out_rs), bias);
            let saved_x = forward(
                &factors,
                dropout,
                &x,
                (&mut start.clone()[col0..], out_rs),
                bias,
            );
            let close = |got: f32, want: f64, what: &str| {
                assert!(
                    (f64::from(got) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{what}: {got} vs {want}"
                );
            };
            for i in 0..rows {
                for c in 0..out_rs {
                    let want = if c >= col0 && c < col0 + d_out {
                        let o = c - col0;
                        f64::from(start[i * out_rs + c])
                            + bias.map_or(0.0, |bias| f64::from(bias[o]))
                            + f64::from(scaling)
                                * (0..rank)
                                    .map(|k| low[i * rank + k] * f64::from(b[k * d_out + o]))
                                    .sum::<f64>()
                    } else {
                        f64::from(start[i * out_rs + c])
                    };
                    close(out[i * out_rs + c], want, "out");
                }
            }

            let dx_start: Vec<f32> = (0..rows * d_in).map(|i| value(i + 60_000)).collect();
            let mut dx = dx_start.clone();
            let (d_a, d_b) = backward_one(
                &factors,
                dropout,
                Input::Rows(&x),
                &saved,
                &dy,
                dy_rs,
                Some(&mut dx),
            );
            for j in 0..d_in {
                for k in 0..rank {
                    let want: f64 = (0..rows).map(|i| masked(i, j) * d_low[i * rank + k]).sum();
                    close(d_a[j * rank + k], want, "dA");
                }
            }
            for k in 0..rank {
                for o in 0..d_out {
                    let want: f64 = f64::from(scaling)
                        * (0..rows)
                            .map(|i| low[i * rank + k] * f64::from(dy[i * dy_rs + o]))
                            .sum::<f64>();
                    close(d_b[k * d_out + o], want, "dB");
                }
            }
            // Without an input gradient to make, the factors' gradients are the same, bit for
            // bit: the groups' partial sums are added in one order.
            let (no_dx_a, no_dx_b) =
                backward_one(&factors, dropout, Input::Rows(&x), &saved, &dy, dy_rs, None);
            assert_eq!((&no_dx_a, &no_dx_b), (&d_a, &d_b));
            for i in 0..rows {
                for j in 0..d_in {
                    let through: f64 = (0..rank)
                        .map(|k| d_low[i * rank + k] * f64::from(a[j * rank + k]))
                        .sum();
                    let want = f64::from(dx_start[i * d_in + j]) + mask_of(i, j) * through;
                    close(dx[i * d_in + j], want, "dx");
                }
            }

            // Two adapters with GELU between them in one pass: the same first output, GELU
            // output, second output and saved rows as apart (this adapter second, reading
            // GELU of the first's output; the first: other factors, mask and a bias).
            let a0: Vec<f32> = (0..d_in * rank).map(|i| value(i + 70_000)).collect();
            let b0: Vec<f32> = (0..rank * d_in).map(|i| value(i + 80_000)).collect();
            let first = Factors::new(&a0, &b0, 0.5, (d_in, rank, d_in));
            let first_dropout = with_dropout.then(|| LazyKeep::new(3, 11, 0.1));
            let first_bias: Vec<f32> = (0..d_in).map(|i| value(i + 90_000)).collect();
            let inputs: Vec<f32> = x.iter().map(|v| 0.3 - v).collect();
            let mut pre_apart = x.clone();
            let first_apart = forward(
                &first,
                first_dropout,
                &inputs,
                (&mut pre_apart, d_in),
                Some(&first_bias),
            );
            let gelu_apart = fastmath::gelu_of(&pre_apart);
            let mut out_apart = start.clone();
            let second_apart = forward(
                &factors,
                dropout,
                &gelu_apart,
                (&mut out_apart[col0..], out_rs),
                bias,
            );
            let mut pre_fused = x.clone();
            let (first_fused, gelu_fused, second_fused) = forward_through_gelu(
                (&first, first_dropout, Some(&first_bias)),
                &inputs,
                &mut pre_fused,
                (&factors, dropout),
            );
            let mut out_fused = start.clone();
            forward_update(
                &factors,
                &second_fused,
                (&mut out_fused[col0..], out_rs),
                bias,
            );
            assert_eq!(pre_fused, pre_apart, "the first output");
            assert_eq!(gelu_fused, gelu_apart, "GELU of it");
            assert_eq!(out_fused, out_apart, "the second output");
            for (fused, apart) in [(&first_fused, &first_apart), (&second_fused, &second_apart)] {
                assert_eq!(fused.low, apart.low);
                assert_eq!(fused.kept_bits, apart.kept_bits);
            }

            // The input given before an activation: the same gradients as with the
            // activation's output given, and the input gradient times the derivative.
            let mut activated = x.clone();
            let mut derivative = vec![0f32; x.len()];
            fastmath::gelu_with_derivative_slice(&mut activated, &mut derivative);
            let mut out = start.clone();
            let saved = forward(
                &factors,
                dropout,
                &activated,
                (&mut out[col0..], out_rs),
                bias,
            );
            let mut dx_rows = dx_start.clone();
            let (rows_a, rows_b) = backward_one(
                &factors,
                dropout,
                Input::Rows(&activated),
                &saved,
                &dy,
                dy_rs,
                Some(&mut dx_rows),
            );
            let mut dx_pre = dx_start.clone();
            let gelu = Input::BeforeGelu(&x);
            let (pre_a, pre_b) = backward_one(
                &factors,
                dropout,
                gelu,
                &saved,
                &dy,
                dy_rs,
                Some(&mut dx_pre),
            );
            for (got, want) in pre_a.iter().zip(&rows_a).chain(pre_b.iter().zip(&rows_b)) {
                close(*got, f64::from(*want), "factors through the activation");
            }
            for ((got, through), derivative) in dx_pre.iter().zip(&dx_rows).zip(&derivative) {
                assert_eq!(
                    *got,
                    through * derivative,
                    "input gradient through the activation"
                );
            }
            let (alone_a, _) = backward_one(&factors, dropout, gelu, &saved, &dy, dy_rs, None);
            for (got, want) in alone_a.iter().zip(&rows_a) {
                close(*got, f64::from(*want), "through the activation without dx");
            }

            // Two adapters on the same input (other factors, mask and output gradient for
            // the second) at once: each one's gradients as alone, the input gradient the same
            // sum in the same order.
            let a2: Vec<f32> = a.iter().map(|v| 0.5 - v).collect();
            let b2: Vec<f32> = b.iter().map(|v| v * 1.5).collect();
            let factors2 = Factors::new(&a2, &b2, 2.0, (d_in, rank, d_out));
            let dropout2 = with_dropout.then(|| LazyKeep::new(9, 77, 0.3));
            let dy2: Vec<f32> = dy.iter().map(|v| v - 0.25).collect();
            let mut out = start.clone();
            let saved2 = forward(&factors2, dropout2, &x, (&mut out[col0..], out_rs), None);
            let mut dx_apart = dx_start.clone();
            let apart = [
                backward_one(
                    &factors,
                    dropout,
                    Input::Rows(&x),
                    &saved_x,
                    &dy,
                    dy_rs,
                    Some(&mut dx_apart),
                ),
                backward_one(
                    &factors2,
                    dropout2,
                    Input::Rows(&x),
                    &saved2,
                    &dy2,
                    dy_rs,
                    Some(&mut dx_apart),
                ),
            ];
            let mut dx_joint = dx_start.clone();
            let adapters = [
                Adapter {
                    factors: &factors,
                    dropout,
                    saved: &saved_x,
                    dy: &dy,
                    dy_rs,
                },
                Adapter {
                    factors: &factors2,
                    dropout: dropout2,
                    saved: &saved2,
                    dy: &dy2,
                    dy_rs,
                },
            ];
            let joint = backward(&adapters, Input::Rows(&x), Some(&mut dx_joint));
            assert_eq!(joint.len(), 2);
            for ((joint_a, joint_b), (apart_a, apart_b)) in joint.iter().zip(&apart) {
                for (got, want) in joint_a
                    .iter()
                    .zip(apart_a)
                    .chain(joint_b.iter().zip(apart_b))
                {
                    close(*got, f64::from(*want), "two adapters at once");
                }
            }
            assert_eq!(dx_joint, dx_apart, "two adapters' input gradient");
            assert_ne!(dx_joint, dx_start);
        }
    }
}
