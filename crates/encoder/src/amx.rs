//! bf16 matrix products with f32 accumulation: on Intel's AMX tiles (Sapphire Rapids and later)
//! or, where there are none, on AVX-512 BF16's `vdpbf16ps` (AMD Zen 4 and later, Intel Cooper
//! Lake): the kernel behind [`ProductPrecision::Bf16`](crate::ProductPrecision), for the weight
//! products of CPU inference and of the training step (forward, input and weight gradients).
//!
//! Why: the encoder is bound by its matrix products, and f32 FMAs give ≈ 150 GFLOPS per core
//! here whichever library runs them (`gemm`, MKL); one `tdpbf16ps` does a 16 × 16 × 32 product
//! in 16 cycles, so even fed from the caches a core reaches 250–500 GFLOPS (BENCHMARKS.md).
//! `vdpbf16ps` does 32 multiply-adds an instruction where an f32 FMA does 16, but how many it
//! issues a cycle depends on the CPU: on this project's Xeon a quarter of the FMAs' count, so
//! half their multiply-adds (88 against 176 GFLOPS in a register-only loop); on Zen 4, by the
//! published instruction tables (not measured here), one 512-bit instruction a cycle like its
//! FMAs, so twice theirs. So the vector kernel is taken only where a short register-only race
//! at start-up ([`vector::pays`], ≈ 1 ms) finds it at least 1.25× the FMAs' multiply-adds, or
//! when asked (`DAO_BF16_KERNEL=vector`, for tests and timing); the tiles win wherever present.
//!
//! Both operands are rounded to bf16 (round to nearest even; 8 significant bits), the products
//! are summed in f32, starting from zero, the output's values or a bias row ([`Start`]). Each
//! operand is first packed into 32-bit words of two bf16, in the tiles' layouts, so that every
//! tile load reads 1 KiB of contiguous memory (the vector kernel reads the same layouts):
//! - the left operand `[m, k]` as 16-row bands of tiles, `[m/16][k/32][16 rows][16 words]`
//!   (rows padded with zeros to 32, `k` to a multiple of 32);
//! - the right operand `[k, n]` in the pairs `tdpbf16ps` wants, `[n/16][k/2][16 words]`: word
//!   `(p, j)` holds rows `2p` and `2p + 1` of column `j` side by side.
//!
//! Either operand may be stored transposed (the backward's `xᵀ` and `Wᵀ`): [`Strided`] says
//! how, and each layout has its own packing loop.
//!
//! Tiles are an x86-64 Linux feature (the kernel hands them out per process after
//! `arch_prctl(ARCH_REQ_XCOMP_PERM)`); `vdpbf16ps` needs no permission. Where neither runs,
//! [`available`] is false and callers keep their f32 products.

/// Which instructions run the bf16 products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// AMX tiles (`tdpbf16ps`).
    Tiles,
    /// AVX-512 BF16 vectors (`vdpbf16ps`).
    Vector,
}

impl Kernel {
    /// Its name in reports (`xtask bench`'s JSON).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kernel::Tiles => "amx",
            Kernel::Vector => "avx512-bf16",
        }
    }
}

/// The kernel this process runs the bf16 products on, chosen once: the tiles where the CPU
/// has them and the OS grants them, else `vdpbf16ps` where the CPU has it and it outruns the
/// f32 FMAs, else none. `DAO_BF16_KERNEL=vector` asks for `vdpbf16ps` wherever the CPU has it.
pub(crate) fn kernel() -> Option<Kernel> {
    #[cfg(test)]
    match FORCED.load(std::sync::atomic::Ordering::Relaxed) {
        1 => return Some(Kernel::Tiles),
        2 => return Some(Kernel::Vector),
        _ => {}
    }
    static KERNEL: std::sync::OnceLock<Option<Kernel>> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(|| {
        if std::env::var_os("DAO_BF16_KERNEL").is_some_and(|v| v == "vector") {
            return vector_available().then_some(Kernel::Vector);
        }
        if tiles_granted() {
            return Some(Kernel::Tiles);
        }
        (vector_available() && vector_pays()).then_some(Kernel::Vector)
    })
}

/// Tests: the kernel [`force`] set (0: none, 1: tiles, 2: vector).
#[cfg(test)]
static FORCED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Tests: every kernel this CPU runs.
#[cfg(test)]
pub(crate) fn kernels_here() -> Vec<Kernel> {
    let tiles = tiles_granted().then_some(Kernel::Tiles);
    tiles
        .into_iter()
        .chain(vector_available().then_some(Kernel::Vector))
        .collect()
}

