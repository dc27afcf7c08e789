//! bf16 matrix products with f32 accumulation on Intel's AMX tiles (Sapphire Rapids and later):
//! the kernel behind [`ProductPrecision::Bf16`](crate::ProductPrecision) for CPU inference.
//!
//! Why: inference is bound by its matrix products, and f32 FMAs give ≈ 150 GFLOPS per core
//! here whichever library runs them (`gemm`, MKL); one `tdpbf16ps` does a 16 × 16 × 32 product
//! in 16 cycles, so even fed from the caches a core reaches 250–500 GFLOPS (BENCHMARKS.md).
//! `vdpbf16ps` (AVX-512 bf16, also on Zen 4) measured slower than f32 FMAs and is not used.
//!
//! Both operands are rounded to bf16 (round to nearest even; 8 significant bits), the products
//! are summed in f32. Each operand is first packed into the tiles' layouts so that every tile
//! load reads 1 KiB of contiguous memory:
//! - the input `x [rows, k]` as `[rows/16][k/32][16][32]` (rows padded with zeros to 32);
//! - the weight `w [k, n]` (burn's layout) in the "VNNI" pairs `tdpbf16ps` wants,
//!   `[n/16][k/2][16][2]`: row `k2` of a tile holds `w[2·k2][j], w[2·k2 + 1][j]` side by side.
//!
//! Tiles are an x86-64 Linux feature (the kernel hands them out per process after
//! `arch_prctl(ARCH_REQ_XCOMP_PERM)`); everywhere else [`available`] is false and callers keep
//! their f32 products.

/// Whether this process can run the bf16 tile products (CPU support and the kernel's consent,
/// asked once).
pub(crate) fn available() -> bool {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(tiles::request)
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        false
    }
}

/// `out[rows, n]` (row stride `out_rs`) `(+)= bf16(x)[rows, k] · bf16(w)[k, n]`, summed in f32.
/// Returns false, touching nothing, when the tiles are unavailable or the shape does not fit
/// them (`k` and `n` multiples of 32): the caller then runs its f32 product.
pub(crate) fn product_bf16(
    x: &[f32],
    w: &[f32],
    (rows, k, n): (usize, usize, usize),
    out: &mut [f32],
    out_rs: usize,
    accumulate: bool,
) -> bool {
    if !available() || k % 32 != 0 || n % 32 != 0 || rows == 0 {
        return false;
    }
    assert!(x.len() >= rows * k && w.len() >= k * n && out.len() >= (rows - 1) * out_rs + n);
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    tiles::product(x, w, (rows, k, n), out, out_rs, accumulate);
    true
}

