//! `out (+)= alpha · x · w` with `w` packed once into column panels that every thread reads,
//! run on `gemm`'s own AVX-512 register kernels: the weight products of the training step and
//! of inference (forward `x · W`, input gradient `dy · Wᵀ`).
//!
//! Why not `gemm` itself: a product split between the threads is one `gemm` call a thread, and
//! each call packs the whole weight for its rows, so every weight was packed twice a product
//! (≈ 5 % of a LoRA step's samples, BENCHMARKS.md "Twenty-third session"); its blocks are also
//! fixed when the call starts, so the faster core waits for the slower at the end of each
//! product. Here the weight is packed once, both threads packing half, and then the rows are
//! claimed in blocks that shrink towards the end (guided scheduling) by whichever thread is free.
//! A weight read transposed (the input gradient's `Wᵀ`) packs through 16 × 16 register
//! transposes as fast as one read row by row, so frozen weights need no transposed copy.
//!
//! The sums are those of `gemm`'s kernels over the same depth blocks, so each value does not
//! depend on which thread computed it or on the split: a run gives the same values each time.

#[cfg(target_arch = "x86_64")]
use gemm_f32::microkernel::avx512f::f32 as kernels;
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Columns of a panel: the kernels' 4 vectors of 16 floats.
const PANEL: usize = 64;
/// Floats to two cache lines (the adjacent-line prefetcher's pair): where the panels start.
const ALIGN: usize = 32;
/// Rows of `x` (and `out`) a kernel call takes.
const TILE_ROWS: usize = 6;
/// The deepest depth block a kernel call sums over; deeper products are cut into equal blocks
/// (`gemm`'s own choice on these shapes: 384 for a depth of 384, 768 or 1152, 512 for 1536
/// or 3072).
const MAX_DEPTH: usize = 512;
/// Bytes of panels (at one depth block) read in turn by every tile of a claimed block of rows:
/// what `gemm` keeps in L2 on these shapes (its `mc × kc`, 512 × 384 floats), well inside the
/// L2 of this machine's Xeon (2 MiB a core) and of a Zen 4 (1 MiB), the rest for rows of `x`.
const PANELS_BYTES: usize = 768 << 10;
/// The smallest and largest blocks of rows a thread claims (whole tiles).
pub(crate) const MIN_CLAIM: usize = 8 * TILE_ROWS;
const MAX_CLAIM: usize = 128 * TILE_ROWS;

/// Where the packed weight's values lie: depth block after depth block, each `[panels]
/// [depth][width]` (a panel's `width` is 64, or its columns rounded up to 16 for the last).
#[derive(Clone, Copy)]
struct Layout {
    n: usize,
    k: usize,
    /// `n` rounded up to whole vectors: the floats of one depth across all panels.
    padded: usize,
    /// Depth of every block but maybe the last.
    depth_block: usize,
    panels: usize,
    /// Panels a tile sweeps before the next tile ([`PANELS_BYTES`]).
    panels_a_block: usize,
}

impl Layout {
    fn new(n: usize, k: usize) -> Self {
        let depth_block = k.div_ceil(k.div_ceil(MAX_DEPTH));
        Self {
            n,
            k,
            padded: n.next_multiple_of(16),
            depth_block,
            panels: n.div_ceil(PANEL),
            panels_a_block: (PANELS_BYTES / (depth_block * PANEL * size_of::<f32>())).max(1),
        }
    }

    fn len(&self) -> usize {
        self.padded * self.k
    }

    fn depth_blocks(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        (0..self.k)
            .step_by(self.depth_block)
            .map(|start| start..self.k.min(start + self.depth_block))
    }

    /// Panel `p`'s columns, and its width as packed.
    fn panel_width(&self, p: usize) -> (usize, usize) {
        let cols = (self.n - p * PANEL).min(PANEL);
        (cols, cols.next_multiple_of(16))
    }

