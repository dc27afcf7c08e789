//! AdamW with `torch.optim.AdamW`'s arithmetic, fused on the CPU.
//!
//! burn's `AdamW` updates a parameter in about ten tensor operations, each a full pass that
//! allocates its result: on the CPU that was 170–290 ms of a MiniLM training step (22.7 M
//! values; BENCHMARKS.md), more than the forward pass at short sequences. Here each parameter
//! is updated in one parallel pass over its values, in place, with the moments in plain vectors.
//! On any other device the same arithmetic runs as tensor operations on the device (host-side
//! moments would cross the bus every step).
//!
//! The order of operations is torch's single-tensor AdamW, in f32 with f64 scalars:
//! `θ ← θ·(1 − lr·wd)`; `m ← m + (1 − β₁)(g − m)`; `v ← v·β₂ + (1 − β₂)·g·g`;
//! `θ ← θ − (lr / (1 − β₁ᵗ))·m / (√v / √(1 − β₂ᵗ) + ε)`.
//!
//! The state is keyed by each parameter's module path (`encoder.layer.0.attention…`), so it
//! saves to and loads from a safetensors file by name.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

/// AdamW's hyper-parameters (torch's defaults: β (0.9, 0.999), ε 1e-8, weight decay 0.01).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// One parameter's moments, as many values as the parameter, flattened.
// One per parameter (a few hundred): the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Moments {
    Host {
        exp_avg: Vec<f32>,
        exp_avg_sq: Vec<f32>,
    },
    Device {
        exp_avg: Tensor<1>,
        exp_avg_sq: Tensor<1>,
    },
}

struct ParamState {
    step: u64,
    moments: Moments,
}

/// AdamW over every parameter of a module that has a gradient.
pub struct AdamW {
    settings: AdamWSettings,
    states: BTreeMap<String, ParamState>,
}

/// What could go wrong reading a saved state.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OptimizerStateError(String);

impl AdamW {
    pub fn new(settings: AdamWSettings) -> Self {
        Self {
            settings,
            states: BTreeMap::new(),
        }
    }

    /// One update of every parameter of `module` that has a gradient in `grads` (others,
    /// frozen ones included, are left as they are).
    pub fn step<M: Module>(&mut self, lr: f64, module: M, mut grads: GradientsParams) -> M {
        module.map(&mut Stepper {
            path: Vec::new(),
            grads: &mut grads,
            optimizer: self,
            lr,
        })
    }

