//! cuBLAS behind burn's CUDA tensors: one backend trait, [`DenseProduct`], implemented for
//! `CubeBackend` (the `cublasGemmEx` call), for `Fusion<CubeBackend>` (burn-cuda's default:
//! the lazy inputs resolved, the output registered) and for `Autodiff<B, C>` (the two gradient
//! products of `y = a b`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{binary, Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Cube, TensorMetadata};
use burn::nn::Linear;
use burn::tensor::{DType, Device, Tensor};
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeDevice};
use burn_dispatch::DispatchDevice;
use burn_fusion::custom::{OperationIr, OperationOutput, StreamId};
use burn_fusion::{Fusion, FusionTensor, NoOp};
use burn_ir::{BackendIr, InitOperationIr};
use cubecl::cuda::CudaRuntime;
use cudarc::cublas::{sys as cublas, CudaBlas};
use cudarc::driver::{CudaContext, CudaStream};

use super::gemm_call;

type CudaServer = <CudaRuntime as cubecl_runtime::runtime::Runtime>::Server;

/// One device's cuBLAS handle and the stream its calls run on.
struct Blas {
    stream: Arc<CudaStream>,
    handle: CudaBlas,
}

/// Whether cuBLAS may be used at all in this process: only with `DAO_CUBLAS=1` (its waits cost
/// more than its faster products save, see the parent module), and only when libcublas can be
/// loaded (it is found like any shared library: `LD_LIBRARY_PATH`).
fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        if !std::env::var("DAO_CUBLAS").is_ok_and(|v| v.trim() == "1") {
            return false;
        }
        // SAFETY: only tries to open the library under its usual names.
        let present = unsafe { cublas::is_culib_present() };
        if !present {
            tracing::warn!(
                "libcublas not found (add its folder to LD_LIBRARY_PATH): burn's own, slower \
                 products on CUDA"
            );
        }
        present
    })
}

/// Each CUDA device's cuBLAS handle, or `None` where it could not be set up.
type Handles = HashMap<usize, Option<&'static Mutex<Blas>>>;

/// The handle of CUDA device `index`, made on first use; `None` if cuBLAS is off or could
/// not be set up there (said once, then burn's products).
fn blas(index: usize) -> Option<&'static Mutex<Blas>> {
    static HANDLES: OnceLock<Mutex<Handles>> = OnceLock::new();
    if !enabled() {
        return None;
    }
    let mut handles = HANDLES.get_or_init(Default::default).lock().ok()?;
    *handles.entry(index).or_insert_with(|| {
        let made = (|| -> Result<Blas, String> {
            let context = CudaContext::new(index).map_err(|e| format!("{e:?}"))?;
            let stream = context.new_stream().map_err(|e| format!("{e:?}"))?;
            let handle = CudaBlas::new(stream.clone()).map_err(|e| format!("{e:?}"))?;
            Ok(Blas { stream, handle })
        })();
        match made {
            Ok(blas) => {
                tracing::info!("cuda:{index}: weight products through cuBLAS");
                Some(&*Box::leak(Box::new(Mutex::new(blas))))
            }
            Err(error) => {
                tracing::warn!("cuda:{index}: cuBLAS not usable ({error}): burn's own products");
                None
            }
        }
    })
}

/// See [`super::cublas_products`].
pub(super) fn available(device: &Device) -> bool {
    match device.clone().inner().as_dispatch() {
        DispatchDevice::Cube(CubeDevice::Cuda(cuda)) => blas(cuda.index).is_some(),
        _ => false,
    }
}

/// The element types cuBLAS takes here, and the arithmetic it is asked for: f32 on the TF32
/// tensor cores (burn's own autotuner runs f32 products as TF32 too), bf16 and f16 with f32
/// accumulation.
fn gemm_types(dtype: DType) -> Option<(cublas::cudaDataType, cublas::cublasComputeType_t)> {
    use cublas::cublasComputeType_t::*;
    use cublas::cudaDataType::*;
    match dtype {
        DType::F32 => Some((CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32)),
        DType::BF16 => Some((CUDA_R_16BF, CUBLAS_COMPUTE_32F)),
        DType::F16 => Some((CUDA_R_16F, CUBLAS_COMPUTE_32F)),
        _ => None,
    }
}

