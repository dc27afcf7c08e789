//! The weight products of burn's path on CUDA through cuBLAS, as an opt-in (`DAO_CUBLAS=1`).
//!
//! burn 0.22.1's product (cubecl's matmul) runs at 10–15 % of an H200's tensor-core peak, and
//! the six weight products of each layer are most of a training step's arithmetic (BENCHMARKS.md
//! "GPU"). With the `cuda` feature and `DAO_CUBLAS=1`, [`linear`] runs `x W` (forward) and
//! `dy Wᵀ`, `xᵀ dy` (backward) through `cublasGemmEx` instead, f32 operands on the TF32 tensor
//! cores (what burn's own autotuner already chose for f32) and bf16/f16 operands with f32
//! accumulation. Anywhere else it is burn's `Linear` product unchanged.
//!
//! cubecl does not expose the CUDA stream its kernels run on, so a cuBLAS call is ordered by
//! waiting: the device's queue is drained before the call and the call finished before its
//! output is handed back (see `cuda`). Measured on an H200 (BENCHMARKS.md "GPU"), the product
//! itself runs 2.6× faster than burn's, but the waits stall burn's asynchronous queue: the
//! RoBERTa-large step is 1.10× slower with it, so it is off by default. It wins once the
//! product can be queued on cubecl's own stream.

use burn::nn::Linear;
use burn::tensor::Tensor;

/// One column-major BLAS `gemm` call (`C = op(A) op(B)`, BLAS's names) that computes the
/// row-major product `op(a) op(b)` of two contiguous row-major matrices.
///
/// A row-major `[r, c]` matrix is the column-major `[c, r]` matrix with leading dimension `c`,
/// so the row-major `C = op(a) op(b)` is the column-major `Cᵀ = op(b)ᵀ op(a)ᵀ`: BLAS's `A` is
/// our `b`, its `B` our `a`, and each transpose flag carries over unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct GemmCall {
    /// BLAS `transa`: whether our `b` is transposed.
    pub transpose_first: bool,
    /// BLAS `transb`: whether our `a` is transposed.
    pub transpose_second: bool,
    /// BLAS `m`, `n`, `k`: the columns of our output, its rows, the shared dimension.
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Leading dimensions of BLAS's `A` (our `b`), `B` (our `a`) and `C` (our output).
    pub ld_first: usize,
    pub ld_second: usize,
    pub ld_out: usize,
    /// The row-major output's `[rows, columns]`.
    pub out: [usize; 2],
}

/// The [`GemmCall`] for `op(a) op(b)`, `a` stored `[ra, ca]` and `b` `[rb, cb]`, row-major;
/// `None` when the inner dimensions differ.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn gemm_call(
    a: [usize; 2],
    transpose_a: bool,
    b: [usize; 2],
    transpose_b: bool,
) -> Option<GemmCall> {
    let (rows, inner_a) = if transpose_a {
        (a[1], a[0])
    } else {
        (a[0], a[1])
    };
    let (inner_b, columns) = if transpose_b {
        (b[1], b[0])
    } else {
        (b[0], b[1])
    };
    (inner_a == inner_b).then_some(GemmCall {
        transpose_first: transpose_b,
        transpose_second: transpose_a,
        m: columns,
        n: rows,
        k: inner_a,
        ld_first: b[1],
        ld_second: a[1],
        ld_out: columns,
        out: [rows, columns],
    })
}

/// `x W + bias` of burn's `Linear` (weight stored `[in, out]`), its product through cuBLAS on
/// a CUDA device when available (see the module's documentation), burn's `Linear::forward`
/// otherwise. Differentiable either way.
///
/// # Shapes
/// - `x`: `[..., in]`, output `[..., out]`.
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "cuda")]
    if let Some(y) = cuda::linear(layer, &x) {
        return y;
    }
    layer.forward(x)
}

/// Whether [`linear`] runs its products through cuBLAS on `device` (loading cuBLAS on first
/// use). `false` on the CPU, without the `cuda` feature, without `DAO_CUBLAS=1`, or without
/// libcublas.
pub fn cublas_products(device: &burn::tensor::Device) -> bool {
    #[cfg(feature = "cuda")]
    {
        cuda::available(device)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        false
    }
}