/// `x` rounded to the nearest bf16 (ties to even), as its 16 bits. NaN stays a (quiet) NaN;
/// values beyond bf16's range round to ±∞ as IEEE rounding does.
#[inline(always)]
pub(crate) fn to_bf16(x: f32) -> u16 {
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

crate::fastmath::multiversion! {
    /// `dst[i] = to_bf16(src[i])`.
    fn round_to_bf16(dst: &mut [u16], src: &[f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = to_bf16(*s);
        }
    }
}

/// Rows of one register block: two 16-row tiles of the input.
const BLOCK_ROWS: usize = 32;

/// `x [rows, k]` as bf16 tiles `[padded/16][k/32][16][32]`, rows padded with zeros to a
/// multiple of [`BLOCK_ROWS`].
fn pack_input(x: &[f32], rows: usize, k: usize) -> Vec<u16> {
    use rayon::prelude::*;
    let padded = rows.div_ceil(BLOCK_ROWS) * BLOCK_ROWS;
    let mut packed = vec![0u16; padded * k];
    // One 16-row band per task: its k/32 tiles, each 16 rows × 32 values.
    packed
        .par_chunks_mut(16 * k)
        .enumerate()
        .for_each(|(band, tiles)| {
            for row in 0..16 {
                let r = band * 16 + row;
                if r >= rows {
                    break;
                }
                let source = &x[r * k..(r + 1) * k];
                for (kk, chunk) in source.chunks_exact(32).enumerate() {
                    let start = (kk * 16 + row) * 32;
                    round_to_bf16(&mut tiles[start..start + 32], chunk);
                }
            }
        });
    packed
}

/// `w [k, n]` as bf16 pairs `[n/16][k/2][16][2]`.
fn pack_weight(w: &[f32], k: usize, n: usize) -> Vec<u16> {
    use rayon::prelude::*;
    let mut packed = vec![0u16; k * n];
    packed
        .par_chunks_mut(16 * k)
        .enumerate()
        .for_each(|(block, column_block)| {
            let col0 = block * 16;
            for (pair, out) in column_block.chunks_exact_mut(32).enumerate() {
                let even = &w[2 * pair * n + col0..][..16];
                let odd = &w[(2 * pair + 1) * n + col0..][..16];
                for j in 0..16 {
                    out[2 * j] = to_bf16(even[j]);
                    out[2 * j + 1] = to_bf16(odd[j]);
                }
            }
        });
    packed
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod tiles {
    use std::arch::asm;

    use rayon::prelude::*;

    use super::{pack_input, pack_weight, BLOCK_ROWS};
    use crate::cpu_inference::SharedOut;

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

    pub(super) fn product(
        x: &[f32],
        w: &[f32],
        (rows, k, n): (usize, usize, usize),
        out: &mut [f32],
        out_rs: usize,
        accumulate: bool,
    ) {
        let a = pack_input(x, rows, k);
        let b = pack_weight(w, k, n);
        let out_ptr = SharedOut::new(out);
        let blocks = rows.div_ceil(BLOCK_ROWS);
        (0..blocks).into_par_iter().for_each(|block| {
            let r0 = block * BLOCK_ROWS;
            let valid = BLOCK_ROWS.min(rows - r0);
            let a_block = &a[r0 * k..(r0 + BLOCK_ROWS) * k];
            if valid == BLOCK_ROWS {
                // SAFETY: rows r0 .. r0 + 32 of `out` are this task's alone and lie inside it
                // (asserted by the caller: out.len() ≥ (rows − 1) · out_rs + n).
                unsafe {
                    block_product(
                        a_block,
                        &b,
                        k,
                        n,
                        out_ptr.ptr().add(r0 * out_rs),
                        out_rs,
                        accumulate,
                    )
                };
            } else {
                // The last, partial block goes through a full-size scratch block.
                let mut scratch = vec![0f32; BLOCK_ROWS * n];
                for r in 0..valid {
                    if accumulate {
                        // SAFETY: as above, row r0 + r is this task's.
                        let row = unsafe {
                            std::slice::from_raw_parts(out_ptr.ptr().add((r0 + r) * out_rs), n)
                        };
                        scratch[r * n..(r + 1) * n].copy_from_slice(row);
                    }
                }
                // SAFETY: scratch holds 32 rows of n.
                unsafe { block_product(a_block, &b, k, n, scratch.as_mut_ptr(), n, true) };
                for r in 0..valid {
                    // SAFETY: as above.
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(out_ptr.ptr().add((r0 + r) * out_rs), n)
                    };
                    row.copy_from_slice(&scratch[r * n..(r + 1) * n]);
                }
            }
        });
    }

    /// 32 rows of the product: for each pair of 16-column blocks, four 16 × 16 f32 tiles
    /// (tmm0–3) summed over k in steps of 32 from two input tiles (tmm4, 5) and two weight
    /// tiles (tmm6, 7).
    ///
    /// # Safety
    /// The tiles must be available; `a` holds this block's two packed 16-row bands, `b` the
    /// packed weight, and `c` 32 rows of `n` f32 at stride `c_rs` that no one else touches.
    unsafe fn block_product(
        a: &[u16],
        b: &[u16],
        k: usize,
        n: usize,
        c: *mut f32,
        c_rs: usize,
        accumulate: bool,
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
        let (a0, a1) = (a.as_ptr(), a.as_ptr().add(16 * k));
        asm!("ldtilecfg [{}]", in(reg) &config as *const TileConfig, options(nostack));
        for pair in 0..n / 32 {
            let c00 = c.add(pair * 32);
            let (c01, c10, c11) = (c00.add(16), c00.add(16 * c_rs), c00.add(16 * c_rs + 16));
            if accumulate {
                asm!(
                    "tileloadd tmm0, [{c00} + {s}*1]",
                    "tileloadd tmm1, [{c01} + {s}*1]",
                    "tileloadd tmm2, [{c10} + {s}*1]",
                    "tileloadd tmm3, [{c11} + {s}*1]",
                    c00 = in(reg) c00, c01 = in(reg) c01, c10 = in(reg) c10, c11 = in(reg) c11,
                    s = in(reg) c_stride, options(nostack),
                );
            } else {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
            }
            let (b0, b1) = (
                b.as_ptr().add(2 * pair * 16 * k),
                b.as_ptr().add((2 * pair + 1) * 16 * k),
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
                    a0 = in(reg) a0.add(step * 512), a1 = in(reg) a1.add(step * 512),
                    b0 = in(reg) b0.add(step * 512), b1 = in(reg) b1.add(step * 512),
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

    /// The tile product equals the f64 product of the bf16-rounded operands (the only
    /// rounding left is f32 summation), with and without accumulation, for a row count that
    /// leaves a partial block and an output wider than the product.
    #[test]
    fn tile_product_equals_the_rounded_operands_product() {
        if !available() {
            eprintln!("skipped: no AMX tiles on this CPU (or the kernel refused them)");
            return;
        }
        let (rows, k, n, out_rs) = (45, 96, 64, 80);
        let x = values(rows * k, 1);
        let w = values(k * n, 2);
        let start = values(rows * out_rs, 3);
        for accumulate in [false, true] {
            let mut out = start.clone();
            assert!(product_bf16(
                &x,
                &w,
                (rows, k, n),
                &mut out,
                out_rs,
                accumulate
            ));
            let round = |v: f32| from_bf16(to_bf16(v)) as f64;
            for r in 0..rows {
                for j in 0..out_rs {
                    let got = out[r * out_rs + j];
                    if j >= n {
                        assert_eq!(
                            got,
                            start[r * out_rs + j],
                            "column {j} is not the product's"
                        );
                        continue;
                    }
                    let mut want: f64 = (0..k)
                        .map(|i| round(x[r * k + i]) * round(w[i * n + j]))
                        .sum();
                    if accumulate {
                        want += start[r * out_rs + j] as f64;
                    }
                    assert!(
                        (got as f64 - want).abs() < 1e-5,
                        "({r}, {j}): {got} vs {want}"
                    );
                }
            }
        }
        // Shapes the tiles cannot take are left to the caller.
        let mut out = vec![0f32; 4 * 48];
        assert!(!product_bf16(&x, &w, (4, 48, 48), &mut out, 48, false));
        assert!(out.iter().all(|&v| v == 0.0));
    }
}
