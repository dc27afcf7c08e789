//! Element-wise math the CPU paths run over whole buffers: `exp`, the activations and their
//! derivatives, written branch-free so the compiler vectorises them (AVX-512 or AVX2 chosen at
//! run time), where `libm`'s scalar `expf`/`erff` ran one value at a time (`erff` was 12 % of a
//! MiniLM inference batch's CPU time, `expf` 7 %: BENCHMARKS.md).
//!
//! Accuracy (tested against f64): `exp` within 3 ulp; `erf` within 5·10⁻⁷ (a rational fit of
//! our own, `scripts/fit-erf.py`), so `gelu` is within 2.5·10⁻⁷·(|x| + |gelu(x)|) of
//! `½·x·(1 + erf(x/√2))`, PyTorch's and Hugging Face's definition, computed by the same
//! formula as theirs.

use rayon::prelude::*;

const LOG2_E: f32 = core::f32::consts::LOG2_E;
/// ln 2 in two parts: `LN2_HI` has few significant bits, so `n · LN2_HI` is exact for |n| < 2⁸.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Adding and subtracting 1.5·2²³ rounds an f32 of magnitude < 2²² to the nearest integer.
const ROUND: f32 = 12_582_912.0;
const ROUND_BITS: u32 = 0x4b40_0000;

/// `c[0] + x·(c[1] + x·(…))` by fused multiply-adds: half the instructions and half the
/// latency of a multiply then an add (one FMA each, on the CPUs `multiversion!` picks), and
/// one rounding per step instead of two.
#[inline(always)]
fn horner<const N: usize>(x: f32, c: &[f32; N]) -> f32 {
    let mut acc = c[N - 1];
    for k in (0..N - 1).rev() {
        acc = acc.mul_add(x, c[k]);
    }
    acc
}

/// `eˣ` for f32: `2ⁿ · eʳ` with `n = round(x / ln 2)`, `|r| ≤ ln 2 / 2`, `eʳ` by its degree-7
/// Taylor polynomial (truncation < 6·10⁻⁹). Below −87 it returns exactly 0 (`eˣ` is then within
/// a factor 1.4 of the smallest normal f32); above 88 it saturates at e⁸⁸ (never reached by its
/// callers); NaN stays NaN. The input is clamped to −87 *before* the arithmetic so no
/// intermediate is subnormal: a masked attention score (−∞) used to cost a microcode assist
/// per element (15 % of `cli embed`'s time in `perf`, all in padded rows).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let clamped = if x > 88.0 { 88.0 } else { x };
    let clamped = if clamped < -87.0 { -87.0 } else { clamped };
    // `shifted`'s low mantissa bits hold n (two's complement, offset by ROUND's bits): read
    // them as an integer rather than by a (saturating, non-vectorising) float → int cast.
    let shifted = clamped * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let p = horner(
        (clamped - n * LN2_HI) - n * LN2_LO,
        &[
            1.0,
            1.0,
            0.5,
            1.0 / 6.0,
            1.0 / 24.0,
            1.0 / 120.0,
            1.0 / 720.0,
            1.0 / 5040.0,
        ],
    );
    let scale = f32::from_bits(shifted.to_bits().wrapping_sub(ROUND_BITS - 127) << 23);
    let y = p * scale;
    if x < -87.0 {
        0.0
    } else {
        y
    }
}