/// Tests: the bf16 products run on `kernel` (one this CPU has) until the guard drops. The
/// tests that force one take turns (the model tests' lock); the kernels' own test names its
/// kernel, and no other test asserts which kernel ran.
#[cfg(test)]
pub(crate) fn force(kernel: Kernel) -> impl Drop {
    struct Forced;
    impl Drop for Forced {
        fn drop(&mut self) {
            FORCED.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let code = match kernel {
        Kernel::Tiles => 1,
        Kernel::Vector => 2,
    };
    FORCED.store(code, std::sync::atomic::Ordering::Relaxed);
    Forced
}

/// Whether the CPU has AMX tiles and the OS lets this process use them (asked once).
fn tiles_granted() -> bool {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        static GRANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *GRANTED.get_or_init(tiles::request)
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        false
    }
}

/// Whether the CPU has AVX-512 BF16 (`vdpbf16ps`).
fn vector_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return vector::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether `vdpbf16ps` does more multiply-adds a second than f32 FMAs on this CPU.
fn vector_pays() -> bool {
    #[cfg(target_arch = "x86_64")]
    return vector::pays();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this process can run the bf16 products ([`kernel`]).
pub(crate) fn available() -> bool {
    kernel().is_some()
}

/// A matrix operand: element `(i, j)` at `data[i · rs + j · cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Strided<'a> {
    pub(crate) fn new(data: &'a [f32], rs: usize, cs: usize) -> Self {
        Self { data, rs, cs }
    }

    /// Whether every element of a `rows × cols` matrix lies inside `data`.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// What a product's sums start from.
#[derive(Clone, Copy)]
pub(crate) enum Start<'a> {
    Zero,
    /// `dst`'s values (`dst += …`).
    Dst,
    /// The bias row, added to every row (`dst = bias + …`): read into the tiles directly, no
    /// pass over `dst` first.
    Bias(&'a [f32]),
}

impl Start<'_> {
    pub(crate) fn of(accumulate: bool) -> Self {
        if accumulate {
            Start::Dst
        } else {
            Start::Zero
        }
    }
}

/// `dst[m, n]` (row stride `dst_rs`) `(+)= bf16(alpha · lhs)[m, k] · bf16(rhs)[k, n]`, summed in
/// f32. Returns false, touching nothing, when no bf16 kernel runs here or `n` is not a
/// multiple of 32 (the caller then runs its f32 product); `k` is padded with zeros to 32.
pub(crate) fn product_bf16(
    dims: (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    start: Start<'_>,
    lhs: Strided<'_>,
    rhs: Strided<'_>,
    alpha: f32,
) -> bool {
    kernel()
        .is_some_and(|kernel| product_bf16_on(kernel, dims, dst, dst_rs, start, lhs, rhs, alpha))
}

/// [`product_bf16`] on the given kernel (available: the caller checks).
#[allow(clippy::too_many_arguments)]
fn product_bf16_on(
    kernel: Kernel,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    start: Start<'_>,
    lhs: Strided<'_>,
    rhs: Strided<'_>,
    alpha: f32,
) -> bool {
    if !n.is_multiple_of(32) || m == 0 || n == 0 || k == 0 {
        return false;
    }
    assert!(lhs.holds(m, k) && rhs.holds(k, n) && dst.len() >= (m - 1) * dst_rs + n);
    assert!(!matches!(start, Start::Bias(bias) if bias.len() < n));
    #[cfg(target_arch = "x86_64")]
    PACKED.with(|packed| {
        let (mut a, mut b) = packed.take();
        pack_lhs(&mut a, lhs, m, k, alpha);
        pack_rhs(&mut b, rhs, k, n);
        let dims = (m, n, k.div_ceil(32) * 32);
        packed_product_on(kernel, &a, &b, dims, dst, dst_rs, start);
        packed.replace((a, b));
    });
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (kernel, lhs, rhs, alpha);
    true
}

/// A right operand packed once for several products (a weight applied to a batch in chunks).
pub(crate) struct PackedRhs {
    words: Vec<u32>,
    k: usize,
    n: usize,
}

/// `rhs [k, n]` packed for [`product_packed`]; `None` where [`product_bf16`] would refuse.
pub(crate) fn pack_weight(rhs: Strided<'_>, k: usize, n: usize) -> Option<PackedRhs> {
    if !available() || !n.is_multiple_of(32) || n == 0 || k == 0 {
        return None;
    }
    assert!(rhs.holds(k, n));
    let mut words = Vec::new();
    pack_rhs(&mut words, rhs, k, n);
    Some(PackedRhs { words, k, n })
}

/// [`product_bf16`] with an already packed right operand.
pub(crate) fn product_packed(
    m: usize,
    dst: &mut [f32],
    dst_rs: usize,
    start: Start<'_>,
    lhs: Strided<'_>,
    rhs: &PackedRhs,
) {
    let (k, n) = (rhs.k, rhs.n);
    if m == 0 {
        return;
    }
    assert!(lhs.holds(m, k) && dst.len() >= (m - 1) * dst_rs + n);
    assert!(!matches!(start, Start::Bias(bias) if bias.len() < n));
    #[cfg(target_arch = "x86_64")]
    PACKED.with(|packed| {
        let (mut a, b) = packed.take();
        pack_lhs(&mut a, lhs, m, k, 1.0);
        packed_product(
            &a,
            &rhs.words,
            (m, n, k.div_ceil(32) * 32),
            dst,
            dst_rs,
            start,
        );
        packed.replace((a, b));
    });
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// The packed operands' buffers, kept per thread and reused: fresh ones cost a page fault
    /// per 4 KiB (and zeroing) at every product.
    static PACKED: std::cell::RefCell<(Vec<u32>, Vec<u32>)> = Default::default();
}

/// `x` rounded to the nearest bf16 (ties to even), as its 16 bits. NaN stays a (quiet) NaN;
/// values beyond bf16's range round to ±∞ as IEEE rounding does.
#[inline(always)]
fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits + 0x7fff + ((bits >> 16) & 1)) >> 16;
    if x.is_nan() {
        ((bits >> 16) | 0x40) as u16
    } else {
        rounded as u16
    }
}