/// `op(a) op(b)` of two 2-D tensors, `op` a transpose where its flag is set.
pub(super) trait DenseProduct: Backend {
    fn dense_product(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        transpose_a: bool,
        transpose_b: bool,
    ) -> FloatTensor<Self>;
}

impl DenseProduct for CubeBackend {
    fn dense_product(
        a: CubeTensor,
        b: CubeTensor,
        transpose_a: bool,
        transpose_b: bool,
    ) -> CubeTensor {
        let contiguous = |t: CubeTensor| {
            if t.is_contiguous() {
                t
            } else {
                into_contiguous(t)
            }
        };
        let (a, b) = (contiguous(a), contiguous(b));
        let dims = |t: &CubeTensor| {
            let shape = t.shape();
            [shape[0], shape[1]]
        };
        let call = gemm_call(dims(&a), transpose_a, dims(&b), transpose_b)
            .unwrap_or_else(|| panic!("dense_product: {:?} × {:?}", a.shape(), b.shape()));
        let CubeDevice::Cuda(cuda) = &a.device else {
            panic!("dense_product: {:?} is not a CUDA device", a.device);
        };
        let (blas, types) = match (blas(cuda.index), gemm_types(a.dtype)) {
            (Some(blas), Some(types)) if b.dtype == a.dtype => (blas, types),
            _ => panic!(
                "dense_product: no cuBLAS for {:?} on {:?}",
                a.dtype, a.device
            ),
        };
        let client = a.client.clone();
        let out = empty_device_contiguous_dtype(
            client.clone(),
            a.device.clone(),
            call.out.into(),
            a.dtype,
        );
        if call.out.contains(&0) {
            return out;
        }
        // cubecl runs its kernels on a stream of its own that it does not expose: wait until
        // everything queued before (the writes of `a` and `b`) is done, run the product on our
        // stream, and wait for it before `out` can be read or the inputs' memory reused.
        cubecl::future::block_on(client.sync())
            .unwrap_or_else(|e| panic!("dense_product: the CUDA queue failed: {e:?}"));
        let resource = |t: &CubeTensor| {
            client
                .get_resource::<CudaServer>(t.handle.clone())
                .unwrap_or_else(|e| panic!("dense_product: no device memory: {e:?}"))
        };
        let (first, second, target) = (resource(&b), resource(&a), resource(&out));
        let operation = |transposed: bool| match transposed {
            true => cublas::cublasOperation_t::CUBLAS_OP_T,
            false => cublas::cublasOperation_t::CUBLAS_OP_N,
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        let blas = blas.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // cuBLAS works in the calling thread's current context: cubecl's (the device's primary
        // context) may be current on its own threads only.
        blas.stream
            .context()
            .bind_to_thread()
            .unwrap_or_else(|e| panic!("dense_product: no CUDA context: {e:?}"));
        let int = |n: usize| i32::try_from(n).expect("dense_product: a dimension over 2^31");
        // SAFETY: the three pointers are live device allocations of this device (held by the
        // resources until the stream is synchronised below), contiguous with the leading
        // dimensions `gemm_call` derived from their shapes; alpha and beta are f32 as the f32
        // compute types require.
        let status = unsafe {
            cublas::cublasGemmEx(
                *blas.handle.handle(),
                operation(call.transpose_first),
                operation(call.transpose_second),
                int(call.m),
                int(call.n),
                int(call.k),
                (&alpha as *const f32).cast(),
                first.resource().ptr as *const std::ffi::c_void,
                types.0,
                int(call.ld_first),
                second.resource().ptr as *const std::ffi::c_void,
                types.0,
                int(call.ld_second),
                (&beta as *const f32).cast(),
                target.resource().ptr as *mut std::ffi::c_void,
                types.0,
                int(call.ld_out),
                types.1,
                cublas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        assert_eq!(
            status,
            cublas::cublasStatus_t::CUBLAS_STATUS_SUCCESS,
            "cublasGemmEx {call:?}"
        );
        blas.stream
            .synchronize()
            .unwrap_or_else(|e| panic!("dense_product: cuBLAS's stream failed: {e:?}"));
        drop((first, second, target));
        out
    }
}

impl DenseProduct for Fusion<CubeBackend> {
    fn dense_product(
        a: FusionTensor<FusionCubeRuntime>,
        b: FusionTensor<FusionCubeRuntime>,
        transpose_a: bool,
        transpose_b: bool,
    ) -> FusionTensor<FusionCubeRuntime> {
        let client = a.client.clone();
        let a = client.resolve_tensor_float::<CubeBackend>(a);
        let b = client.resolve_tensor_float::<CubeBackend>(b);
        let out = CubeBackend::dense_product(a, b, transpose_a, transpose_b);
        let (shape, dtype) = (out.shape(), out.dtype());
        let handle = <CubeBackend as BackendIr>::float_tensor_handle(out);
        let init = InitOperationIr::create(shape, dtype, || client.register_tensor_handle(handle));
        client
            .register(
                StreamId::current(),
                OperationIr::Init(init),
                NoOp::<CubeBackend>::new(),
            )
            .output()
    }
}

/// The backward of `y = a b`: `da = dy bᵀ`, `db = aᵀ dy` (each input saved only if the other's
/// gradient needs it).
#[derive(Debug)]
struct ProductBackward;

impl<B: DenseProduct> Backward<B, 2> for ProductBackward {
    type State = (Option<NodeId>, Option<NodeId>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let (a, b) = ops.state;
        let a: Option<FloatTensor<B>> = a.map(|id| checkpointer.retrieve_node_output(id));
        let b: Option<FloatTensor<B>> = b.map(|id| checkpointer.retrieve_node_output(id));
        binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |grad| B::dense_product(grad, b.expect("b saved for a's gradient"), false, true),
            |grad| B::dense_product(a.expect("a saved for b's gradient"), grad, true, false),
        );
    }
}

impl<B: DenseProduct, C: CheckpointStrategy> DenseProduct for Autodiff<B, C> {
    fn dense_product(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        transpose_a: bool,
        transpose_b: bool,
    ) -> FloatTensor<Self> {
        assert!(
            !transpose_a && !transpose_b,
            "the differentiable product takes its operands as they are"
        );
        let (a_tracked, b_tracked) = (a.is_tracked(), b.is_tracked());
        match ProductBackward
            .prepare::<C>([a.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let a_saved = b_tracked.then(|| prep.checkpoint(&a));
                let b_saved = a_tracked.then(|| prep.checkpoint(&b));
                let out = B::dense_product(a.into_primitive(), b.into_primitive(), false, false);
                prep.finish((a_saved, b_saved), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::dense_product(
                a.into_primitive(),
                b.into_primitive(),
                false,
                false,
            )),
        }
    }
}

/// Whether cuBLAS serves a tensor on `device` (a CUDA device) in `dtype`.
fn served(device: &CubeDevice, dtype: DType) -> bool {
    match device {
        CubeDevice::Cuda(cuda) => gemm_types(dtype).is_some() && blas(cuda.index).is_some(),
        _ => false,
    }
}

/// `a b` through cuBLAS when both live on a CUDA device it serves (autodiff or not); `None`
/// otherwise.
fn product(a: &Tensor<2>, b: &Tensor<2>) -> Option<Tensor<2>> {
    if !enabled() || a.dtype() != b.dtype() {
        return None;
    }
    if let (Ok(a), Ok(b)) = (
        a.clone().try_into_primitive::<Autodiff<Cube>>(),
        b.clone().try_into_primitive::<Autodiff<Cube>>(),
    ) {
        if !served(&a.device(), a.dtype()) {
            return None;
        }
        let y = Autodiff::<Cube>::dense_product(a, b, false, false);
        return Some(Tensor::from_primitive::<Autodiff<Cube>>(y));
    }
    if let (Ok(a), Ok(b)) = (
        a.clone().try_into_primitive::<Cube>(),
        b.clone().try_into_primitive::<Cube>(),
    ) {
        if !served(&a.device(), a.dtype()) {
            return None;
        }
        let y = Cube::dense_product(a, b, false, false);
        return Some(Tensor::from_primitive::<Cube>(y));
    }
    None
}

/// See [`super::linear`]: `None` where cuBLAS does not serve `x`.
pub(super) fn linear<const D: usize>(layer: &Linear, x: &Tensor<D>) -> Option<Tensor<D>> {
    let dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let weight = layer.weight.val();
    let d_out = weight.dims()[1];
    let y = product(&x.clone().reshape([rows, d_in]), &weight)?;
    let mut out_dims = dims;
    out_dims[D - 1] = d_out;
    let y = y.reshape(out_dims);
    Some(match &layer.bias {
        Some(bias) => y + bias.val().unsqueeze::<D>(),
        None => y,
    })
}