/// `erf(z)` for f32: `z·P(z²)/Q(z²)`, a degree-5 rational fitted to erf on [0, 4]
/// (`scripts/fit-erf.py`: |error| < 2.2·10⁻⁸ in exact arithmetic, < 5·10⁻⁷ evaluated in f32),
/// `z` clamped to ±4, where erf is ±1 to within 1.6·10⁻⁸. No exponential and one division:
/// half the instructions of an `erfc`-through-`exp` form (GELU ran 2.2× as fast; BENCHMARKS.md,
/// "Twenty-fourth session").
#[inline(always)]
fn erf(z: f32) -> f32 {
    let z = z.clamp(-4.0, 4.0);
    let s = z * z;
    let p = horner(
        s,
        &[
            // The fit's own 1.128379 (2/√π, erf's slope at 0, to within an ulp).
            core::f32::consts::FRAC_2_SQRT_PI,
            0.196_238_67,
            0.053_465_85,
            0.004_003_110_3,
            2.880_137_2e-4,
            1.974_719_2e-6,
        ],
    );
    let q = horner(
        s,
        &[
            1.0,
            0.507_243_16,
            0.116_471_92,
            0.015_443_391,
            0.001_216_199,
            3.747_823e-5,
        ],
    );
    z * p / q
}

/// `gelu(x) = ½·x·(1 + erf(x/√2))`, PyTorch's and Hugging Face's exact GELU by their own formula
/// (so, like theirs, only absolutely accurate in the negative tail, where `1 + erf` cancels).
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * core::f32::consts::FRAC_1_SQRT_2))
}

/// `gelu(x)` and `gelu'(x) = Φ(x) + x·φ(x)`.
#[inline(always)]
fn gelu_and_derivative(x: f32) -> (f32, f32) {
    let inv_sqrt_2pi: f32 = 0.398_942_3;
    let cdf = 0.5 * (1.0 + erf(x * core::f32::consts::FRAC_1_SQRT_2));
    (x * cdf, cdf + x * inv_sqrt_2pi * exp(-0.5 * x * x))
}

/// The tanh approximation of GELU (`gelu_new` / `gelu_pytorch_tanh`).
#[inline(always)]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    let u = 0.797_884_6 * (x + 0.044_715 * x * x * x);
    // tanh(u) = 1 − 2/(e^{2u} + 1): saturates cleanly at ±1.
    let tanh = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
    0.5 * x * (1.0 + tanh)
}

#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[inline(always)]
pub(crate) fn relu(x: f32) -> f32 {
    if x > 0.0 {
        x
    } else {
        0.0
    }
}