    /// Number of parameters with a state.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether no step has been taken.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Writes the state as safetensors: `<path>.exp_avg`, `<path>.exp_avg_sq` (f32, flat) and
    /// each parameter's step count in the metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>, OptimizerStateError> {
        let mut buffers: Vec<(String, Vec<u8>)> = Vec::new();
        let mut metadata = HashMap::new();
        for (path, state) in &self.states {
            let (m, v) = match &state.moments {
                Moments::Host {
                    exp_avg,
                    exp_avg_sq,
                } => (exp_avg.clone(), exp_avg_sq.clone()),
                Moments::Device {
                    exp_avg,
                    exp_avg_sq,
                } => (
                    host_values(exp_avg.clone()),
                    host_values(exp_avg_sq.clone()),
                ),
            };
            buffers.push((format!("{path}.exp_avg"), le_bytes(&m)));
            buffers.push((format!("{path}.exp_avg_sq"), le_bytes(&v)));
            metadata.insert(format!("step:{path}"), state.step.to_string());
        }
        let views = buffers
            .iter()
            .map(|(name, bytes)| {
                let view = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    vec![bytes.len() / 4],
                    bytes,
                )
                .map_err(|e| OptimizerStateError(e.to_string()))?;
                Ok((name.clone(), view))
            })
            .collect::<Result<Vec<_>, OptimizerStateError>>()?;
        safetensors::serialize(views, Some(metadata))
            .map_err(|e| OptimizerStateError(e.to_string()))
    }

    /// Replaces the state with one written by [`to_bytes`](Self::to_bytes); the moments go to
    /// `device` (host vectors on the CPU).
    pub fn load_bytes(&mut self, bytes: &[u8], device: &Device) -> Result<(), OptimizerStateError> {
        let bad = |e: safetensors::SafeTensorError| OptimizerStateError(e.to_string());
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(bad)?;
        let tensors = safetensors::SafeTensors::deserialize(bytes).map_err(bad)?;
        let on_host = is_host(device);
        let mut states = BTreeMap::new();
        for (key, value) in header.metadata().iter().flatten() {
            let Some(path) = key.strip_prefix("step:") else {
                continue;
            };
            let step = value.parse::<u64>().map_err(|_| {
                OptimizerStateError(format!("{key}: `{value}` is not a step count"))
            })?;
            let read = |suffix: &str| -> Result<Vec<f32>, OptimizerStateError> {
                let name = format!("{path}.{suffix}");
                let view = tensors
                    .tensor(&name)
                    .map_err(|_| OptimizerStateError(format!("tensor `{name}` is missing")))?;
                if view.dtype() != safetensors::Dtype::F32 {
                    return Err(OptimizerStateError(format!("tensor `{name}` is not f32")));
                }
                Ok(view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect())
            };
            let (m, v) = (read("exp_avg")?, read("exp_avg_sq")?);
            if m.len() != v.len() {
                return Err(OptimizerStateError(format!(
                    "{path}: exp_avg has {} values, exp_avg_sq {}",
                    m.len(),
                    v.len()
                )));
            }
            let moments = if on_host {
                Moments::Host {
                    exp_avg: m,
                    exp_avg_sq: v,
                }
            } else {
                let n = m.len();
                Moments::Device {
                    exp_avg: Tensor::from_data(TensorData::new(m, [n]), device),
                    exp_avg_sq: Tensor::from_data(TensorData::new(v, [n]), device),
                }
            };
            states.insert(path.to_string(), ParamState { step, moments });
        }
        self.states = states;
        Ok(())
    }

    /// Saves to `path` (written to a temporary file, then renamed).
    pub fn save(&self, path: &Path) -> Result<(), OptimizerStateError> {
        let bytes = self.to_bytes()?;
        crate::write_atomic(path, &bytes)
            .map_err(|e| OptimizerStateError(format!("{}: {e}", path.display())))
    }

    /// Loads what [`save`](Self::save) wrote.
    pub fn load(&mut self, path: &Path, device: &Device) -> Result<(), OptimizerStateError> {
        let bytes = std::fs::read(path)
            .map_err(|e| OptimizerStateError(format!("{}: {e}", path.display())))?;
        self.load_bytes(&bytes, device)
            .map_err(|e| OptimizerStateError(format!("{}: {e}", path.display())))
    }
}

/// The CPU (flex) device, where the fused host update runs.
fn is_host(device: &Device) -> bool {
    device.clone().without_autodiff() == Device::flex()
}

fn host_values(t: Tensor<1>) -> Vec<f32> {
    f32_values(t.into_data())
}

fn f32_values(data: TensorData) -> Vec<f32> {
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32")
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The scalars of one update at step `t` (1-based), computed in f64 as Python does.
#[derive(Clone, Copy)]
struct Scalars {
    decay: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    neg_step_size: f32,
    bias_correction2_sqrt: f32,
    eps: f32,
    /// The first step: the moments are still 0.
    first: bool,
}

impl Scalars {
    fn new(s: &AdamWSettings, lr: f64, t: u64) -> Self {
        let t = t as i32;
        let bias_correction1 = 1.0 - s.beta1.powi(t);
        let bias_correction2 = 1.0 - s.beta2.powi(t);
        Self {
            decay: (1.0 - lr * s.weight_decay) as f32,
            one_minus_beta1: (1.0 - s.beta1) as f32,
            beta2: s.beta2 as f32,
            one_minus_beta2: (1.0 - s.beta2) as f32,
            neg_step_size: (-lr / bias_correction1) as f32,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
            eps: s.eps as f32,
            first: t == 1,
        }
    }
}

/// The fused update of one parameter, in parallel chunks.
fn update_host(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], k: Scalars) {
    const CHUNK: usize = 1 << 15;
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| update_chunk(p, g, m, v, k));
}

/// [`update_chunk_generic`] compiled for AVX-512 where the CPU has it: the baseline build
/// runs the update four lanes wide, and its two divisions and square root per element
/// dominated (≈ 3.5 % of a full-fine-tuning step). The same operations in the same order,
/// each exactly rounded: bit-identical results.
fn update_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: Scalars) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx2")]
        fn avx512(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: Scalars) {
            update_chunk_generic(p, g, m, v, k)
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the features were just detected.
            return unsafe { avx512(p, g, m, v, k) };
        }
    }
    update_chunk_generic(p, g, m, v, k)
}