/// The f32 value of a bf16.
#[cfg(test)]
fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Rows of one register block: two 16-row tiles of the left operand.
const BLOCK_ROWS: usize = 32;

/// Two bf16 side by side in one 32-bit word, `first` at the lower address.
#[inline(always)]
fn pair(first: f32, second: f32) -> u32 {
    u32::from(to_bf16(first)) | u32::from(to_bf16(second)) << 16
}

// The packed operands are 32-bit words, two bf16 each: a tile row is 16 words (64 bytes), a
// tile 256 words. Every word is written, padding included, so the buffers can be reused.

crate::fastmath::multiversion! {
    /// One 16-row band of a row-major left operand (`row` at `data[row · rs ..]`, `rows` of
    /// them valid) as tiles `[k'/32][16 rows][16 words]`.
    fn pack_band_of_rows(tiles: &mut [u32], data: &[f32], rs: usize, rows: usize, k: usize) {
        let steps = tiles.len() / 256;
        for row in 0..16 {
            for step in 0..steps {
                let dst = &mut tiles[(step * 16 + row) * 16..][..16];
                let col = step * 32;
                if row >= rows {
                    dst.fill(0);
                } else if col + 32 <= k {
                    let src = &data[row * rs + col..][..32];
                    for (word, two) in dst.iter_mut().zip(src.chunks_exact(2)) {
                        *word = pair(two[0], two[1]);
                    }
                } else {
                    let value = |c: usize| if c < k { data[row * rs + c] } else { 0.0 };
                    for (j, word) in dst.iter_mut().enumerate() {
                        *word = pair(value(col + 2 * j), value(col + 2 * j + 1));
                    }
                }
            }
        }
    }
}

crate::fastmath::multiversion! {
    /// The same band of a transposed left operand (`(row, col)` at `data[col · cs + row]`,
    /// as the weight gradient's `xᵀ`): the band's rows sit side by side in memory, so two
    /// columns give 16 words at a time, each stored in its own tile row.
    fn pack_band_of_columns(tiles: &mut [u32], data: &[f32], cs: usize, rows: usize, k: usize) {
        let steps = tiles.len() / 256;
        let mut words = [0u32; 16];
        for step in 0..steps {
            for w in 0..16 {
                let col = step * 32 + 2 * w;
                if rows == 16 && col + 1 < k {
                    let first = &data[col * cs..][..16];
                    let second = &data[(col + 1) * cs..][..16];
                    for ((word, &a), &b) in words.iter_mut().zip(first).zip(second) {
                        *word = pair(a, b);
                    }
                } else {
                    let value = |c: usize, r: usize| {
                        if c < k && r < rows {
                            data[c * cs + r]
                        } else {
                            0.0
                        }
                    };
                    for (r, word) in words.iter_mut().enumerate() {
                        *word = pair(value(col, r), value(col + 1, r));
                    }
                }
                for (r, &word) in words.iter().enumerate() {
                    tiles[(step * 16 + r) * 16 + w] = word;
                }
            }
        }
    }
}