/// Compiles `$body` (a loop over slices, generic over nothing) once per instruction set and
/// picks the widest the CPU has at run time.
macro_rules! multiversion {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                fn avx512($($arg: $ty),*) { generic($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) { generic($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                {
                    // SAFETY: the features were just detected.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the features were just detected.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}
pub(crate) use multiversion;

multiversion! {
    /// `values[i] = gelu(values[i])` (one thread; see [`map_parallel`]).
    fn gelu_slice(values: &mut [f32]) {
        for v in values {
            *v = gelu(*v);
        }
    }
}

multiversion! {
    /// `values[i] = gelu(values[i] + bias[i])` (same lengths): the bias a product left out added
    /// in the same pass (the same sums as adding it first, one load and store fewer an element).
    fn gelu_biased_slice(values: &mut [f32], bias: &[f32]) {
        assert_eq!(values.len(), bias.len());
        for (v, b) in values.iter_mut().zip(bias) {
            *v = gelu(*v + *b);
        }
    }
}

multiversion! {
    fn gelu_tanh_slice(values: &mut [f32]) {
        for v in values {
            *v = gelu_tanh(*v);
        }
    }
}

multiversion! {
    fn silu_slice(values: &mut [f32]) {
        for v in values {
            *v = silu(*v);
        }
    }
}

multiversion! {
    fn relu_slice(values: &mut [f32]) {
        for v in values {
            *v = relu(*v);
        }
    }
}

multiversion! {
    /// `values[i] = gelu(values[i])`, `derivative[i] = gelu'(values[i])` (same length).
    fn gelu_with_derivative_slice(values: &mut [f32], derivative: &mut [f32]) {
        for (v, d) in values.iter_mut().zip(derivative.iter_mut()) {
            let (y, dy) = gelu_and_derivative(*v);
            *v = y;
            *d = dy;
        }
    }
}

multiversion! {
    /// `values[i] = gelu(source[i])`, `derivative[i] = gelu'(source[i])` (same lengths): as
    /// [`gelu_with_derivative_slice`] from a source left as it is (no copy of it first).
    fn gelu_with_derivative_into(source: &[f32], values: &mut [f32], derivative: &mut [f32]) {
        assert!(values.len() == source.len() && derivative.len() == source.len());
        for ((v, d), x) in values.iter_mut().zip(derivative.iter_mut()).zip(source) {
            let (y, dy) = gelu_and_derivative(*x);
            *v = y;
            *d = dy;
        }
    }
}

/// Lanes of the partial maxima and sums: independent accumulators the compiler keeps in one
/// vector register (a single running sum would have to be added in order, one at a time).
const LANES: usize = 16;

#[inline(always)]
fn max_of(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    let rest = chunks.remainder().iter();
    lanes
        .into_iter()
        .chain(rest.copied())
        .fold(f32::NEG_INFINITY, f32::max)
}

/// `row[i] = exp(row[i] − max)`, returning the sum.
#[inline(always)]
fn exp_shifted_sum(row: &mut [f32], max: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (s, v) in lanes.iter_mut().zip(chunk) {
            *v = exp(*v - max);
            *s += *v;
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        sum += *v;
    }
    sum
}

/// A softmax over `row` in place.
#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let max = max_of(row);
    let inv = 1.0 / exp_shifted_sum(row, max);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

multiversion! {
    /// A softmax over each row (`keep.len()` entries) of `rows` in place, ignoring (and
    /// zeroing) the entries where `keep` is false; some entry is kept.
    fn softmax_masked(rows: &mut [f32], keep: &[bool]) {
        for row in rows.chunks_exact_mut(keep.len()) {
            for (v, &k) in row.iter_mut().zip(keep) {
                *v = if k { *v } else { f32::NEG_INFINITY };
            }
            softmax_row(row);
        }
    }
}

multiversion! {
    /// A softmax over each row (`row_len` entries) of `rows` in place (one dispatch for all
    /// of them: the rows of an attention head are short).
    fn softmax(rows: &mut [f32], row_len: usize) {
        for row in rows.chunks_exact_mut(row_len) {
            softmax_row(row);
        }
    }
}

multiversion! {
    /// `x[i] *= scale` where `keep[i]` is 1, `x[i] *= 0` elsewhere (a dropout mask).
    fn mask_scale(x: &mut [f32], keep: &[u8], scale: f32) {
        for (v, &k) in x.iter_mut().zip(keep) {
            *v *= if k != 0 { scale } else { 0.0 };
        }
    }
}

multiversion! {
    /// `dst[i] = src[i] · (scale where keep[i] is 1, else 0)`: [`mask_scale`] on a copy, in
    /// one pass.
    fn mask_scale_copy(dst: &mut [f32], src: &[f32], keep: &[u8], scale: f32) {
        for ((d, s), &k) in dst.iter_mut().zip(src).zip(keep) {
            *d = s * if k != 0 { scale } else { 0.0 };
        }
    }
}

multiversion! {
    /// `dst[i] += src[i] · (scale where keep[i] is 1, else 0)`.
    fn mask_scale_add(dst: &mut [f32], src: &[f32], keep: &[u8], scale: f32) {
        for ((d, s), &k) in dst.iter_mut().zip(src).zip(keep) {
            *d += s * if k != 0 { scale } else { 0.0 };
        }
    }
}

multiversion! {
    /// `dst[i] = src[i] · gamma[i] + beta[i]` (a LayerNorm's output from its normalised row,
    /// bit for bit as [`add_and_normalize`] wrote it).
    fn scale_shift(dst: &mut [f32], src: &[f32], gamma: &[f32], beta: &[f32]) {
        for (((v, h), g), b) in dst.iter_mut().zip(src).zip(gamma).zip(beta) {
            *v = *h * g + b;
        }
    }
}

multiversion! {
    /// `dst[i] *= src[i]`.
    fn multiply(dst: &mut [f32], src: &[f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d *= s;
        }
    }
}

multiversion! {
    /// `dst[i] += src[i]`.
    fn add(dst: &mut [f32], src: &[f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    }
}

multiversion! {
    /// Softmax's backward over each row (`row_len` entries): `d ← p ⊙ (d − Σ d ⊙ p)`.
    fn softmax_backward(d: &mut [f32], p: &[f32], row_len: usize) {
        for (d, p) in d.chunks_exact_mut(row_len).zip(p.chunks_exact(row_len)) {
            let dot = lane_sum(d, p, |d, p| d * p);
            for (d, p) in d.iter_mut().zip(p) {
                *d = p * (*d - dot);
            }
        }
    }
}

/// `Σ f(a_i, b_i, c_i)` over three equally long slices, as [`lane_sum`].
#[inline(always)]
fn lane_sum3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = a
        .chunks_exact(LANES)
        .zip(b.chunks_exact(LANES).zip(c.chunks_exact(LANES)));
    for (a, (b, c)) in &mut chunks {
        for (((l, &a), &b), &c) in lanes.iter_mut().zip(a).zip(b).zip(c) {
            *l += f(a, b, c);
        }
    }
    let tail = a.len() - a.len() % LANES;
    let rest: f32 = (tail..a.len()).map(|i| f(a[i], b[i], c[i])).sum();
    lanes.iter().sum::<f32>() + rest
}

/// `Σ f(a_i, b_i)` over two equally long slices, in `LANES` interleaved partial sums (a
/// single running sum would be added in order, one value at a time).
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = a.chunks_exact(LANES).zip(b.chunks_exact(LANES));
    for (a, b) in &mut chunks {
        for ((l, &a), &b) in lanes.iter_mut().zip(a).zip(b) {
            *l += f(a, b);
        }
    }
    let tail = a.len() - a.len() % LANES;
    let rest: f32 = a[tail..]
        .iter()
        .zip(&b[tail..])
        .map(|(&a, &b)| f(a, b))
        .sum();
    lanes.iter().sum::<f32>() + rest
}

multiversion! {
    /// One row of `LayerNorm(row + residual)` in place (`γ`, `β` of the row's length), writing
    /// the normalised values to `normalized` when it has the row's length (for the backward)
    /// and `1/σ` to `inv_std`.
    fn add_and_normalize(
        row: &mut [f32],
        residual: &[f32],
        gamma: &[f32],
        beta: &[f32],
        epsilon: f32,
        normalized: &mut [f32],
        inv_std: &mut f32
    ) {
        let d = row.len();
        for (v, r) in row.iter_mut().zip(residual) {
            *v += r;
        }
        let mean = lane_sum(row, row, |v, _| v) / d as f32;
        let var = lane_sum(row, row, |v, _| (v - mean) * (v - mean)) / d as f32;
        let inv = 1.0 / (var + epsilon).sqrt();
        *inv_std = inv;
        if normalized.len() == d {
            for (((v, h), g), b) in row.iter_mut().zip(normalized.iter_mut()).zip(gamma).zip(beta) {
                *h = (*v - mean) * inv;
                *v = *h * g + b;
            }
        } else {
            for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                *v = (*v - mean) * inv * g + b;
            }
        }
    }
}

multiversion! {
    /// LayerNorm's backward over one row, in place: `g ← (1/σ)·(ĝ − mean(ĝ) − x̂·mean(ĝ ⊙ x̂))`
    /// with `ĝ = g ⊙ γ`.
    fn normalize_backward(g: &mut [f32], normalized: &[f32], gamma: &[f32], inv_std: f32) {
        let d = g.len() as f32;
        let mean_g = lane_sum(g, gamma, |g, w| g * w) / d;
        let mean_gh = lane_sum3(g, gamma, normalized, |g, w, h| g * w * h) / d;
        for ((g, w), h) in g.iter_mut().zip(gamma).zip(normalized) {
            *g = inv_std * (*g * w - mean_g - h * mean_gh);
        }
    }
}

multiversion! {
    /// `acc[i] += a[i] · b[i]`.
    fn multiply_add(acc: &mut [f32], a: &[f32], b: &[f32]) {
        for ((c, a), b) in acc.iter_mut().zip(a).zip(b) {
            *c += a * b;
        }
    }
}

/// SplitMix64's increment (2⁶⁴ / φ).
pub(crate) const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's finaliser: a bijective mix of a counter into 64 well-spread random bits.
#[inline(always)]
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Values in [-1, 1) from a fixed sequence, for tests and timings (no RNG dependency).
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let bits = splitmix64(seed.wrapping_add(i));
            (bits >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// `work` run on a pool of its own of `threads` threads, for tests that compare what one
/// thread and several compute.
#[cfg(test)]
pub(crate) fn on_threads<T: Send>(threads: usize, work: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
        .install(work)
}

multiversion! {
    /// Dropout keep flags: element pair `i` of `keep` takes hash `first_pair + i` of the stream
    /// `seed`, its low and high 32 bits deciding the two elements (kept when below
    /// `threshold = keep · 2³²`). Vectorised (AVX-512's 64-bit multiplies), same values as one
    /// element at a time.
    fn dropout_keep(keep: &mut [u8], seed: u64, first_pair: u64, threshold: u64) {
        let mut pairs = keep.chunks_exact_mut(2);
        // `seed + counter · γ`, stepped by γ: a sum per pair instead of a 64-bit multiply (a
        // third of the hash's multiplies, the slowest vector instruction here).
        let mut state = seed.wrapping_add(first_pair.wrapping_mul(GOLDEN_GAMMA));
        for pair in &mut pairs {
            let r = splitmix64(state);
            pair[0] = u8::from((r & 0xffff_ffff) < threshold);
            pair[1] = u8::from((r >> 32) < threshold);
            state = state.wrapping_add(GOLDEN_GAMMA);
        }
        if let [last] = pairs.into_remainder() {
            let r = splitmix64(state);
            *last = u8::from((r & 0xffff_ffff) < threshold);
        }
    }
}

/// [`dropout_keep`]'s decisions as bits, sixteen to a `u16` (bit `i` of `bits[c]` for element
/// `16c + i`, a pair's low half first). On AVX-512 a vector of eight draws is compared as its
/// sixteen 32-bit halves straight into the mask: no byte per element to store and pack again.
pub(crate) fn dropout_keep_bits(bits: &mut [u16], seed: u64, first_pair: u64, threshold: u64) {
    #[cfg(target_arch = "x86_64")]
    if let Ok(threshold) = u32::try_from(threshold) {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
        {
            // SAFETY: the features were just detected.
            return unsafe { dropout_keep_bits_avx512(bits, seed, first_pair, threshold) };
        }
    }
    dropout_keep_bits_portable(bits, seed, first_pair, threshold);
}

/// Elsewhere: [`dropout_keep`]'s bytes, packed.
fn dropout_keep_bits_portable(bits: &mut [u16], seed: u64, first_pair: u64, threshold: u64) {
    let mut bytes = vec![0u8; 16 * bits.len()];
    dropout_keep(&mut bytes, seed, first_pair, threshold);
    for (word, chunk) in bits.iter_mut().zip(bytes.chunks_exact(16)) {
        *word = (0..16).map(|i| u16::from(chunk[i]) << i).sum();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
fn dropout_keep_bits_avx512(bits: &mut [u16], seed: u64, first_pair: u64, threshold: u32) {
    use std::arch::x86_64::*;
    let start = seed.wrapping_add(first_pair.wrapping_mul(GOLDEN_GAMMA));
    let lane = |k: u64| start.wrapping_add(k.wrapping_mul(GOLDEN_GAMMA)) as i64;
    let mut state = _mm512_set_epi64(
        lane(7),
        lane(6),
        lane(5),
        lane(4),
        lane(3),
        lane(2),
        lane(1),
        lane(0),
    );
    let step = _mm512_set1_epi64(8u64.wrapping_mul(GOLDEN_GAMMA) as i64);
    let gamma = _mm512_set1_epi64(GOLDEN_GAMMA as i64);
    let (c1, c2) = (
        _mm512_set1_epi64(0xbf58_476d_1ce4_e5b9_u64 as i64),
        _mm512_set1_epi64(0x94d0_49bb_1331_11eb_u64 as i64),
    );
    let threshold = _mm512_set1_epi32(threshold as i32);
    for word in bits {
        // splitmix64 of each lane's counter, as [`splitmix64`].
        let mut z = _mm512_add_epi64(state, gamma);
        z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64::<30>(z)), c1);
        z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64::<27>(z)), c2);
        z = _mm512_xor_si512(z, _mm512_srli_epi64::<31>(z));
        // 32-bit lane 2k is draw k's low half, lane 2k + 1 its high half: element order.
        *word = _mm512_cmplt_epu32_mask(z, threshold);
        state = _mm512_add_epi64(state, step);
    }
}

multiversion! {
    /// `out[i] = gelu(values[i])` into `out`'s first `values.len()` (uninitialised) places.
    fn gelu_into_slice(values: &[f32], out: &mut [std::mem::MaybeUninit<f32>]) {
        for (o, v) in out.iter_mut().zip(values) {
            o.write(gelu(*v));
        }
    }
}

/// `gelu` of every value, as a new buffer written once, on every core: a copy then GELU in
/// place passes over the buffer twice.
pub(crate) fn gelu_of(values: &[f32]) -> Vec<f32> {
    const CHUNK: usize = 1 << 14;
    let mut out = Vec::with_capacity(values.len());
    out.spare_capacity_mut()[..values.len()]
        .par_chunks_mut(CHUNK)
        .zip(values.par_chunks(CHUNK))
        .for_each(|(out, values)| gelu_into_slice(values, out));
    // SAFETY: the chunks above wrote every one of the first `values.len()` places.
    unsafe { out.set_len(values.len()) };
    out
}

/// Buffers from this many floats up are zeroed or copied on every core.
const SPREAD_FROM: usize = 1 << 16;

/// `n` zeros, written on every core. `vec![0.0; n]` is one `calloc`: where the heap has a freed
/// block to reuse, one thread `memset`s it while the others wait (≈ 5 % of a LoRA step's wall
/// time, its forward's `[rows, ·]` buffers); where the block is fresh, that thread takes every
/// page fault.
pub(crate) fn zeros(n: usize) -> Vec<f32> {
    if n < SPREAD_FROM {
        return vec![0.0; n];
    }
    let mut out = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(1 << 14)
        .for_each(|chunk| chunk.fill(std::mem::MaybeUninit::new(0.0)));
    // SAFETY: the chunks above wrote every one of the first `n` places.
    unsafe { out.set_len(n) };
    out
}

/// A copy of `values`, written on every core (as [`zeros`]).
pub(crate) fn copy_of(values: &[f32]) -> Vec<f32> {
    let n = values.len();
    if n < SPREAD_FROM {
        return values.to_vec();
    }
    let mut out = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(1 << 14)
        .zip(values.par_chunks(1 << 14))
        .for_each(|(out, values)| {
            for (o, v) in out.iter_mut().zip(values) {
                o.write(*v);
            }
        });
    // SAFETY: the chunks above wrote every one of the first `n` places.
    unsafe { out.set_len(n) };
    out
}

/// Runs `kernel` over chunks of `values` on every core.
pub(crate) fn map_parallel(values: &mut [f32], kernel: fn(&mut [f32])) {
    values.par_chunks_mut(1 << 14).for_each(kernel);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        (0..=n)
            .map(|i| lo + (hi - lo) * i as f32 / n as f32)
            .collect()
    }

    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        let ulp = (f32::from_bits(b32.abs().to_bits() + 1) - b32.abs()) as f64;
        (a as f64 - b).abs() / ulp
    }

    #[test]
    fn exp_is_within_three_ulp_and_handles_the_edges() {
        let mut worst = 0.0f64;
        for x in grid(-87.0, 88.0, 400_000) {
            worst = worst.max(ulps(exp(x), (x as f64).exp()));
        }
        assert!(worst <= 3.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1e30), 0.0, "a masked score gives exactly 0");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    /// `gelu` against `½·x·(1 + erf(x/√2))` in f64: within 2.5·10⁻⁷·(|x| + |gelu(x)|), the
    /// absolute accuracy of the same formula evaluated in f32 as burn and PyTorch do (whose
    /// `1 + erf` cancels in the negative tail, as ours does); `erf` itself within 5·10⁻⁷.
    #[test]
    fn gelu_matches_the_erf_definition() {
        let erf_at = |x: f64| libm::erf(x / std::f64::consts::SQRT_2);
        let reference = |x: f64| 0.5 * x * (1.0 + erf_at(x));
        // erf's own error (≤ 5·10⁻⁷) halved and scaled by |x|, then f32's roundings of the rest.
        let mut worst = 0.0f64;
        for x in grid(-12.0, 12.0, 480_000) {
            let r = reference(x as f64);
            let err = (gelu(x) as f64 - r).abs();
            let bound = 2.5e-7 * (x as f64).abs() + 2.5e-7 * r.abs() + 1e-30;
            worst = worst.max(err / bound);
        }
        assert!(worst <= 1.0, "worst error {worst} of the bound");
        assert_eq!(gelu(0.0), 0.0);
        assert!(gelu(f32::NAN).is_nan());
        // erf itself, where the fit was made and past it (clamped).
        let worst_erf = grid(-6.0, 6.0, 120_000)
            .into_iter()
            .map(|z| (erf(z) as f64 - libm::erf(z as f64)).abs())
            .fold(0.0, f64::max);
        assert!(worst_erf <= 5e-7, "erf: worst |error| {worst_erf}");
        // And burn's (libm erff) value agrees to the same precision.
        let burn_style = |x: f32| 0.5 * x * (1.0 + libm::erff(x / core::f32::consts::SQRT_2));
        for x in grid(-8.0, 8.0, 10_000) {
            let (a, b) = (gelu(x), burn_style(x));
            assert!((a - b).abs() <= 4e-7 * x.abs().max(1.0), "{x}: {a} vs {b}");
        }
    }

    /// The bit form of the dropout draws is the byte form's, on both paths and at every
    /// threshold (none kept, all kept, the usual ones).
    #[test]
    fn keep_bits_are_the_keep_bytes() {
        for (seed, first_pair, threshold) in [
            (7, 0, 3_865_470_566),
            (u64::MAX, 12_345, 2_147_483_648),
            (42, 3, 0),
            (1, 99, 1 << 32),
        ] {
            let words = 37;
            let mut bytes = vec![0u8; 16 * words];
            dropout_keep(&mut bytes, seed, first_pair, threshold);
            let want: Vec<u16> = bytes
                .chunks(16)
                .map(|c| (0..16).map(|i| u16::from(c[i]) << i).sum())
                .collect();
            let mut got = vec![0u16; words];
            dropout_keep_bits(&mut got, seed, first_pair, threshold);
            assert_eq!(got, want, "seed {seed}, threshold {threshold}");
            let mut portable = vec![0u16; words];
            dropout_keep_bits_portable(&mut portable, seed, first_pair, threshold);
            assert_eq!(
                portable, want,
                "seed {seed}, threshold {threshold} (portable)"
            );
        }
    }

    #[test]
    fn gelu_of_a_buffer_is_gelu_of_each_value() {
        let values = grid(-8.0, 8.0, 40_000);
        let out = gelu_of(&values);
        assert_eq!(out.len(), values.len());
        for (x, y) in values.iter().zip(&out) {
            assert_eq!(y.to_bits(), gelu(*x).to_bits(), "{x}");
        }
    }

    #[test]
    fn gelu_with_a_bias_is_gelu_of_the_sum() {
        // A length that leaves a partial vector; a bias that moves values across zero.
        let values = grid(-8.0, 8.0, 1_001);
        let bias: Vec<f32> = (0..values.len())
            .map(|i| (i % 13) as f32 * 0.37 - 2.0)
            .collect();
        let mut out = values.clone();
        gelu_biased_slice(&mut out, &bias);
        for ((x, b), y) in values.iter().zip(&bias).zip(&out) {
            assert_eq!(y.to_bits(), gelu(x + b).to_bits(), "{x} + {b}");
        }
    }

    #[test]
    fn zeros_and_copies_spread_over_cores_are_whole() {
        // Below, at and past the size where the work is spread, a partial last chunk included.
        for n in [100, SPREAD_FROM, 3 * SPREAD_FROM + 17] {
            let values: Vec<f32> = (0..n).map(|i| i as f32 - 0.5).collect();
            let zeroed = zeros(n);
            assert_eq!(zeroed.len(), n);
            assert!(zeroed.iter().all(|v| v.to_bits() == 0), "n = {n}");
            let copied = copy_of(&values);
            assert_eq!(copied, values, "n = {n}");
        }
    }

    #[test]
    fn gelu_derivative_matches_the_analytic_one() {
        let mut values = grid(-10.0, 10.0, 100_000);
        let xs = values.clone();
        let mut derivative = vec![0.0; values.len()];
        gelu_with_derivative_slice(&mut values, &mut derivative);
        for ((x, y), d) in xs.iter().zip(&values).zip(&derivative) {
            let x64 = *x as f64;
            let cdf = 0.5 * (1.0 + libm::erf(x64 / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * x64 * x64).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert_eq!(*y, gelu(*x), "the slice kernel is the scalar one");
            assert!((*d as f64 - (cdf + x64 * pdf)).abs() <= 1e-6, "{x}: {d}");
        }
    }

    #[test]
    fn other_activations_match_their_definitions() {
        for x in grid(-20.0, 20.0, 40_000) {
            let x64 = x as f64;
            let tanh_form = 0.5
                * x64
                * (1.0
                    + ((2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3)))
                        .tanh());
            assert!((gelu_tanh(x) as f64 - tanh_form).abs() <= 1e-6 * x64.abs().max(1.0));
            let silu64 = x64 / (1.0 + (-x64).exp());
            assert!((silu(x) as f64 - silu64).abs() <= 1e-6 * x64.abs().max(1.0));
            assert_eq!(relu(x), x.max(0.0));
        }
    }

    #[test]
    fn softmax_matches_f64_and_masks_keys() {
        let row: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 23) as f32 * 0.7 - 8.0)
            .collect();
        let keep: Vec<bool> = (0..37).map(|i| i % 5 != 3).collect();
        // Two rows, each its own softmax (the same values: the same result).
        let mut ours = [row.clone(), row.clone()].concat();
        softmax_masked(&mut ours, &keep);
        assert_eq!(ours[..37], ours[37..]);
        let max = row
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(v, _)| *v as f64)
            .fold(f64::MIN, f64::max);
        let sum: f64 = row
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(v, _)| (*v as f64 - max).exp())
            .sum();
        for ((v, k), o) in row.iter().zip(&keep).zip(&ours) {
            let expected = if *k {
                (*v as f64 - max).exp() / sum
            } else {
                0.0
            };
            assert!((*o as f64 - expected).abs() <= 1e-7, "{o} vs {expected}");
        }
        let reversed: Vec<f32> = row.iter().rev().copied().collect();
        let mut plain = [reversed.clone(), row.clone()].concat();
        softmax(&mut plain, 37);
        let mut all_kept = [reversed, row].concat();
        softmax_masked(&mut all_kept, &[true; 37]);
        assert_eq!(plain, all_kept);
    }
}