#[inline(always)]
fn update_chunk_generic(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: Scalars) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    if k.first {
        // The moments start at 0 and are not read: their fresh zeroed pages are written
        // first. A read would map the shared zero page and the write after it copy the
        // page, with a TLB shoot-down each (≈ 9 % of a short full run).
        for i in 0..n {
            (p[i], m[i], v[i]) = element_update(p[i], g[i], 0.0, 0.0, k);
        }
    } else {
        for i in 0..n {
            (p[i], m[i], v[i]) = element_update(p[i], g[i], m[i], v[i], k);
        }
    }
}

/// `(θ, m, v)` after one AdamW step of one element.
#[inline(always)]
fn element_update(p: f32, g: f32, m: f32, v: f32, k: Scalars) -> (f32, f32, f32) {
    let theta = p * k.decay;
    // torch's lerp for a weight below 0.5: m + w·(g − m).
    let m = m + k.one_minus_beta1 * (g - m);
    let v = v * k.beta2 + k.one_minus_beta2 * g * g;
    let denom = v.sqrt() / k.bias_correction2_sqrt + k.eps;
    (theta + k.neg_step_size * m / denom, m, v)
}

/// The same update as tensor operations on the parameter's device.
fn update_device(
    param: Tensor<1>,
    grad: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    k: Scalars,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let theta = param.mul_scalar(k.decay);
    let m = m.clone() + (grad.clone() - m).mul_scalar(k.one_minus_beta1);
    let v = v.mul_scalar(k.beta2) + grad.clone().mul_scalar(k.one_minus_beta2) * grad;
    let denom = v
        .clone()
        .sqrt()
        .div_scalar(k.bias_correction2_sqrt)
        .add_scalar(k.eps);
    let theta = theta + m.clone().mul_scalar(k.neg_step_size) / denom;
    (theta, m, v)
}

struct Stepper<'a> {
    path: Vec<String>,
    grads: &'a mut GradientsParams,
    optimizer: &'a mut AdamW,
    lr: f64,
}