    /// Where panel `p` of the depth block starting at `depth` begins.
    fn offset(&self, depth: usize, p: usize) -> usize {
        let block = self.depth_block.min(self.k - depth);
        depth * self.padded + p * PANEL * block
    }
}

/// Whether [`product`] runs here (an x86-64 CPU with AVX-512F), unless `DAO_GEMM_PRODUCTS` is
/// set: then `gemm` makes every product, as before these panels (for timing one against the
/// other in one build, BENCHMARKS.md).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::env::var_os("DAO_GEMM_PRODUCTS").is_none()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A pointer shared by the threads of one product (each writes or reads where documented).
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
// SAFETY: the users below write disjoint places (panels, or rows of `out`) and read places no
// thread writes meanwhile.
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    fn ptr(&self) -> *mut T {
        self.0
    }
}

/// `dst (m × n, row stride dst_rs) = alpha · lhs (m × k, row stride lhs_rs) · rhs (k × n)`
/// (`+ dst` when `accumulate`), `rhs`'s element `(i, j)` at `rhs[i · rhs_rs + j · rhs_cs]`;
/// on `threads` threads. Returns false, having done nothing, where it does not run
/// ([`available`], or an empty depth).
///
/// # Safety
/// Every element the strides address must lie inside the caller's buffers, and `dst` must not
/// overlap `lhs` or `rhs` or be written by another thread meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    alpha: f32,
    threads: usize,
) -> bool {
    if !available() || k == 0 {
        return false;
    }
    if m == 0 || n == 0 {
        return true;
    }
    let layout = Layout::new(n, k);
    // Each panel starts on a cache line (64 floats a depth row, so every row does): a vector
    // load across two lines costs two.
    let mut storage = Vec::<f32>::with_capacity(layout.len() + ALIGN);
    let skip = storage
        .as_ptr()
        .align_offset(ALIGN * size_of::<f32>())
        .min(ALIGN);
    let packed_at = Shared(storage.as_mut_ptr().add(skip));
    let rhs_at = Shared(rhs as *mut f32);
    let blocks = k.div_ceil(layout.depth_block);
    // SAFETY (both calls): each unit packs its own panel of its own depth block, inside
    // `storage`'s capacity, from the caller's `rhs`.
    let pack = |unit: usize| unsafe {
        let (block, p) = (unit / layout.panels, unit % layout.panels);
        pack_panel(
            packed_at.ptr(),
            &layout,
            block * layout.depth_block,
            p,
            rhs_at.ptr(),
            (rhs_rs, rhs_cs),
        )
    };
    if threads > 1 {
        (0..blocks * layout.panels).into_par_iter().for_each(pack);
    } else {
        (0..blocks * layout.panels).for_each(pack);
    }
    // SAFETY: every panel of every depth block has been written whole (padding included),
    // from `skip` on; the floats before it are never read.
    let packed = std::slice::from_raw_parts(packed_at.ptr(), layout.len());

    let next = AtomicUsize::new(0);
    let (dst_at, lhs_at) = (Shared(dst), Shared(lhs as *mut f32));
    let work = |_| {
        while let Some(rows) = claim(&next, m, threads) {
            // SAFETY: the rows are this thread's alone; the caller's bounds hold for them.
            unsafe {
                rows_product(
                    rows,
                    &layout,
                    dst_at.ptr(),
                    dst_rs,
                    accumulate,
                    lhs_at.ptr(),
                    lhs_rs,
                    packed,
                    alpha,
                )
            }
        }
    };
    if threads > 1 {
        (0..threads).into_par_iter().for_each(work);
    } else {
        work(0);
    }
    true
}