#[cfg(feature = "cuda")]
mod cuda;

#[cfg(test)]
mod tests {
    use super::*;

    /// A column-major `gemm` exactly as BLAS defines it, on plain slices.
    fn reference_gemm(call: &GemmCall, first: &[f32], second: &[f32], out: &mut [f32]) {
        let at = |m: &[f32], ld: usize, row: usize, col: usize| m[row + col * ld];
        for j in 0..call.n {
            for i in 0..call.m {
                let mut sum = 0.0f64;
                for l in 0..call.k {
                    let x = if call.transpose_first {
                        at(first, call.ld_first, l, i)
                    } else {
                        at(first, call.ld_first, i, l)
                    };
                    let y = if call.transpose_second {
                        at(second, call.ld_second, j, l)
                    } else {
                        at(second, call.ld_second, l, j)
                    };
                    sum += f64::from(x) * f64::from(y);
                }
                out[i + j * call.ld_out] = sum as f32;
            }
        }
    }

    /// The row-major product `op(a) op(b)`, written out directly.
    fn row_major_product(
        a: &[f32],
        a_dims: [usize; 2],
        transpose_a: bool,
        b: &[f32],
        b_dims: [usize; 2],
        transpose_b: bool,
    ) -> (Vec<f32>, [usize; 2]) {
        let get_a = |r: usize, c: usize| {
            if transpose_a {
                a[c * a_dims[1] + r]
            } else {
                a[r * a_dims[1] + c]
            }
        };
        let get_b = |r: usize, c: usize| {
            if transpose_b {
                b[c * b_dims[1] + r]
            } else {
                b[r * b_dims[1] + c]
            }
        };
        let rows = if transpose_a { a_dims[1] } else { a_dims[0] };
        let inner = if transpose_a { a_dims[0] } else { a_dims[1] };
        let columns = if transpose_b { b_dims[0] } else { b_dims[1] };
        let mut out = vec![0.0; rows * columns];
        for r in 0..rows {
            for c in 0..columns {
                out[r * columns + c] = (0..inner)
                    .map(|l| f64::from(get_a(r, l)) * f64::from(get_b(l, c)))
                    .sum::<f64>() as f32;
            }
        }
        (out, [rows, columns])
    }

    #[test]
    fn column_major_gemm_computes_the_row_major_product() {
        // The three products of a linear layer's step ([tokens, in] · [in, out] forward,
        // dy · Wᵀ and xᵀ · dy backward) and the fourth transpose pair, at odd sizes.
        let (tokens, d_in, d_out) = (5, 3, 7);
        let values = |n: usize, seed: f32| -> Vec<f32> {
            (0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect()
        };
        let cases = [
            ([tokens, d_in], false, [d_in, d_out], false),
            ([tokens, d_out], false, [d_in, d_out], true),
            ([tokens, d_in], true, [tokens, d_out], false),
            ([d_in, tokens], true, [d_out, d_in], true),
        ];
        for (a_dims, ta, b_dims, tb) in cases {
            let a = values(a_dims[0] * a_dims[1], 1.0);
            let b = values(b_dims[0] * b_dims[1], 2.0);
            let call = gemm_call(a_dims, ta, b_dims, tb).expect("matching inner dimensions");
            let (expected, dims) = row_major_product(&a, a_dims, ta, &b, b_dims, tb);
            assert_eq!(call.out, dims, "{a_dims:?} {ta} {b_dims:?} {tb}");
            let mut out = vec![f32::NAN; dims[0] * dims[1]];
            reference_gemm(&call, &b, &a, &mut out);
            for (got, want) in out.iter().zip(&expected) {
                assert!((got - want).abs() < 1e-6, "{a_dims:?} {ta} {b_dims:?} {tb}");
            }
        }
        assert_eq!(gemm_call([2, 3], false, [4, 5], false), None);
    }
}