impl ModuleMapper for Stepper<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(grad) = self.grads.remove::<D>(param.id) else {
            return param;
        };
        let path = self.path.join(".");
        let settings = self.optimizer.settings;
        let lr = self.lr;
        let states = &mut self.optimizer.states;
        param.map(|tensor| {
            let require_grad = tensor.is_require_grad();
            let inner = tensor.inner();
            let device = inner.device();
            let shape = inner.shape();
            let n = shape.num_elements();
            let host = is_host(&device);
            let state = states.entry(path).or_insert_with(|| ParamState {
                step: 0,
                moments: if host {
                    Moments::Host {
                        exp_avg: vec![0.0; n],
                        exp_avg_sq: vec![0.0; n],
                    }
                } else {
                    Moments::Device {
                        exp_avg: Tensor::zeros([n], &device),
                        exp_avg_sq: Tensor::zeros([n], &device),
                    }
                },
            });
            state.step += 1;
            let k = Scalars::new(&settings, lr, state.step);
            let updated = match &mut state.moments {
                Moments::Host {
                    exp_avg,
                    exp_avg_sq,
                } => {
                    // Owned vectors: zero-copy when the buffers are not shared, and no
                    // per-element validity check (`as_slice` runs one, slower than AdamW).
                    let mut values = f32_values(inner.into_data());
                    let g = f32_values(grad.into_data());
                    assert_eq!(exp_avg.len(), values.len(), "AdamW state of another shape");
                    update_host(&mut values, &g, exp_avg, exp_avg_sq, k);
                    Tensor::<D>::from_data(TensorData::new(values, shape), &device)
                }
                Moments::Device {
                    exp_avg,
                    exp_avg_sq,
                } => {
                    let (theta, m, v) = update_device(
                        inner.reshape([n]),
                        grad.reshape([n]),
                        exp_avg.clone(),
                        exp_avg_sq.clone(),
                        k,
                    );
                    *exp_avg = m;
                    *exp_avg_sq = v;
                    theta.reshape(shape)
                }
            };
            let updated = Tensor::from_inner(updated);
            if require_grad {
                updated.require_grad()
            } else {
                updated
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    /// torch's single-tensor AdamW written out in f64, one element at a time.
    fn reference(theta: &mut [f64], grads: &[Vec<f64>], s: &AdamWSettings, lr: f64) {
        let (mut m, mut v) = (vec![0.0; theta.len()], vec![0.0; theta.len()]);
        for (t, g) in grads.iter().enumerate() {
            let t = (t + 1) as i32;
            for i in 0..theta.len() {
                theta[i] *= 1.0 - lr * s.weight_decay;
                m[i] = s.beta1 * m[i] + (1.0 - s.beta1) * g[i];
                v[i] = s.beta2 * v[i] + (1.0 - s.beta2) * g[i] * g[i];
                let m_hat = m[i] / (1.0 - s.beta1.powi(t));
                let v_hat = v[i] / (1.0 - s.beta2.powi(t));
                theta[i] -= lr * m_hat / (v_hat.sqrt() + s.eps);
            }
        }
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| {
                let x = (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
                let x = (x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn host_update_follows_torch_adamw() {
        let s = AdamWSettings::default();
        let lr = 1e-3;
        let n = 70_000; // more than two parallel chunks
        let init = pseudo_random(n, 1);
        // Gradients of mixed scales, some exactly zero.
        let grads: Vec<Vec<f32>> = (0..4)
            .map(|k| {
                pseudo_random(n, 10 + k)
                    .into_iter()
                    .enumerate()
                    .map(|(i, g)| {
                        if i % 97 == 0 {
                            0.0
                        } else {
                            g * 10f32.powi((i % 7) as i32 - 4)
                        }
                    })
                    .collect()
            })
            .collect();
        let (mut p, mut m, mut v) = (init.clone(), vec![0.0; n], vec![0.0; n]);
        for (t, g) in grads.iter().enumerate() {
            update_host(
                &mut p,
                g,
                &mut m,
                &mut v,
                Scalars::new(&s, lr, t as u64 + 1),
            );
        }
        let mut want: Vec<f64> = init.iter().map(|&x| f64::from(x)).collect();
        let grads64: Vec<Vec<f64>> = grads
            .iter()
            .map(|g| g.iter().map(|&x| f64::from(x)).collect())
            .collect();
        reference(&mut want, &grads64, &s, lr);
        let worst = p
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (f64::from(a) - b).abs() / (1e-3 + b.abs()))
            .fold(0.0, f64::max);
        assert!(worst < 1e-5, "relative error {worst}");
        assert!(p.iter().zip(&init).filter(|(a, b)| a != b).count() > n * 9 / 10);
    }

    #[test]
    fn device_update_equals_host_update() {
        let device = Device::flex();
        let s = AdamWSettings::default();
        let n = 5_000;
        let (mut p, mut m, mut v) = (pseudo_random(n, 3), vec![0.0; n], vec![0.0; n]);
        let tensor = |x: &[f32]| Tensor::<1>::from_data(TensorData::new(x.to_vec(), [n]), &device);
        let (mut tp, mut tm, mut tv) = (tensor(&p), tensor(&m), tensor(&v));
        for t in 1..=3 {
            let g = pseudo_random(n, 20 + t);
            let k = Scalars::new(&s, 2e-3, t);
            update_host(&mut p, &g, &mut m, &mut v, k);
            (tp, tm, tv) = update_device(tp, tensor(&g), tm, tv, k);
        }
        for (host, dev) in [(&p, tp), (&m, tm), (&v, tv)] {
            let dev = host_values(dev);
            let d = host
                .iter()
                .zip(&dev)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d <= 1e-7, "device path differs by {d}");
        }
    }

    #[test]
    fn state_saves_and_loads_to_the_same_next_step() {
        let device = Device::flex().autodiff();
        device.seed(5);
        let layer: Linear = LinearConfig::new(6, 4).init(&device);
        let x = Tensor::<2>::from_data(TensorData::new(pseudo_random(18, 9), [3, 6]), &device);
        let grads_of = |layer: &Linear| {
            let grads = layer.forward(x.clone()).powi_scalar(2).sum().backward();
            GradientsParams::from_grads(grads, layer)
        };
        let mut adamw = AdamW::new(AdamWSettings::default());
        let mut layer = layer;
        for _ in 0..2 {
            let grads = grads_of(&layer);
            layer = adamw.step(1e-2, layer, grads);
        }
        assert_eq!(adamw.len(), 2, "weight and bias");
        let bytes = adamw.to_bytes().unwrap();
        let mut restored = AdamW::new(AdamWSettings::default());
        restored.load_bytes(&bytes, &device).unwrap();

        let grads = grads_of(&layer);
        let a = adamw.step(1e-2, layer.clone(), grads);
        let grads = grads_of(&layer);
        let b = restored.step(1e-2, layer.clone(), grads);
        let values = |l: &Linear| host_values(l.weight.val().inner().reshape([24]));
        assert_eq!(values(&a), values(&b));
        assert_ne!(values(&a), values(&layer), "the step moved the weights");
        assert!(a.weight.val().is_require_grad(), "still a trainable leaf");

        let err = restored.load_bytes(&bytes[..bytes.len() - 8], &device);
        assert!(err.is_err(), "a truncated state is an error");
    }
}