/// `dst (m × n, row stride dst_rs) = alpha · lhs (m × k) · rhs (k × n)` (`+ dst` when
/// `accumulate`) on this thread, the kernels reading both factors where they lie: for the
/// attention backward's small products (one sequence and head: 128 × 32 × 128 at MiniLM's
/// shape), where `gemm`'s packing and set-up were a fifth of each call (BENCHMARKS.md,
/// "Twenty-third session"). `lhs`'s element `(i, d)` at `lhs[i · lhs_rs + d · lhs_cs]`;
/// `rhs`'s rows contiguous (`rhs[d · rhs_rs + j]`), in whole vectors (`n` a multiple of 16).
/// Returns false, having done nothing, where it does not run ([`available`], or `n` not a
/// multiple of 16, or an empty depth).
///
/// # Safety
/// Every element the strides address must lie inside the caller's buffers, and `dst` must not
/// overlap `lhs` or `rhs` or be written by another thread meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn small_product(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    rhs_rs: usize,
    alpha: f32,
) -> bool {
    if !available() || k == 0 || !n.is_multiple_of(16) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let status = u8::from(accumulate);
        // The kernels' view is the transposed product: `rhs`'s rows are their panel, read in
        // place (64 columns a depth step), `lhs`'s elements their broadcast factors.
        for first_col in (0..n).step_by(PANEL) {
            let width = PANEL.min(n - first_col);
            for tile in (0..m).step_by(TILE_ROWS) {
                let tile_rows = TILE_ROWS.min(m - tile);
                kernel_tile(
                    (width, width, tile_rows, k),
                    (dst.add(tile * dst_rs + first_col), dst_rs),
                    (rhs.add(first_col), rhs_rs),
                    (lhs.add(tile * lhs_rs), (lhs_rs, lhs_cs)),
                    alpha,
                    status,
                );
            }
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (
            m, dst, dst_rs, accumulate, lhs, lhs_rs, lhs_cs, rhs, rhs_rs, alpha,
        );
        unreachable!("available() is false off x86-64");
    }
}

/// `out[d · cols + c] = from[c · stride + d]` for `d < depths`, `c < cols`: a block read
/// transposed into rows, for [`small_product`]'s contiguous rows. False, having done nothing,
/// where the register transposes do not run ([`available`], or `cols` not whole vectors).
///
/// # Safety
/// `from`'s `cols` columns of `depths` floats at `stride` lie inside the caller's buffer, and
/// `out` holds `depths · cols` floats.
pub(crate) unsafe fn transpose(
    out: &mut [f32],
    from: *const f32,
    stride: usize,
    (depths, cols): (usize, usize),
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if available() && cols.is_multiple_of(16) {
        transpose_into(
            &mut out[..depths * cols],
            cols,
            from,
            stride,
            (depths, cols),
        );
        return true;
    }
    let _ = (out, from, stride, depths, cols);
    false
}

/// The next block of rows: a share of what is left (half of it over the threads, in whole
/// tiles, between [`MIN_CLAIM`] and [`MAX_CLAIM`]), or `None` when all are taken.
fn claim(next: &AtomicUsize, m: usize, threads: usize) -> Option<std::ops::Range<usize>> {
    let mut start = next.load(Ordering::Relaxed);
    loop {
        if start >= m {
            return None;
        }
        let left = m - start;
        let size = (left / (2 * threads))
            .next_multiple_of(TILE_ROWS)
            .clamp(MIN_CLAIM, MAX_CLAIM)
            .min(left);
        match next.compare_exchange_weak(start, start + size, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => return Some(start..start + size),
            Err(now) => start = now,
        }
    }
}

/// Packs panel `p` of the depth block starting at `depth`: columns `64p ..` of `rhs (k × n)`
/// at those depths, each depth's row of them contiguous (zeros past the last column).
///
/// # Safety
/// `packed` holds `layout.len()` floats; `rhs`'s strides address inside its buffer.
unsafe fn pack_panel(
    packed: *mut f32,
    layout: &Layout,
    depth: usize,
    p: usize,
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
) {
    let (cols, width) = layout.panel_width(p);
    let depths = layout.depth_block.min(layout.k - depth);
    let out = std::slice::from_raw_parts_mut(packed.add(layout.offset(depth, p)), width * depths);
    let first = rhs.add(depth * rhs_rs + p * PANEL * rhs_cs);
    #[cfg(target_arch = "x86_64")]
    if rhs_cs == 1 && cols == PANEL {
        return copy_rows(out, first, rhs_rs);
    }
    #[cfg(target_arch = "x86_64")]
    if rhs_rs == 1 {
        return transpose_into(out, width, first, rhs_cs, (depths, cols));
    }
    for (d, row) in out.chunks_exact_mut(width).enumerate() {
        for (col, value) in row.iter_mut().enumerate() {
            *value = if col < cols {
                *first.add(d * rhs_rs + col * rhs_cs)
            } else {
                0.0
            };
        }
    }
}