crate::fastmath::multiversion! {
    /// One 16-column block of a row-major right operand (`data[kk · rs + j]`) as `[k'/2][16]`
    /// pair words.
    fn pack_block_of_rows(block: &mut [u32], data: &[f32], rs: usize, k: usize) {
        for (p, dst) in block.chunks_exact_mut(16).enumerate() {
            if 2 * p + 1 < k {
                let first = &data[2 * p * rs..][..16];
                let second = &data[(2 * p + 1) * rs..][..16];
                for ((word, &a), &b) in dst.iter_mut().zip(first).zip(second) {
                    *word = pair(a, b);
                }
            } else if 2 * p < k {
                let first = &data[2 * p * rs..][..16];
                for (word, &a) in dst.iter_mut().zip(first) {
                    *word = pair(a, 0.0);
                }
            } else {
                dst.fill(0);
            }
        }
    }
}

crate::fastmath::multiversion! {
    /// The same block of a transposed right operand (`data[j · cs + kk]`, as the input
    /// gradient's `Wᵀ`): each column is contiguous and its consecutive values pair up.
    fn pack_block_of_columns(block: &mut [u32], data: &[f32], cs: usize, k: usize) {
        let pairs = block.len() / 16;
        for j in 0..16 {
            let column = &data[j * cs..][..k];
            for p in 0..pairs {
                let first = if 2 * p < k { column[2 * p] } else { 0.0 };
                let second = if 2 * p + 1 < k { column[2 * p + 1] } else { 0.0 };
                block[p * 16 + j] = pair(first, second);
            }
        }
    }
}

/// `alpha · lhs [m, k]` as tiles `[m'/16][k'/32][16 rows][16 words]` into `packed`, `m'` and
/// `k'` padded with zeros to multiples of [`BLOCK_ROWS`] and 32.
fn pack_lhs(packed: &mut Vec<u32>, lhs: Strided<'_>, m: usize, k: usize, alpha: f32) {
    use rayon::prelude::*;
    let (padded_m, padded_k) = (m.div_ceil(BLOCK_ROWS) * BLOCK_ROWS, k.div_ceil(32) * 32);
    packed.resize(padded_m * padded_k / 2, 0);
    packed
        .par_chunks_mut(8 * padded_k)
        .enumerate()
        .for_each(|(band, tiles)| {
            let (first_row, rows) = (band * 16, 16.min(m.saturating_sub(band * 16)));
            if rows == 0 {
                tiles.fill(0);
            } else if lhs.cs == 1 && alpha == 1.0 {
                pack_band_of_rows(tiles, &lhs.data[first_row * lhs.rs..], lhs.rs, rows, k);
            } else if lhs.rs == 1 && alpha == 1.0 {
                pack_band_of_columns(tiles, &lhs.data[first_row..], lhs.cs, rows, k);
            } else {
                let value = |r: usize, c: usize| {
                    if r < rows && c < k {
                        alpha * lhs.data[(first_row + r) * lhs.rs + c * lhs.cs]
                    } else {
                        0.0
                    }
                };
                for (i, word) in tiles.iter_mut().enumerate() {
                    let (step, r, w) = (i / 256, i / 16 % 16, i % 16);
                    let col = step * 32 + 2 * w;
                    *word = pair(value(r, col), value(r, col + 1));
                }
            }
        });
}

/// `rhs [k, n]` into `packed` as the pairs `tdpbf16ps` wants, `[n/16][k'/2][16]` words: word
/// `(p, j)` holds `rhs[2p][j], rhs[2p + 1][j]` (`k'` padded with zeros to 32).
fn pack_rhs(packed: &mut Vec<u32>, rhs: Strided<'_>, k: usize, n: usize) {
    use rayon::prelude::*;
    let padded_k = k.div_ceil(32) * 32;
    packed.resize(padded_k * n / 2, 0);
    packed
        .par_chunks_mut(8 * padded_k)
        .enumerate()
        .for_each(|(block, words)| {
            let col0 = block * 16;
            if rhs.cs == 1 {
                pack_block_of_rows(words, &rhs.data[col0..], rhs.rs, k);
            } else if rhs.rs == 1 {
                pack_block_of_columns(words, &rhs.data[col0 * rhs.cs..], rhs.cs, k);
            } else {
                let value = |kk: usize, j: usize| {
                    if kk < k {
                        rhs.data[kk * rhs.rs + (col0 + j) * rhs.cs]
                    } else {
                        0.0
                    }
                };
                for (i, word) in words.iter_mut().enumerate() {
                    let (p, j) = (i / 16, i % 16);
                    *word = pair(value(2 * p, j), value(2 * p + 1, j));
                }
            }
        });
}