/// `out`'s rows of 64 floats from rows of `from` `stride` apart, through the registers (a
/// `memcpy` call a row cost more than the copy).
///
/// # Safety
/// `from`'s rows lie inside the caller's buffer; AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn copy_rows(out: &mut [f32], from: *const f32, stride: usize) {
    use std::arch::x86_64::*;
    for (d, row) in out.chunks_exact_mut(PANEL).enumerate() {
        let from = from.add(d * stride);
        for v in 0..PANEL / 16 {
            _mm512_storeu_ps(
                row.as_mut_ptr().add(16 * v),
                _mm512_loadu_ps(from.add(16 * v)),
            );
        }
    }
}

/// `out[d · width + c] = from[c · stride + d]` for `d < depths`, `c < cols`, zeros for the
/// columns past `cols`: the weight read transposed (the input gradient's `dy · Wᵀ`), sixteen
/// columns by sixteen depths at a time through the registers.
///
/// # Safety
/// `from`'s `cols` columns of `depths` floats at `stride` lie inside the caller's buffer;
/// AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_into(
    out: &mut [f32],
    width: usize,
    from: *const f32,
    stride: usize,
    (depths, cols): (usize, usize),
) {
    use std::arch::x86_64::*;
    let whole_depths = depths / 16 * 16;
    for c0 in (0..width).step_by(16) {
        if c0 + 16 <= cols {
            for d0 in (0..whole_depths).step_by(16) {
                let r: [__m512; 16] =
                    std::array::from_fn(|c| _mm512_loadu_ps(from.add((c0 + c) * stride + d0)));
                // Pairs of columns interleaved, then pairs of pairs: `b[4i + e]`'s 128-bit lane
                // `l` holds columns `4i .. 4i + 4` at depth `4l + e`.
                let a: [__m512; 16] = std::array::from_fn(|j| {
                    let (x, y) = (r[j & !1], r[j | 1]);
                    if j % 2 == 0 {
                        _mm512_unpacklo_ps(x, y)
                    } else {
                        _mm512_unpackhi_ps(x, y)
                    }
                });
                let b: [__m512; 16] = std::array::from_fn(|j| {
                    let (i, e) = (j / 4, j % 4);
                    let (x, y) = (
                        _mm512_castps_pd(a[4 * i + e / 2]),
                        _mm512_castps_pd(a[4 * i + 2 + e / 2]),
                    );
                    _mm512_castpd_ps(if e % 2 == 0 {
                        _mm512_unpacklo_pd(x, y)
                    } else {
                        _mm512_unpackhi_pd(x, y)
                    })
                });
                // Depth `4l + e` gathers lane `l` of `b[e], b[4 + e], b[8 + e], b[12 + e]`.
                for e in 0..4 {
                    let even_low = _mm512_shuffle_f32x4::<0x88>(b[e], b[4 + e]);
                    let odd_low = _mm512_shuffle_f32x4::<0xdd>(b[e], b[4 + e]);
                    let even_high = _mm512_shuffle_f32x4::<0x88>(b[8 + e], b[12 + e]);
                    let odd_high = _mm512_shuffle_f32x4::<0xdd>(b[8 + e], b[12 + e]);
                    let rows = [
                        _mm512_shuffle_f32x4::<0x88>(even_low, even_high),
                        _mm512_shuffle_f32x4::<0x88>(odd_low, odd_high),
                        _mm512_shuffle_f32x4::<0xdd>(even_low, even_high),
                        _mm512_shuffle_f32x4::<0xdd>(odd_low, odd_high),
                    ];
                    for (l, row) in rows.into_iter().enumerate() {
                        let d = d0 + 4 * l + e;
                        _mm512_storeu_ps(out.as_mut_ptr().add(d * width + c0), row);
                    }
                }
            }
        }
        // The depths past the last sixteen, and a cut block of columns, one value at a time.
        let first_scalar_depth = if c0 + 16 <= cols { whole_depths } else { 0 };
        for d in first_scalar_depth..depths {
            for c in c0..c0 + 16 {
                out[d * width + c] = if c < cols {
                    *from.add(c * stride + d)
                } else {
                    0.0
                };
            }
        }
    }
}

/// The kernels by `[vectors of a panel − 1][rows of a tile − 1]`.
#[cfg(target_arch = "x86_64")]
type Kernel = unsafe fn(
    usize,
    usize,
    usize,
    *mut f32,
    *const f32,
    *const f32,
    isize,
    isize,
    isize,
    isize,
    isize,
    f32,
    f32,
    u8,
    bool,
    bool,
    bool,
    *const f32,
);

#[cfg(target_arch = "x86_64")]
const KERNELS: [[Kernel; TILE_ROWS]; 4] = [
    [
        kernels::x1x1,
        kernels::x1x2,
        kernels::x1x3,
        kernels::x1x4,
        kernels::x1x5,
        kernels::x1x6,
    ],
    [
        kernels::x2x1,
        kernels::x2x2,
        kernels::x2x3,
        kernels::x2x4,
        kernels::x2x5,
        kernels::x2x6,
    ],
    [
        kernels::x3x1,
        kernels::x3x2,
        kernels::x3x3,
        kernels::x3x4,
        kernels::x3x5,
        kernels::x3x6,
    ],
    [
        kernels::x4x1,
        kernels::x4x2,
        kernels::x4x3,
        kernels::x4x4,
        kernels::x4x5,
        kernels::x4x6,
    ],
];

/// One kernel call: the `rows × cols` tile at `dst` (row stride `dst_rs`) gets `alpha` times the
/// sum over `depth` of the panel's rows (`width` floats read a depth step, `panel_rs` apart; the
/// first `cols` of them count) by the tile's rows of the other factor (element `(r, d)` at
/// `x[r · x_rs + d · x_cs]`, broadcast); `status` 0 stores it, 1 adds it to what is there.
///
/// # Safety
/// Every element addressed lies inside the caller's buffers; AVX-512F present.
#[cfg(target_arch = "x86_64")]
unsafe fn kernel_tile(
    (cols, width, rows, depth): (usize, usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    (panel, panel_rs): (*const f32, usize),
    (x, (x_rs, x_cs)): (*const f32, (usize, usize)),
    alpha: f32,
    status: u8,
) {
    // The kernels' arguments: their `dst` column and row strides, the panel's depth stride,
    // the broadcast factor's depth and column strides, `dst`'s and the sums' factors, then
    // conjugation flags and a prefetch address that f32 kernels ignore.
    KERNELS[width / 16 - 1][rows - 1](
        cols,
        rows,
        depth,
        dst,
        panel,
        x,
        dst_rs as isize,
        1,
        panel_rs as isize,
        x_cs as isize,
        x_rs as isize,
        1.0,
        alpha,
        status,
        false,
        false,
        false,
        std::ptr::null(),
    );
}

/// `dst[rows] (+)= alpha · lhs[rows] · w`, `w` as `packed` panels: depth block by depth block
/// (the first one storing, unless `accumulate`), a few panels at a time, tile by tile.
///
/// # Safety
/// As [`product`]'s, for these rows; AVX-512F present.
#[allow(clippy::too_many_arguments)]
unsafe fn rows_product(
    rows: std::ops::Range<usize>,
    layout: &Layout,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    packed: &[f32],
    alpha: f32,
) {
    #[cfg(target_arch = "x86_64")]
    for depths in layout.depth_blocks() {
        // 0: the kernel stores `alpha · sums`; 1: adds them to what is there.
        let status = u8::from(accumulate || depths.start > 0);
        for first_panel in (0..layout.panels).step_by(layout.panels_a_block) {
            let last_panel = layout.panels.min(first_panel + layout.panels_a_block);
            for tile in rows.clone().step_by(TILE_ROWS) {
                let tile_rows = TILE_ROWS.min(rows.end - tile);
                let x = lhs.add(tile * lhs_rs + depths.start);
                for p in first_panel..last_panel {
                    let (cols, width) = layout.panel_width(p);
                    kernel_tile(
                        (cols, width, tile_rows, depths.len()),
                        (dst.add(tile * dst_rs + p * PANEL), dst_rs),
                        (packed.as_ptr().add(layout.offset(depths.start, p)), width),
                        (x, (lhs_rs, 1)),
                        alpha,
                        status,
                    );
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (
            rows, layout, dst, dst_rs, accumulate, lhs, lhs_rs, packed, alpha,
        );
        unreachable!("product runs on x86-64 alone");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `alpha · lhs · rhs (+ dst)` in f64, element by element.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        (m, n, k): (usize, usize, usize),
        dst: &[f32],
        dst_rs: usize,
        accumulate: bool,
        lhs: &[f32],
        lhs_rs: usize,
        rhs: &[f32],
        (rhs_rs, rhs_cs): (usize, usize),
        alpha: f32,
    ) -> Vec<f32> {
        let mut out = dst.to_vec();
        for i in 0..m {
            for j in 0..n {
                let sum: f64 = (0..k)
                    .map(|d| {
                        f64::from(lhs[i * lhs_rs + d]) * f64::from(rhs[d * rhs_rs + j * rhs_cs])
                    })
                    .sum();
                let before = if accumulate {
                    f64::from(dst[i * dst_rs + j])
                } else {
                    0.0
                };
                out[i * dst_rs + j] = (before + f64::from(alpha) * sum) as f32;
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn panel_products_equal_the_sums_over_every_shape_and_layout() {
        if !available() {
            eprintln!("skipped: no AVX-512F on this CPU, the panel products do not run");
            return;
        }
        // Panels whole and cut (n = 200: three whole, one of 8 columns in a 16-wide panel),
        // tiles whole and cut (m = 7, 37), depths within one block and over several (k = 600),
        // the weight row by row, transposed and strided both ways, one thread and two.
        for &(m, n, k) in &[(7, 200, 3), (37, 64, 600), (130, 17, 257), (48, 130, 40)] {
            for layout in 0..3 {
                for &(accumulate, alpha, threads) in
                    &[(false, 1.0, 2), (true, -0.5, 1), (true, 2.0, 2)]
                {
                    let (rhs_rs, rhs_cs, rhs_len) = match layout {
                        0 => (n + 3, 1, k * (n + 3)),
                        1 => (1, k + 5, n * (k + 5)),
                        _ => (2 * n, 2, 2 * n * k),
                    };
                    let (lhs_rs, dst_rs) = (k + 1, n + 2);
                    let lhs = values(m * lhs_rs, 1);
                    let rhs = values(rhs_len, 2);
                    let mut dst = values(m * dst_rs, 3);
                    let expected = reference(
                        (m, n, k),
                        &dst,
                        dst_rs,
                        accumulate,
                        &lhs,
                        lhs_rs,
                        &rhs,
                        (rhs_rs, rhs_cs),
                        alpha,
                    );
                    // SAFETY: the strides address inside the three buffers made above.
                    let ran = unsafe {
                        product(
                            (m, n, k),
                            dst.as_mut_ptr(),
                            dst_rs,
                            accumulate,
                            lhs.as_ptr(),
                            lhs_rs,
                            rhs.as_ptr(),
                            (rhs_rs, rhs_cs),
                            alpha,
                            threads,
                        )
                    };
                    assert!(ran);
                    for (index, (&got, &want)) in dst.iter().zip(&expected).enumerate() {
                        let (i, j) = (index / dst_rs, index % dst_rs);
                        let bound = 1e-5 * (k as f32).sqrt() * (1.0 + want.abs());
                        assert!(
                            (got - want).abs() <= bound,
                            "{m}×{n}×{k} layout {layout} at ({i}, {j}): {got} against {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn small_products_equal_the_sums_with_either_factor_read_as_it_lies() {
        if !available() {
            eprintln!("skipped: no AVX-512F on this CPU, the panel products do not run");
            return;
        }
        // The attention backward's shapes (tiles whole and cut: 128 and 20 rows; one panel
        // and two cut ones: 32, 128, 80 columns), `lhs` by rows and read transposed.
        for &(m, n, k) in &[(128, 32, 128), (20, 128, 32), (128, 80, 7)] {
            for transposed in [false, true] {
                for &(accumulate, alpha) in &[(false, 0.25), (true, -1.5)] {
                    let (lhs_rs, lhs_cs, lhs_len) = if transposed {
                        (1, m + 3, k * (m + 3))
                    } else {
                        (k + 2, 1, m * (k + 2))
                    };
                    let (rhs_rs, dst_rs) = (n + 16, n + 5);
                    let lhs = values(lhs_len, 4);
                    let rhs = values(k * rhs_rs, 5);
                    let mut dst = values(m * dst_rs, 6);
                    let mut expected = dst.clone();
                    for i in 0..m {
                        for j in 0..n {
                            let sum: f64 = (0..k)
                                .map(|d| {
                                    f64::from(lhs[i * lhs_rs + d * lhs_cs])
                                        * f64::from(rhs[d * rhs_rs + j])
                                })
                                .sum();
                            let before = if accumulate {
                                f64::from(dst[i * dst_rs + j])
                            } else {
                                0.0
                            };
                            expected[i * dst_rs + j] = (before + f64::from(alpha) * sum) as f32;
                        }
                    }
                    // SAFETY: the strides address inside the three buffers made above.
                    let ran = unsafe {
                        small_product(
                            (m, n, k),
                            dst.as_mut_ptr(),
                            dst_rs,
                            accumulate,
                            lhs.as_ptr(),
                            (lhs_rs, lhs_cs),
                            rhs.as_ptr(),
                            rhs_rs,
                            alpha,
                        )
                    };
                    assert!(ran);
                    for (index, (&got, &want)) in dst.iter().zip(&expected).enumerate() {
                        let bound = 1e-5 * (k as f32).sqrt() * (1.0 + want.abs());
                        assert!(
                            (got - want).abs() <= bound,
                            "{m}×{n}×{k} transposed {transposed} at {index}: {got} against {want}"
                        );
                    }
                }
            }
        }
        // Columns not in whole vectors: not taken.
        let mut dst = [0f32; 24];
        // SAFETY: nothing is read or written when it is not taken.
        let ran = unsafe {
            small_product(
                (1, 24, 1),
                dst.as_mut_ptr(),
                24,
                false,
                dst.as_ptr(),
                (1, 1),
                dst.as_ptr(),
                24,
                1.0,
            )
        };
        assert!(!ran);
    }

    #[test]
    fn claims_cover_every_row_once_in_whole_tiles() {
        for &(m, threads) in &[(1, 2), (5, 1), (1280, 2), (1281, 2), (4096, 16)] {
            let next = AtomicUsize::new(0);
            let mut covered = 0;
            while let Some(rows) = claim(&next, m, threads) {
                assert_eq!(rows.start, covered);
                assert!(rows.end <= m);
                assert!(rows.len() % TILE_ROWS == 0 || rows.end == m);
                assert!(rows.len() <= MAX_CLAIM);
                covered = rows.end;
            }
            assert_eq!(covered, m);
        }
    }
}