/// `c (+)= a · b` from packed operands (`k` already padded to 32), on [`kernel`]'s
/// instructions, blocks of [`BLOCK_ROWS`] rows in parallel.
#[cfg(target_arch = "x86_64")]
fn packed_product(
    a: &[u32],
    b: &[u32],
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    c_rs: usize,
    start: Start<'_>,
) {
    let kernel = kernel().expect("the callers check `available` first");
    packed_product_on(kernel, a, b, (m, n, k), c, c_rs, start);
}

/// [`packed_product`] on the given kernel (the tests run both).
#[cfg(target_arch = "x86_64")]
fn packed_product_on(
    kernel: Kernel,
    a: &[u32],
    b: &[u32],
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    c_rs: usize,
    start: Start<'_>,
) {
    use crate::cpu_inference::SharedOut;
    use rayon::prelude::*;
    // SAFETY (both kernels): the kernel was found available (`kernel`); `a` holds the block's
    // two packed bands, `b` the packed weight; `c` 32 rows of `n` at stride `c_rs` that are
    // this task's alone.
    let block = |a_block: &[u32], c: *mut f32, c_rs: usize| unsafe {
        match kernel {
            #[cfg(target_os = "linux")]
            Kernel::Tiles => tiles::block_product(a_block, b, k, n, c, c_rs, start),
            #[cfg(not(target_os = "linux"))]
            Kernel::Tiles => unreachable!("tiles are granted on Linux alone"),
            Kernel::Vector => vector::block_product(a_block, b, k, n, c, c_rs, start),
        }
    };
    let c_ptr = SharedOut::new(c);
    let blocks = m.div_ceil(BLOCK_ROWS);
    (0..blocks).into_par_iter().for_each(|index| {
        let r0 = index * BLOCK_ROWS;
        let valid = BLOCK_ROWS.min(m - r0);
        let a_block = &a[r0 * k / 2..(r0 + BLOCK_ROWS) * k / 2];
        if valid == BLOCK_ROWS {
            // SAFETY: rows r0 .. r0 + 32 of `c` are this task's alone and lie inside it
            // (asserted by the caller: c.len() ≥ (m − 1) · c_rs + n).
            block(a_block, unsafe { c_ptr.ptr().add(r0 * c_rs) }, c_rs);
        } else {
            // The last, partial block goes through a full-size scratch block.
            let mut scratch = vec![0f32; BLOCK_ROWS * n];
            let row = |r: usize| {
                // SAFETY: as above, row r0 + r < m is this task's.
                unsafe { std::slice::from_raw_parts_mut(c_ptr.ptr().add((r0 + r) * c_rs), n) }
            };
            if let Start::Dst = start {
                for r in 0..valid {
                    scratch[r * n..(r + 1) * n].copy_from_slice(row(r));
                }
            }
            block(a_block, scratch.as_mut_ptr(), n);
            for r in 0..valid {
                row(r).copy_from_slice(&scratch[r * n..(r + 1) * n]);
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod vector {
    use std::arch::x86_64::*;

    use super::Start;

    /// Whether the CPU has AVX-512 BF16 (`vdpbf16ps`).
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }

    /// Sixteen words of two bf16 each, as `vdpbf16ps` reads them.
    #[inline(always)]
    fn pairs(words: __m512i) -> __m512bh {
        // SAFETY: both are 64 bytes of plain bits.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(words) }
    }

    /// How much faster `vdpbf16ps` must multiply-add than f32 FMAs to be worth its packing.
    const MARGIN: f64 = 1.25;

    /// Whether `vdpbf16ps` multiply-adds at least [`MARGIN`] times as fast as f32 FMAs here:
    /// the best of three short register-only loops of each (0.1–0.2 ms a loop), so that a
    /// moment's preemption, or the first loop's wait for the wide units to power up, does not
    /// decide it.
    pub(super) fn pays() -> bool {
        let best = |race: unsafe fn(usize) -> f32, per_instruction: f64| {
            (0..3)
                .map(|_| {
                    let started = std::time::Instant::now();
                    // SAFETY: `available` checked the features of both races.
                    std::hint::black_box(unsafe { race(LAPS) });
                    (LAPS * CHAINS) as f64 * per_instruction / started.elapsed().as_secs_f64()
                })
                .fold(0.0, f64::max)
        };
        available() && best(pair_race, 32.0) >= MARGIN * best(fma_race, 16.0)
    }

    /// Independent sums a race keeps (more than either instruction's latency × issue rate).
    const CHAINS: usize = 16;
    /// Rounds of a race: 2¹⁸ instructions, 0.1–0.2 ms at one or two a cycle.
    const LAPS: usize = 16384;

    /// `laps` rounds of [`CHAINS`] independent `vdpbf16ps`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn pair_race(laps: usize) -> f32 {
        let ones = std::hint::black_box(pairs(_mm512_set1_epi32(0x3f80_3f80_u32 as i32)));
        let mut sums = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..laps {
            for sum in &mut sums {
                *sum = _mm512_dpbf16_ps(*sum, ones, ones);
            }
        }
        sums.iter().map(|&sum| _mm512_reduce_add_ps(sum)).sum()
    }

    /// `laps` rounds of [`CHAINS`] independent f32 FMAs.
    #[target_feature(enable = "avx512f")]
    unsafe fn fma_race(laps: usize) -> f32 {
        let one = std::hint::black_box(_mm512_set1_ps(1.0));
        let mut sums = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..laps {
            for sum in &mut sums {
                *sum = _mm512_fmadd_ps(one, one, *sum);
            }
        }
        sums.iter().map(|&sum| _mm512_reduce_add_ps(sum)).sum()
    }

    /// 32 rows of the product, as [`super::tiles::block_product`] makes them from the same
    /// packed operands: for each pair of 16-column blocks, the rows in groups of 12, 12 and 8,
    /// each group's sums in registers (two vectors a row: 24 of the 32) across the whole depth;
    /// every step along `k` loads the two blocks' next word pair-row once and broadcasts one
    /// word (two bf16) of each row's.
    ///
    /// # Safety
    /// AVX-512 BF16 present; `a` holds this block's two packed 16-row bands, `b` the packed
    /// weight (`n` a multiple of 32, `k` of 32), and `c` 32 rows of `n` f32 at stride `c_rs`
    /// that no one else touches.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn block_product(
        a: &[u32],
        b: &[u32],
        k: usize,
        n: usize,
        c: *mut f32,
        c_rs: usize,
        start: Start<'_>,
    ) {
        for pair in 0..n / 32 {
            // In words: a 16-column block of `b` is 8·k.
            let columns = (b.as_ptr().add(2 * pair * 8 * k), pair * 32);
            group::<12>(a.as_ptr(), 0, columns, k, (c, c_rs), start);
            group::<12>(a.as_ptr(), 12, columns, k, (c, c_rs), start);
            group::<8>(a.as_ptr(), 24, columns, k, (c, c_rs), start);
        }
    }

    /// Rows `first .. first + R` of the block, columns `column .. column + 32`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn group<const R: usize>(
        a: *const u32,
        first: usize,
        (b, column): (*const u32, usize),
        k: usize,
        (c, c_rs): (*mut f32, usize),
        start: Start<'_>,
    ) {
        let out = |r: usize| c.add((first + r) * c_rs + column);
        let mut sums = [[_mm512_setzero_ps(); 2]; R];
        match start {
            Start::Zero => {}
            Start::Dst => {
                for (r, row) in sums.iter_mut().enumerate() {
                    *row = [_mm512_loadu_ps(out(r)), _mm512_loadu_ps(out(r).add(16))];
                }
            }
            Start::Bias(bias) => {
                let bias = bias.as_ptr().add(column);
                let row = [_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.add(16))];
                sums = [row; R];
            }
        }
        // Row `row` of the block: band `row / 16`, its 16 words a step at `(row % 16) · 16`.
        let rows: [*const u32; R] = std::array::from_fn(|r| {
            let row = first + r;
            a.add(row / 16 * 8 * k + row % 16 * 16)
        });
        let second = b.add(8 * k);
        for step in 0..k / 32 {
            for word in 0..16 {
                let p = step * 16 + word;
                let w0 = pairs(_mm512_loadu_si512(b.add(p * 16).cast()));
                let w1 = pairs(_mm512_loadu_si512(second.add(p * 16).cast()));
                for (sum, row) in sums.iter_mut().zip(rows) {
                    let x = pairs(_mm512_set1_epi32(*row.add(step * 256 + word) as i32));
                    sum[0] = _mm512_dpbf16_ps(sum[0], x, w0);
                    sum[1] = _mm512_dpbf16_ps(sum[1], x, w1);
                }
            }
        }
        for (r, row) in sums.iter().enumerate() {
            _mm512_storeu_ps(out(r), row[0]);
            _mm512_storeu_ps(out(r).add(16), row[1]);
        }
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod tiles {
    use std::arch::asm;

    use super::Start;

    /// `ldtilecfg`'s 64-byte operand (palette 1).
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    /// CPUID leaf 7's AMX-BF16 and AMX-TILE bits, then the kernel's permission to use the
    /// tiles' state in this process (Linux ≥ 5.16).
    pub(super) fn request() -> bool {
        if std::arch::x86_64::__cpuid(0).eax < 7 {
            return false;
        }
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
        if !(amx_bf16 && amx_tile) {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain system call with integer arguments.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }

    /// 32 rows of the product: for each pair of 16-column blocks, four 16 × 16 f32 tiles
    /// (tmm0–3) summed over k in steps of 32 from two input tiles (tmm4, 5) and two weight
    /// tiles (tmm6, 7).
    ///
    /// # Safety
    /// The tiles must be available; `a` holds this block's two packed 16-row bands, `b` the
    /// packed weight, and `c` 32 rows of `n` f32 at stride `c_rs` that no one else touches.
    pub(super) unsafe fn block_product(
        a: &[u32],
        b: &[u32],
        k: usize,
        n: usize,
        c: *mut f32,
        c_rs: usize,
        start: Start<'_>,
    ) {
        let mut config = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        for tile in 0..8 {
            config.bytes_per_row[tile] = 64;
            config.rows[tile] = 16;
        }
        let tile_stride = 64usize;
        let c_stride = c_rs * 4;
        // In words: a 16-row band of `a` and a 16-column block of `b` are 8·k each, one
        // step of 32 along k is 256.
        let (a0, a1) = (a.as_ptr(), a.as_ptr().add(8 * k));
        asm!("ldtilecfg [{}]", in(reg) &config as *const TileConfig, options(nostack));
        for pair in 0..n / 32 {
            let c00 = c.add(pair * 32);
            let (c01, c10, c11) = (c00.add(16), c00.add(16 * c_rs), c00.add(16 * c_rs + 16));
            match start {
                Start::Bias(bias) => {
                    // Stride 0: every row of the tile reads the same 16 bias values.
                    let (b0, b1) = (
                        bias.as_ptr().add(pair * 32),
                        bias.as_ptr().add(pair * 32 + 16),
                    );
                    asm!(
                        "tileloadd tmm0, [{b0} + {s}*1]",
                        "tileloadd tmm1, [{b1} + {s}*1]",
                        "tileloadd tmm2, [{b0} + {s}*1]",
                        "tileloadd tmm3, [{b1} + {s}*1]",
                        b0 = in(reg) b0, b1 = in(reg) b1, s = in(reg) 0usize,
                        options(nostack, readonly),
                    );
                }
                Start::Dst => {
                    asm!(
                        "tileloadd tmm0, [{c00} + {s}*1]",
                        "tileloadd tmm1, [{c01} + {s}*1]",
                        "tileloadd tmm2, [{c10} + {s}*1]",
                        "tileloadd tmm3, [{c11} + {s}*1]",
                        c00 = in(reg) c00, c01 = in(reg) c01, c10 = in(reg) c10, c11 = in(reg) c11,
                        s = in(reg) c_stride, options(nostack),
                    );
                }
                Start::Zero => {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack, nomem)
                    );
                }
            }
            let (b0, b1) = (
                b.as_ptr().add(2 * pair * 8 * k),
                b.as_ptr().add((2 * pair + 1) * 8 * k),
            );
            for step in 0..k / 32 {
                // Each load is followed by the products that first need it: the tiles are
                // not renamed, so a load waits for the products still reading its register.
                asm!(
                    "tileloadd tmm4, [{a0} + {s}*1]",
                    "tileloadd tmm6, [{b0} + {s}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{b1} + {s}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {s}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0.add(step * 256), a1 = in(reg) a1.add(step * 256),
                    b0 = in(reg) b0.add(step * 256), b1 = in(reg) b1.add(step * 256),
                    s = in(reg) tile_stride, options(nostack, readonly),
                );
            }
            asm!(
                "tilestored [{c00} + {s}*1], tmm0",
                "tilestored [{c01} + {s}*1], tmm1",
                "tilestored [{c10} + {s}*1], tmm2",
                "tilestored [{c11} + {s}*1], tmm3",
                c00 = in(reg) c00, c01 = in(reg) c01, c10 = in(reg) c10, c11 = in(reg) c11,
                s = in(reg) c_stride, options(nostack),
            );
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        (0..len as u64)
            .map(|i| {
                let h = crate::fastmath::splitmix64(seed ^ i);
                (h >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: ties to the even 1.
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        // 1 + 3·2⁻⁸ is halfway between 1 + 2⁻⁷ and 1 + 2⁻⁶: ties to the even 1 + 2⁻⁶.
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 1.0 / 64.0);
        assert_eq!(from_bf16(to_bf16(1.0 + 1.1 / 256.0)), 1.0 + 1.0 / 128.0);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::MAX)), f32::INFINITY);
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    /// Each kernel's product (the tiles', `vdpbf16ps`') equals the f64 product of the
    /// bf16-rounded operands (the only rounding left is f32 summation): both layouts of each
    /// operand (row-major and transposed, as the forward, input-gradient and weight-gradient
    /// products use them),
    /// with and without accumulation and scaling, a row count that leaves a partial block,
    /// a `k` that needs padding, and an output wider than the product.
    #[test]
    fn bf16_products_equal_the_rounded_operands_products_on_every_kernel() {
        let kernels = kernels_here();
        if kernels.is_empty() {
            eprintln!("skipped: neither AMX tiles nor AVX-512 BF16 on this CPU");
            return;
        }
        for kernel in kernels {
            // An odd k: the last pair has a zero partner, and k pads to 96.
            rounded_operands_product_on(kernel, (45, 71, 64, 80));
            // A depth of many steps (a base model's 768 or 3072 is the same loop), three
            // column pairs, and two whole blocks of rows.
            rounded_operands_product_on(kernel, (64, 600, 96, 96));
        }
    }

    fn rounded_operands_product_on(
        kernel: Kernel,
        (m, k, n, dst_rs): (usize, usize, usize, usize),
    ) {
        let a = values(m * k, 1);
        let b = values(k * n, 2);
        let start = values(m * dst_rs, 3);
        let round = |v: f32| from_bf16(to_bf16(v)) as f64;
        let bias = values(n, 4);
        // 0: from zero, 1: += dst, 2: from the bias row.
        for (transposed_lhs, transposed_rhs, begin, alpha) in [
            (false, false, 0, 1.0),
            (false, true, 1, 0.5),
            (true, false, 2, 1.0),
            (true, true, 1, 2.5),
            (false, false, 2, 1.0),
        ] {
            // The same matrices, stored either way.
            let lhs_storage: Vec<f32> = if transposed_lhs {
                (0..k * m).map(|i| a[(i % m) * k + i / m]).collect()
            } else {
                a.clone()
            };
            let rhs_storage: Vec<f32> = if transposed_rhs {
                (0..n * k).map(|i| b[(i % k) * n + i / k]).collect()
            } else {
                b.clone()
            };
            let lhs = if transposed_lhs {
                Strided::new(&lhs_storage, 1, m)
            } else {
                Strided::new(&lhs_storage, k, 1)
            };
            let rhs = if transposed_rhs {
                Strided::new(&rhs_storage, 1, k)
            } else {
                Strided::new(&rhs_storage, n, 1)
            };
            let mut dst = start.clone();
            let from = [Start::Zero, Start::Dst, Start::Bias(&bias)][begin];
            assert!(product_bf16_on(
                kernel,
                (m, n, k),
                &mut dst,
                dst_rs,
                from,
                lhs,
                rhs,
                alpha
            ));
            for r in 0..m {
                for j in 0..dst_rs {
                    let got = dst[r * dst_rs + j];
                    if j >= n {
                        assert_eq!(
                            got,
                            start[r * dst_rs + j],
                            "column {j} is not the product's"
                        );
                        continue;
                    }
                    let mut want: f64 = (0..k)
                        .map(|i| round(alpha * a[r * k + i]) * round(b[i * n + j]))
                        .sum();
                    want += match begin {
                        1 => start[r * dst_rs + j] as f64,
                        2 => bias[j] as f64,
                        _ => 0.0,
                    };
                    assert!(
                        // f32 summation's rounding, growing with the depth.
                        (got as f64 - want).abs() < 1.5e-7 * k as f64,
                        "{kernel:?} {transposed_lhs}/{transposed_rhs} ({r}, {j}): {got} vs {want}"
                    );
                }
            }
        }
        // A width the tiles cannot take is left to the caller.
        let mut dst = vec![0f32; 4 * 48];
        let lhs = Strided::new(&a, k, 1);
        let rhs = Strided::new(&b, 48, 1);
        assert!(!product_bf16_on(
            kernel,
            (4, 48, 32),
            &mut dst,
            48,
            Start::Zero,
            lhs,
            rhs,
            1.0
        ));
        assert!(dst.iter().all(|&v| v == 0.0));
    }
}
