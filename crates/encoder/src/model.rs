//! The BERT/RoBERTa transformer encoder as burn modules. Field names follow the Hugging Face
//! classes (`embeddings`, `encoder.layer.N.attention.self_attention.query`, …) so checkpoint keys
//! map onto them with a short remapping table (see `loader.rs`).

use crate::gpu_products::linear as linear_product;
use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, LinearConfig,
};
use burn::tensor::activation::{gelu, gelu_approximate, relu, silu, softmax};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use lora::LoraLinear;
use rayon::prelude::*;

use crate::config::{EncoderConfig, HiddenAct, ModelFamily};
use crate::{cpu_inference, fastmath};

/// One padded batch of token ids, as the encoder takes it.
///
/// # Shapes
/// - `input_ids`, `attention_mask`, `token_type_ids`: `[batch, seq]` (mask: 1 real, 0 pad).
#[derive(Debug, Clone)]
pub struct EncoderInput {
    pub input_ids: Tensor<2, Int>,
    pub attention_mask: Tensor<2, Int>,
    pub token_type_ids: Tensor<2, Int>,
}

/// What the encoder returns.
///
/// # Shapes
/// - `last_hidden_state`: `[batch, seq, hidden]`
/// - `first_token`: `[batch, hidden]`, the state of `<s>` / `[CLS]` (the paper's H).
#[derive(Debug, Clone)]
pub struct EncoderOutput {
    pub last_hidden_state: Tensor<3>,
    pub first_token: Tensor<2>,
}

/// Word, position and token-type embeddings, summed and normalised.
#[derive(Module, Debug)]
pub struct Embeddings {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub token_type_embeddings: Embedding,
    pub layer_norm: LayerNorm,
    dropout: Dropout,
    #[module(skip)]
    family: ModelFamily,
    #[module(skip)]
    pad_token_id: usize,
}

impl Embeddings {
    fn new(config: &EncoderConfig, device: &Device) -> Self {
        Self {
            word_embeddings: EmbeddingConfig::new(config.vocab_size, config.hidden_size)
                .init(device),
            position_embeddings: EmbeddingConfig::new(
                config.max_position_embeddings,
                config.hidden_size,
            )
            .init(device),
            token_type_embeddings: EmbeddingConfig::new(
                config.type_vocab_size.max(1),
                config.hidden_size,
            )
            .init(device),
            layer_norm: LayerNormConfig::new(config.hidden_size)
                .with_epsilon(config.layer_norm_eps)
                .init(device),
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            family: config.family(),
            pad_token_id: config.pad_token_id,
        }
    }

    /// Position ids: RoBERTa counts the non-pad tokens and starts after `padding_idx`
    /// (`cumsum(ids != pad) * (ids != pad) + pad`), so pads get `padding_idx`; BERT uses
    /// `0..seq`.
    fn position_ids(&self, input_ids: &Tensor<2, Int>) -> Tensor<2, Int> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        match self.family {
            ModelFamily::Roberta => {
                let not_pad = input_ids
                    .clone()
                    .not_equal_elem(self.pad_token_id as i64)
                    .int();
                not_pad.clone().cumsum(1) * not_pad + self.pad_token_id as i64
            }
            ModelFamily::Bert => Tensor::<1, Int>::arange(0..seq as i64, &device)
                .unsqueeze::<2>()
                .expand([batch, seq]),
        }
    }

    fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Tensor<2, Int>,
        masks: &mut DropoutMasks,
    ) -> Tensor<3> {
        let positions = self.position_ids(&input_ids);
        let word = self.word_embeddings.forward(input_ids);
        self.add_and_normalize(word, positions, token_type_ids, masks)
    }

    /// The looked-up words plus the token-type and position embeddings, then LayerNorm and
    /// dropout.
    fn add_and_normalize(
        &self,
        word: Tensor<3>,
        positions: Tensor<2, Int>,
        token_type_ids: Tensor<2, Int>,
        masks: &mut DropoutMasks,
    ) -> Tensor<3> {
        let x = word
            + self.token_type_embeddings.forward(token_type_ids)
            + self.position_embeddings.forward(positions);
        masks.apply(&self.dropout, self.layer_norm.forward(x))
    }

    /// [`forward`](Self::forward) on the host, `[batch·seq, hidden]` row-major, for a CPU
    /// training step whose embeddings do not train (LoRA): the same mask from the same place
    /// in the stream, the LayerNorm as the layers' ([`fastmath::add_and_normalize`]). burn's
    /// operations ran these passes on one thread while the other core waited (≈ 1 % of a
    /// MiniLM LoRA step, BENCHMARKS.md "Sixteenth session"). `None` (nothing drawn) where an
    /// id is past its table: [`forward`](Self::forward) then says what burn says.
    pub(crate) fn forward_on_host(
        &self,
        input_ids: &Tensor<2, Int>,
        token_type_ids: &Tensor<2, Int>,
        epsilon: f64,
        masks: &mut DropoutMasks,
    ) -> Option<Vec<f32>> {
        let [batch, seq] = input_ids.dims();
        let ints = |t: &Tensor<2, Int>| {
            t.clone()
                .into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .ok()
        };
        let (ids, types) = (ints(input_ids)?, ints(token_type_ids)?);
        let positions = ints(&self.position_ids(input_ids))?;
        let word = cpu_inference::host_view(self.word_embeddings.weight.val());
        let position = cpu_inference::host_view(self.position_embeddings.weight.val());
        let token_type = cpu_inference::host_view(self.token_type_embeddings.weight.val());
        let gamma = cpu_inference::host_view(self.layer_norm.gamma.val());
        let hidden = gamma.len();
        fn row_of(table: &[f32], id: i64, hidden: usize) -> Option<&[f32]> {
            let start = usize::try_from(id).ok()?.checked_mul(hidden)?;
            table.get(start..start.checked_add(hidden)?)
        }
        let in_range =
            |table: &[f32], ids: &[i64]| ids.iter().all(|&id| row_of(table, id, hidden).is_some());
        if !(in_range(&word, &ids)
            && in_range(&token_type, &types)
            && in_range(&position, &positions))
        {
            return None;
        }
        let beta = match &self.layer_norm.beta {
            Some(beta) => cpu_inference::host_view(beta.val()).to_vec(),
            None => vec![0.0; hidden],
        };
        let epsilon = epsilon as f32;
        let n = batch * seq * hidden;
        let keep = masks.host_keep_lazy(&self.dropout, n);
        let mut out = fastmath::zeros(n);
        out.par_chunks_mut(hidden)
            .enumerate()
            .for_each_init(Vec::new, |bytes, (i, row)| {
                let [word, token_type, position] = [
                    row_of(&word, ids[i], hidden),
                    row_of(&token_type, types[i], hidden),
                    row_of(&position, positions[i], hidden),
                ]
                .map(|row| row.expect("checked above"));
                // burn's order: (word + token type) + position, then LayerNorm, then dropout.
                for ((v, w), t) in row.iter_mut().zip(word).zip(token_type) {
                    *v = w + t;
                }
                let mut inv_std = 0.0;
                fastmath::add_and_normalize(
                    row,
                    position,
                    &gamma,
                    &beta,
                    epsilon,
                    &mut [],
                    &mut inv_std,
                );
                if let Some(keep) = keep {
                    bytes.resize(hidden, 0);
                    keep.fill(i * hidden, bytes);
                    fastmath::mask_scale(row, bytes, keep.scale);
                }
            });
        Some(out)
    }

    /// [`forward`](Self::forward) for the fused training path: when the word table trains,
    /// its lookup enters the graph as a leaf (returned), whose gradient the caller scatters
    /// into the table itself. burn's backward of the lookup held two table-sized buffers at
    /// the step's peak (≈ 280 MiB for roberta-base); the scatter needs one.
    pub(crate) fn forward_word_leaf(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Tensor<2, Int>,
        masks: &mut DropoutMasks,
    ) -> (Tensor<3>, Option<Tensor<3>>) {
        let table = &self.word_embeddings.weight;
        if !table.val().is_require_grad() {
            return (self.forward(input_ids, token_type_ids, masks), None);
        }
        let positions = self.position_ids(&input_ids);
        // Looked up off the graph, then a leaf of it.
        let word = Tensor::from_inner(burn::tensor::module::embedding(
            table.val().inner(),
            input_ids.inner(),
        ))
        .require_grad();
        (
            self.add_and_normalize(word.clone(), positions, token_type_ids, masks),
            Some(word),
        )
    }
}

/// Multi-head self-attention (`attention.self` in Hugging Face checkpoints).
#[derive(Module, Debug)]
pub struct SelfAttention {
    pub query: LoraLinear,
    pub key: LoraLinear,
    pub value: LoraLinear,
    pub(crate) dropout: Dropout,
    #[module(skip)]
    heads: usize,
}

impl SelfAttention {
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`; `mask_bias`: `[batch, 1, 1, seq]`, 0 or a large negative
    ///   (`None`: no padded key in the batch).
    fn forward(
        &self,
        x: Tensor<3>,
        mask_bias: Option<Tensor<4>>,
        masks: &mut DropoutMasks,
    ) -> Tensor<3> {
        let [batch, seq, hidden] = x.dims();
        let head_dim = hidden / self.heads;
        let split = |t: Tensor<3>| {
            t.reshape([batch, seq, self.heads, head_dim])
                .swap_dims(1, 2)
        };
        let q = self
            .query
            .forward_through(x.clone(), |d, t| masks.apply(d, t), linear_product);
        let k = split(self.key.forward_through(
            x.clone(),
            |d, t| masks.apply(d, t),
            linear_product,
        ));
        let v = split(
            self.value
                .forward_through(x, |d, t| masks.apply(d, t), linear_product),
        );
        let context = if masks.active(&self.dropout) {
            // Scaling q ([b, s, d]) rather than the scores ([b, h, s, s]) touches 1/4 of the
            // values at seq 128, and HF's sdpa path scales q·kᵀ the same way up to rounding.
            let q = split(q.mul_scalar(1.0 / (head_dim as f64).sqrt()));
            let scores = q.matmul(k.transpose());
            let scores = match mask_bias {
                Some(bias) => scores + bias,
                None => scores,
            };
            let probs = masks.apply(&self.dropout, softmax(scores, 3));
            probs.matmul(v)
        } else {
            // No dropout on the probabilities: burn's fused attention (scale 1/√head_dim)
            // keeps no [b, h, s, s] tensor. On an autodiff device burn decomposes it again.
            let bias = mask_bias.map(|bias| bias.expand([batch, 1, seq, seq]));
            attention(
                split(q),
                k,
                v,
                None,
                bias,
                AttentionModuleOptions::default(),
            )
        };
        context.swap_dims(1, 2).reshape([batch, seq, hidden])
    }
}

/// The projection after attention, with its residual and LayerNorm (`attention.output`), and
/// likewise after the feed-forward block (`output`).
#[derive(Module, Debug)]
pub struct ResidualOutput {
    pub dense: LoraLinear,
    pub layer_norm: LayerNorm,
    pub(crate) dropout: Dropout,
}

impl ResidualOutput {
    fn new(d_in: usize, config: &EncoderConfig, device: &Device) -> Self {
        Self {
            dense: linear(d_in, config.hidden_size, device),
            layer_norm: LayerNormConfig::new(config.hidden_size)
                .with_epsilon(config.layer_norm_eps)
                .init(device),
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
        }
    }

    fn forward(&self, x: Tensor<3>, residual: Tensor<3>, masks: &mut DropoutMasks) -> Tensor<3> {
        let projected = self
            .dense
            .forward_through(x, |d, t| masks.apply(d, t), linear_product);
        self.layer_norm
            .forward(masks.apply(&self.dropout, projected) + residual)
    }
}

/// Self-attention and its output block.
#[derive(Module, Debug)]
pub struct Attention {
    pub self_attention: SelfAttention,
    pub output: ResidualOutput,
}

/// The feed-forward expansion (`intermediate`).
#[derive(Module, Debug)]
pub struct Intermediate {
    pub dense: LoraLinear,
    #[module(skip)]
    act: HiddenAct,
}

impl Intermediate {
    fn forward(&self, x: Tensor<3>, masks: &mut DropoutMasks) -> Tensor<3> {
        let x = self
            .dense
            .forward_through(x, |d, t| masks.apply(d, t), linear_product);
        match self.act {
            HiddenAct::Gelu if masks.seed.is_some() && !masks.on_device => gelu_parallel_train(x),
            HiddenAct::Gelu => gelu(x),
            HiddenAct::GeluTanh => gelu_approximate(x),
            HiddenAct::Relu => relu(x),
            HiddenAct::Silu => silu(x),
        }
    }
}

/// One transformer layer (`encoder.layer.N`).
#[derive(Module, Debug)]
pub struct Layer {
    pub attention: Attention,
    pub intermediate: Intermediate,
    pub output: ResidualOutput,
}

impl Layer {
    fn new(config: &EncoderConfig, device: &Device) -> Self {
        let hidden = config.hidden_size;
        let dropout = |p| DropoutConfig::new(p).init();
        Self {
            attention: Attention {
                self_attention: SelfAttention {
                    query: linear(hidden, hidden, device),
                    key: linear(hidden, hidden, device),
                    value: linear(hidden, hidden, device),
                    dropout: dropout(config.attention_probs_dropout_prob),
                    heads: config.num_attention_heads,
                },
                output: ResidualOutput::new(hidden, config, device),
            },
            intermediate: Intermediate {
                dense: linear(hidden, config.intermediate_size, device),
                act: config.hidden_act,
            },
            output: ResidualOutput::new(config.intermediate_size, config, device),
        }
    }

    fn forward(
        &self,
        x: Tensor<3>,
        mask_bias: Option<Tensor<4>>,
        masks: &mut DropoutMasks,
    ) -> Tensor<3> {
        let attended = self
            .attention
            .self_attention
            .forward(x.clone(), mask_bias, masks);
        let x = self.attention.output.forward(attended, x, masks);
        let expanded = self.intermediate.forward(x.clone(), masks);
        self.output.forward(expanded, x, masks)
    }
}

/// The stack of layers (`encoder` in Hugging Face checkpoints).
#[derive(Module, Debug)]
pub struct LayerStack {
    pub layer: Vec<Layer>,
}

/// A BERT or RoBERTa encoder: embeddings then `num_hidden_layers` transformer layers.
#[derive(Module, Debug)]
pub struct Encoder {
    pub embeddings: Embeddings,
    pub encoder: LayerStack,
    #[module(skip)]
    config: EncoderConfig,
    #[module(skip)]
    products: ProductPrecision,
    /// The training step's transposed copies of frozen attention weights (shared by clones).
    #[module(skip)]
    frozen_transposes: crate::cpu_training::FrozenTransposes,
}

/// How the fused CPU paths (inference and the training step) multiply by the encoder's weight
/// matrices.
///
/// `Bf16` rounds both operands of each projection's products (forward, and in training the
/// input and weight gradients) to bf16 and sums in f32 on AMX tiles (Intel Sapphire Rapids and
/// later, Linux): ≈ 2–3× the f32 product rate there, at bf16's precision (8 significant bits;
/// its effect on the validation metrics is measured in BENCHMARKS.md). Where there are no
/// tiles but AVX-512 BF16 (AMD Zen 4 and later), on `vdpbf16ps` (twice an f32 FMA's
/// multiply-adds an instruction), where a start-up race finds it faster than f32 FMAs on this
/// CPU. Where neither runs ([`bf16_products_available`] is false), on other devices, and for
/// the attention scores, the LoRA factors and everything outside the products, it stays f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProductPrecision {
    /// f32 products: Hugging Face's numbers to float rounding (the default).
    #[default]
    F32,
    /// bf16 operands, f32 sums, where the CPU has AMX tiles or AVX-512 BF16.
    Bf16,
}

/// Whether this CPU (and OS) run [`ProductPrecision::Bf16`]'s products in bf16 (false
/// elsewhere: the products then stay f32).
pub fn bf16_products_available() -> bool {
    crate::amx::available()
}

/// The instructions [`ProductPrecision::Bf16`]'s products run on here: `"amx"` (AMX tiles),
/// `"avx512-bf16"` (`vdpbf16ps`), or `None` (they stay f32). `DAO_BF16_KERNEL=vector` picks
/// `vdpbf16ps` where both are present (for timing one against the other).
pub fn bf16_products_kernel() -> Option<&'static str> {
    crate::amx::kernel().map(crate::amx::Kernel::name)
}

/// The dropout masks of one forward pass.
///
/// burn's `Dropout` samples one Bernoulli `f32` per element through a generic sampler on one
/// thread, then multiplies twice (by the 0/1 mask, then by `1/keep`): in `perf` of a MiniLM
/// training step the sampling alone was ≈ 13 % of the time (BENCHMARKS.md). Here the masks come
/// from a counter-based hash (SplitMix64 finaliser, two 32-bit draws per hash) seeded once per
/// forward from the device's RNG (so `device.seed` still makes runs repeatable), hold `0` or
/// `1/keep` directly and are applied with one multiplication. Same distribution: an element is
/// kept with probability `keep` (to 2⁻³²) and scaled by `1/keep`, as burn does.
///
/// Only on the CPU (flex) device: on a GPU, host-made masks would cross the bus every step (the
/// attention-probability masks alone are `batch·heads·seq²` values per layer), so there burn's
/// `Dropout` samples them on the device itself.
pub(crate) struct DropoutMasks {
    /// `None` off the autodiff device (inference): no dropout, no seed drawn.
    pub(crate) seed: Option<u64>,
    /// Hashes used so far this forward: each mask reads a fresh range of the stream.
    counter: u64,
    /// Masks are drawn by burn on the device (any device but the CPU).
    pub(crate) on_device: bool,
}

/// Whether the CPU inference path (`cpu_inference.rs`) runs the layers: the CPU without
/// autodiff (no dropout, no graph).
fn fused_inference_applies(device: &Device) -> bool {
    !device.is_autodiff() && *device == Device::flex()
}

impl DropoutMasks {
    pub(crate) fn new(device: &Device) -> Self {
        let on_device = device.clone().without_autodiff() != Device::flex();
        if on_device {
            return Self {
                seed: device.is_autodiff().then_some(0),
                counter: 0,
                on_device,
            };
        }
        let seed = device.is_autodiff().then(|| {
            // 3 × 21 random bits from the device's (seeded) RNG; exact in f32.
            let draws = Tensor::<1>::random([3], Distribution::Uniform(0.0, 1.0), device)
                .into_data()
                .try_into_vec::<f32>()
                .unwrap_or_default();
            draws.iter().fold(0u64, |seed, &u| {
                (seed << 21) ^ ((u.clamp(0.0, 1.0) * (1u64 << 21) as f32) as u64)
            })
        });
        Self {
            seed,
            counter: 0,
            on_device,
        }
    }

    /// Whether `dropout` changes anything in this forward.
    pub(crate) fn active(&self, dropout: &Dropout) -> bool {
        self.seed.is_some() && dropout.training.is_enabled() && dropout.prob > 0.0
    }

    /// `dropout(x)` with `dropout`'s probability, when it is active (training flag on, autodiff
    /// device, `p > 0`), else `x` unchanged.
    pub(crate) fn apply<const D: usize>(&mut self, dropout: &Dropout, x: Tensor<D>) -> Tensor<D> {
        if self.on_device {
            return if self.active(dropout) {
                dropout.forward(x)
            } else {
                x
            };
        }
        let shape = x.shape();
        match self.host_mask(dropout, shape.num_elements()) {
            Some(mask) => {
                let mask = Tensor::<D>::from_data(TensorData::new(mask, shape), &x.device());
                x * mask
            }
            None => x,
        }
    }

    /// The next `n` values of the mask stream for `dropout` (each `0` or `1/keep`), when it is
    /// active on the CPU.
    fn host_mask(&mut self, dropout: &Dropout, n: usize) -> Option<Vec<f32>> {
        let (keep, scale) = self.host_keep(dropout, n)?;
        Some(
            keep.iter()
                .map(|&k| if k != 0 { scale } else { 0.0 })
                .collect(),
        )
    }

    /// [`host_mask`](Self::host_mask) as one byte per element (1: kept) and the scale `1/keep`:
    /// the fused training path stores its masks this way (a quarter of the memory) and draws
    /// them here, in the burn path's order, so both paths see the same masks.
    pub(crate) fn host_keep(&mut self, dropout: &Dropout, n: usize) -> Option<(Vec<u8>, f32)> {
        let lazy = self.host_keep_lazy(dropout, n)?;
        Some((lazy.bytes(n), lazy.scale))
    }

    /// The mask [`host_keep`](Self::host_keep) would draw, left undrawn: its place in the
    /// stream, from which any part of it can be made where it is used ([`LazyKeep::fill`]),
    /// with the same bytes. The stream moves on as if it had been drawn.
    pub(crate) fn host_keep_lazy(&mut self, dropout: &Dropout, n: usize) -> Option<LazyKeep> {
        let seed = self
            .seed
            .filter(|_| self.active(dropout) && !self.on_device)?;
        let base = self.counter;
        self.counter += n.div_ceil(2) as u64;
        Some(LazyKeep::new(seed, base, dropout.prob))
    }
}

/// A dropout mask as a function of the element's index: element pair `i` is decided by hash
/// `base + i` of the seed's stream (its low and high 32 bits), so any range of the mask can
/// be made on its own, on any thread, and made again in the backward instead of kept.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LazyKeep {
    seed: u64,
    base: u64,
    threshold: u64,
    /// What a kept element is multiplied by, `1 / (1 − p)`.
    pub(crate) scale: f32,
    /// `(row length, step)`: this mask is every `step`-th row of the stream's (see
    /// [`every_row`](Self::every_row)).
    rows: Option<(usize, usize)>,
}

impl LazyKeep {
    /// Hashes `base, base + 1, …` of `seed`'s stream, dropping with probability `prob`.
    pub(crate) fn new(seed: u64, base: u64, prob: f64) -> Self {
        let keep = 1.0 - prob;
        Self {
            seed,
            base,
            // Keep iff a uniform 32-bit draw is below keep · 2³².
            threshold: (keep * 4_294_967_296.0) as u64,
            scale: (1.0 / keep) as f32,
            rows: None,
        }
    }

    /// The mask of rows `0, step, 2·step, …` of this one, its rows `row_len` elements long:
    /// element `e` is this mask's element `(e / row_len) · step · row_len + e % row_len`. A
    /// layer run for each sequence's first token only draws the masks of the whole batch and
    /// keeps these rows, so its values are those of the whole layer's first tokens. A `step`
    /// of 1 picks every row: the mask itself.
    pub(crate) fn every_row(self, row_len: usize, step: usize) -> Self {
        if step == 1 {
            return self;
        }
        assert!(
            self.rows.is_none() && row_len > 0,
            "a mask's rows are picked once"
        );
        Self {
            rows: Some((row_len, step)),
            ..self
        }
    }

    /// The keep bytes of elements `0 .. n`, made in parallel chunks.
    pub(crate) fn bytes(&self, n: usize) -> Vec<u8> {
        let mut keep = vec![0u8; n];
        const CHUNK: usize = 1 << 15; // elements, even
        keep.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| self.fill(c * CHUNK, chunk));
        keep
    }

    /// The keep bits of elements `first .. first + 16 · bits.len()`, sixteen to a `u16` (bit
    /// `i` of `bits[c]` for element `first + 16c + i`): [`fill`](Self::fill)'s bytes, packed.
    /// `first`, and a picked row's length ([`every_row`](Self::every_row)), multiples of 16.
    pub(crate) fn fill_bits(&self, first: usize, bits: &mut [u16]) {
        assert!(first.is_multiple_of(16), "whole words of bits");
        if let Some((row_len, step)) = self.rows {
            assert!(row_len.is_multiple_of(16), "rows of whole words of bits");
            let whole = Self {
                rows: None,
                ..*self
            };
            let (mut done, total) = (0, 16 * bits.len());
            while done < total {
                let (row, column) = ((first + done) / row_len, (first + done) % row_len);
                let n = (row_len - column).min(total - done);
                whole.fill_bits(
                    row * step * row_len + column,
                    &mut bits[done / 16..(done + n) / 16],
                );
                done += n;
            }
            return;
        }
        let pair = self.base + (first / 2) as u64;
        fastmath::dropout_keep_bits(bits, self.seed, pair, self.threshold);
    }

    /// The keep bytes (1: kept) of elements `first .. first + keep.len()`.
    pub(crate) fn fill(&self, first: usize, keep: &mut [u8]) {
        if let Some((row_len, step)) = self.rows {
            let whole = Self {
                rows: None,
                ..*self
            };
            let mut done = 0;
            while done < keep.len() {
                let (row, column) = ((first + done) / row_len, (first + done) % row_len);
                let n = (row_len - column).min(keep.len() - done);
                whole.fill(row * step * row_len + column, &mut keep[done..done + n]);
                done += n;
            }
            return;
        }
        let pair = self.base + (first / 2) as u64;
        if first.is_multiple_of(2) {
            return fastmath::dropout_keep(keep, self.seed, pair, self.threshold);
        }
        let Some((head, rest)) = keep.split_first_mut() else {
            return;
        };
        // An odd first element is the high half of its pair.
        let mut both = [0u8; 2];
        fastmath::dropout_keep(&mut both, self.seed, pair, self.threshold);
        *head = both[1];
        fastmath::dropout_keep(rest, self.seed, pair + 1, self.threshold);
    }
}

/// GELU for training on the CPU (autodiff): the value and the derivative in one parallel,
/// vectorised pass ([`fastmath`]), the derivative attached as the gradient by
/// `y = gelu(x) + (x − x.detach()) · gelu'(x)`: the second term is exactly 0 in value and has
/// gradient `gelu'(x)`. burn computes both with scalar `erff` on one thread (≈ 8 % of a MiniLM
/// step's CPU time in `erff` alone).
fn gelu_parallel_train(x: Tensor<3>) -> Tensor<3> {
    let device = x.device();
    let shape = x.shape();
    let mut values = x
        .clone()
        .detach()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32");
    let mut derivative = vec![0f32; values.len()];
    values
        .par_chunks_mut(1 << 14)
        .zip(derivative.par_chunks_mut(1 << 14))
        .for_each(|(v, d)| fastmath::gelu_with_derivative_slice(v, d));
    let value = Tensor::<3>::from_data(TensorData::new(values, shape.clone()), &device);
    let derivative = Tensor::<3>::from_data(TensorData::new(derivative, shape), &device);
    value + (x.clone() - x.detach()) * derivative
}

/// Added to the attention scores of padded keys; exp() of it underflows to exactly 0.
const MASKED_SCORE: f64 = -1e30;

fn linear(d_in: usize, d_out: usize, device: &Device) -> LoraLinear {
    LoraLinear::new(LinearConfig::new(d_in, d_out).init(device))
}

impl Encoder {
    /// A randomly initialised encoder of the given shape (weights are loaded over it).
    pub fn new(config: &EncoderConfig, device: &Device) -> Self {
        Self {
            embeddings: Embeddings::new(config, device),
            encoder: LayerStack {
                layer: (0..config.num_hidden_layers)
                    .map(|_| Layer::new(config, device))
                    .collect(),
            },
            config: config.clone(),
            products: ProductPrecision::F32,
            frozen_transposes: Default::default(),
        }
    }

    /// The configuration this encoder was built from.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// The transposed frozen weights the CPU training step keeps across steps.
    pub(crate) fn frozen_transposes(&self) -> &crate::cpu_training::FrozenTransposes {
        &self.frozen_transposes
    }

    /// The precision of the weight products on the CPU ([`ProductPrecision`]).
    pub fn product_precision(&self) -> ProductPrecision {
        self.products
    }

    /// Chooses the precision of the weight products in CPU inference and in the CPU training
    /// step ([`forward_train`](Self::forward_train)); other devices are unaffected.
    pub fn set_product_precision(&mut self, precision: ProductPrecision) {
        self.products = precision;
    }

    /// The embeddings for the fused training path ([`Embeddings::forward_word_leaf`]),
    /// drawing their dropout mask from `masks`.
    pub(crate) fn embeddings_forward_train(
        &self,
        input: EncoderInput,
        masks: &mut DropoutMasks,
    ) -> (Tensor<3>, Option<Tensor<3>>) {
        self.embeddings
            .forward_word_leaf(input.input_ids, input.token_type_ids, masks)
    }

    /// For a training step on the CPU: the layers' forward by hand (`cpu_training.rs`), `H` as
    /// a fresh autodiff leaf, and the tape whose [`backward`](crate::TrainTape::backward) turns
    /// `∂L/∂H` into the encoder's parameter gradients. Same function, masks and gradients as
    /// [`forward`](Self::forward) through burn's autodiff, about twice as fast (BENCHMARKS.md).
    /// `None` off the CPU's autodiff device or for activations other than GELU: use `forward`.
    pub fn forward_train(&self, input: EncoderInput) -> Option<(Tensor<2>, crate::TrainTape)> {
        crate::cpu_training::forward(self, input)
    }

    /// Runs the encoder. Dropout is active only on a training (autodiff) copy.
    ///
    /// For inference on the CPU the layers run through a hand-fused path (`cpu_inference.rs`,
    /// the same function to float rounding, several times faster); everywhere else, and in
    /// [`forward_unfused`](Self::forward_unfused), through burn's operations.
    pub fn forward(&self, input: EncoderInput) -> EncoderOutput {
        self.forward_inner(input, true)
    }

    /// `H`, each sequence's first-token state (`forward(input).first_token`): all the heads
    /// read. On the CPU without autodiff the last layer runs for the first tokens only (its
    /// other rows reach nothing of `H`: 14 % of MiniLM's layer products saved), elsewhere
    /// it is [`forward`](Self::forward).
    pub fn first_token(&self, input: EncoderInput) -> Tensor<2> {
        let device = input.input_ids.device();
        if !fused_inference_applies(&device) {
            return self.forward(input).first_token;
        }
        let mut masks = DropoutMasks::new(&device);
        let embedded = self.embeddings.forward(
            input.input_ids.clone(),
            input.token_type_ids.clone(),
            &mut masks,
        );
        cpu_inference::first_token(self, input, embedded)
    }

    /// [`forward`](Self::forward) through burn's operations only, on every device: the
    /// reference the fused CPU inference path is tested against.
    pub fn forward_unfused(&self, input: EncoderInput) -> EncoderOutput {
        self.forward_inner(input, false)
    }

    fn forward_inner(&self, input: EncoderInput, fused: bool) -> EncoderOutput {
        let device = input.input_ids.device();
        let mut masks = DropoutMasks::new(&device);
        if fused && fused_inference_applies(&device) {
            let embedded = self.embeddings.forward(
                input.input_ids.clone(),
                input.token_type_ids.clone(),
                &mut masks,
            );
            return cpu_inference::forward(self, input, embedded);
        }
        let [batch, seq] = input.input_ids.dims();
        // Padding is masked as a key only: HF computes pad positions like any token. A batch
        // without padding needs no bias (one pass over every [b, h, s, s] score saved).
        let padded = input
            .attention_mask
            .clone()
            .equal_elem(0)
            .any()
            .into_scalar::<bool>();
        let mask_bias = padded.then(|| {
            (input.attention_mask.float() - 1.0)
                .neg()
                .mul_scalar(MASKED_SCORE)
                .reshape([batch, 1, 1, seq])
        });
        let mut x = self
            .embeddings
            .forward(input.input_ids, input.token_type_ids, &mut masks);
        for layer in &self.encoder.layer {
            x = layer.forward(x, mask_bias.clone(), &mut masks);
        }
        let hidden = self.config.hidden_size;
        let first_token = x.clone().narrow(1, 0, 1).reshape([batch, hidden]);
        EncoderOutput {
            last_hidden_state: x,
            first_token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastmath::{splitmix64, GOLDEN_GAMMA};

    /// The device RNG is one per process: tests that seed it take turns.
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn host_masks_keep_with_probability_keep_and_scale_by_its_inverse() {
        let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
        let device = Device::flex().autodiff();
        device.seed(7);
        let dropout = DropoutConfig::new(0.1).init();
        let mut masks = DropoutMasks::new(&device);
        let n = 200_001; // odd: the last hash supplies one element
        let ones = || Tensor::<1>::ones([n], &device);
        let first = values(masks.apply(&dropout, ones()));
        let second = values(masks.apply(&dropout, ones()));
        let scale = 1.0 / 0.9f32;
        // Made in parallel chunks, equal to the serial definition: pair i takes hash i.
        let seed = masks.seed.unwrap();
        let threshold = (0.9f64 * 4_294_967_296.0) as u64;
        let serial: Vec<f32> = (0..n)
            .map(|j| {
                let r = splitmix64(seed.wrapping_add((j as u64 / 2).wrapping_mul(GOLDEN_GAMMA)));
                let half = if j % 2 == 0 { r & 0xffff_ffff } else { r >> 32 };
                if half < threshold {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        assert_eq!(first, serial);
        assert!(first.iter().all(|&v| v == 0.0 || v == scale));
        let kept = first.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
        // Binomial standard deviation √(0.9·0.1/n) ≈ 6.7e-4: 0.005 is > 7 of them.
        assert!((kept - 0.9).abs() < 0.005, "kept fraction {kept}");
        assert_ne!(first, second, "each mask reads a fresh part of the stream");

        // The same device seed draws the same masks (runs are repeatable).
        device.seed(7);
        let mut again = DropoutMasks::new(&device);
        assert_eq!(values(again.apply(&dropout, ones())), first);

        // Off the autodiff device, or with p = 0: the identity.
        let plain = Device::flex();
        let mut off = DropoutMasks::new(&plain);
        let x = Tensor::<1>::ones([16], &plain);
        assert_eq!(values(off.apply(&dropout, x.clone())), vec![1.0; 16]);
        let none = DropoutConfig::new(0.0).init();
        let x = Tensor::<1>::ones([16], &device);
        assert_eq!(values(masks.apply(&none, x)), vec![1.0; 16]);
    }

    /// Picking rows of a mask gives those rows' bytes, for any range, odd starts included.
    #[test]
    fn a_masks_picked_rows_are_its_rows() {
        let (row_len, step, rows) = (7, 5, 9);
        let whole = LazyKeep::new(3, 11, 0.4);
        let mut all = vec![0u8; rows * step * row_len];
        whole.fill(0, &mut all);
        let picked = whole.every_row(row_len, step);
        let want: Vec<u8> = (0..rows)
            .flat_map(|r| all[r * step * row_len..][..row_len].to_vec())
            .collect();
        for (first, len) in [(0, rows * row_len), (3, 20), (13, 1), (6, 30)] {
            let mut got = vec![9u8; len];
            picked.fill(first, &mut got);
            assert_eq!(got, want[first..first + len], "from {first}, {len} long");
        }
        assert!(want.contains(&0) && want.contains(&1));
        // And as bits, for rows of whole words.
        let (row_len, step, rows) = (32, 3, 6);
        let mut all = vec![0u8; rows * step * row_len];
        whole.fill(0, &mut all);
        let picked = whole.every_row(row_len, step);
        let want: Vec<u16> = (0..rows)
            .flat_map(|r| all[r * step * row_len..][..row_len].chunks(16))
            .map(|c| (0..16).map(|i| u16::from(c[i]) << i).sum())
            .collect();
        for (first, words) in [(0, rows * row_len / 16), (16, 5), (48, 2)] {
            let mut got = vec![7u16; words];
            picked.fill_bits(first, &mut got);
            assert_eq!(
                got,
                want[first / 16..first / 16 + words],
                "bits from {first}"
            );
        }
    }

    /// The adapters' input dropout is drawn in training: with hidden and attention
    /// dropout off, two training forwards give different `B` gradients only when the adapters'
    /// dropout is on.
    fn adapter_b_gradients(lora_dropout: f64, seed: u64) -> Vec<f32> {
        let config: EncoderConfig = serde_json::from_str(
            r#"{"model_type": "roberta", "vocab_size": 40, "hidden_size": 16,
                "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                "max_position_embeddings": 20, "type_vocab_size": 1, "pad_token_id": 1,
                "layer_norm_eps": 1e-5}"#,
        )
        .unwrap();
        let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
        let device = Device::flex().autodiff();
        device.seed(1);
        let lora = lora::LoraConfig {
            dropout: lora_dropout,
            ..lora::LoraConfig::with_rank(4)
        };
        let encoder = Encoder::new(&config, &device).apply_lora(&lora).unwrap();
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(vec![0i64, 5, 9, 2, 0, 7, 3, 2], [2, 4]),
            &device,
        );
        let input = EncoderInput {
            attention_mask: ids.ones_like(),
            token_type_ids: ids.zeros_like(),
            input_ids: ids,
        };
        // Not a plain sum: a LayerNorm's outputs sum to a constant, which has no gradient.
        let weights = Tensor::<1, Int>::arange(0..16, &device)
            .float()
            .unsqueeze::<2>();
        // burn initialises parameters lazily, from the RNG at first use: a first forward fixes
        // them before the seed that picks the masks.
        let _ = encoder.forward(input.clone());
        device.seed(seed);
        let h = encoder.first_token(input);
        let grads = (h * weights).sum().backward();
        let query = &encoder.encoder.layer[0].attention.self_attention.query;
        let b = &query.adapter.as_ref().unwrap().lora_b.weight;
        values(b.val().grad(&grads).unwrap())
    }

    #[test]
    fn adapter_dropout_is_on_in_training_only_when_asked() {
        let (a, b) = (adapter_b_gradients(0.0, 10), adapter_b_gradients(0.0, 11));
        assert!(a.iter().any(|&g| g != 0.0));
        assert_eq!(
            a, b,
            "no dropout anywhere: the step does not depend on the seed"
        );
        let (a, b) = (adapter_b_gradients(0.5, 10), adapter_b_gradients(0.5, 11));
        assert_ne!(
            a, b,
            "adapter dropout on: different masks, different gradients"
        );
        assert_eq!(a, adapter_b_gradients(0.5, 10), "same seed, same masks");
    }

    #[test]
    fn training_gelu_matches_burns_in_value_and_gradient() {
        let device = Device::flex().autodiff();
        let n = 2 * 3 * 8192;
        let values: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 2e-4).collect();
        let weights: Vec<f32> = (0..n).map(|i| ((i % 13) as f32 - 6.0) * 0.1).collect();
        let run = |ours: bool| {
            let x = Tensor::<3>::from_data(TensorData::new(values.clone(), [2, 3, 8192]), &device)
                .require_grad();
            let y = if ours {
                gelu_parallel_train(x.clone())
            } else {
                gelu(x.clone())
            };
            let w = Tensor::<3>::from_data(TensorData::new(weights.clone(), [2, 3, 8192]), &device);
            let grads = (y.clone() * w).sum().backward();
            let grad = x.grad(&grads).unwrap();
            (
                values_of(y.inner()),
                grad.into_data().try_to_vec::<f32>().unwrap(),
            )
        };
        let (ours, burns) = (run(true), run(false));
        // Ours against f64 (GELU within 2.5·10⁻⁷·(|x| + |y|), its derivative within 2·10⁻⁷);
        // burn's (scalar erff, its own derivative) agrees with ours to 1.5·10⁻⁶, its
        // derivative being the less accurate of the two (≈ 10⁻⁶ off in the tails).
        let erf = |x: f64| libm::erf(x / std::f64::consts::SQRT_2);
        let pdf = |x: f64| (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        for (i, (&x, &w)) in values.iter().zip(&weights).enumerate() {
            let x64 = f64::from(x);
            let y = 0.5 * x64 * (1.0 + erf(x64));
            let dy = f64::from(w) * (0.5 * (1.0 + erf(x64)) + x64 * pdf(x64));
            let (value, grad) = (f64::from(ours.0[i]), f64::from(ours.1[i]));
            assert!(
                (value - y).abs() <= 2.5e-7 * (x64.abs() + y.abs()),
                "{x}: {value} vs {y}"
            );
            assert!((grad - dy).abs() <= 2e-7, "{x}: gradient {grad} vs {dy}");
        }
        for (a, b) in ours
            .0
            .iter()
            .zip(&burns.0)
            .chain(ours.1.iter().zip(&burns.1))
        {
            assert!((a - b).abs() <= 1.5e-6 * a.abs().max(1.0), "{a} vs {b}");
        }
        assert!(ours.1.iter().any(|&g| g != 0.0));
    }

    /// The fused CPU inference path computes the burn path's function, and so does its
    /// first-token-only last layer (`first_token`): both families, every activation, padded
    /// keys, and an unmerged adapter with a non-zero `B` (in the last layer).
    #[test]
    fn fused_inference_equals_the_burn_path() {
        // Initialising parameters draws from the process's RNG, which other tests seed.
        let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
        let device = Device::flex();
        // (A head width of 32: the AVX-512 attention tiles, where the CPU has them.)
        for (family, act, hidden, heads) in [
            ("roberta", "gelu", 24, 3),
            ("bert", "gelu", 24, 3),
            ("bert", "gelu_new", 24, 3),
            ("roberta", "relu", 24, 3),
            ("bert", "silu", 24, 3),
            ("roberta", "gelu", 64, 2),
        ] {
            let config: EncoderConfig = serde_json::from_str(&format!(
                r#"{{"model_type": "{family}", "vocab_size": 50, "hidden_size": {hidden},
                    "num_hidden_layers": 2, "num_attention_heads": {heads}, "intermediate_size": 40,
                    "hidden_act": "{act}", "max_position_embeddings": 40, "type_vocab_size": 2,
                    "pad_token_id": 1, "layer_norm_eps": 1e-5}}"#
            ))
            .unwrap();
            let mut encoder = Encoder::new(&config, &device)
                .apply_lora(&lora::LoraConfig::with_rank(4))
                .unwrap();
            // Non-zero B's, so the adapters contribute (the last layer's key and value too: its
            // first-token path folds them into the weights; and the output projection, which
            // carries the value bias).
            let attention = &mut encoder.encoder.layer[1].attention;
            for projection in [
                &mut attention.self_attention.query,
                &mut attention.self_attention.key,
                &mut attention.self_attention.value,
                &mut attention.output.dense,
            ] {
                let adapter = projection.adapter.as_mut().unwrap();
                adapter.lora_b.weight = adapter
                    .lora_b
                    .weight
                    .clone()
                    .map(|w| w.random_like(Distribution::Normal(0.0, 0.5)));
            }
            // Three sequences of 7: padded, unpadded, mostly padded (pad id 1).
            let ids: Vec<i64> = vec![
                0, 7, 9, 11, 2, 1, 1, 0, 5, 6, 8, 13, 17, 2, 0, 4, 2, 1, 1, 1, 1,
            ];
            let mask: Vec<i64> = ids.iter().map(|&t| i64::from(t != 1)).collect();
            let types: Vec<i64> = (0..21).map(|i| i64::from(i % 7 == 3)).collect();
            let int =
                |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [3, 7]), &device);
            let input = EncoderInput {
                input_ids: int(ids),
                attention_mask: int(mask),
                token_type_ids: int(types),
            };
            let fused = encoder.forward(input.clone());
            let first_token = encoder.first_token(input.clone());
            let reference = encoder.forward_unfused(input);
            let max_delta = |a: &[f32], b: &[f32]| {
                assert_eq!(a.len(), b.len());
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max)
            };
            let (a, b) = (
                values_of(fused.last_hidden_state),
                values_of(reference.last_hidden_state),
            );
            let delta = max_delta(&a, &b);
            assert!(delta <= 2e-5, "{family}/{act}/{hidden}: max |Δ| {delta}");
            assert!(a.iter().all(|v| v.is_finite()));
            // The last layer on the first tokens only: the same H.
            let h = first_token.into_data().try_to_vec::<f32>().unwrap();
            let h_reference = reference
                .first_token
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            let delta = max_delta(&h, &h_reference);
            assert!(
                delta <= 2e-5,
                "{family}/{act}/{hidden} first token: max |Δ| {delta}"
            );
        }
    }

    /// `ProductPrecision::Bf16` takes the bf16 path (the hidden states move) and stays within
    /// bf16's rounding of the f32 ones; training-free, padding included.
    #[test]
    fn bf16_products_stay_near_the_f32_forward() {
        let kernels = crate::amx::kernels_here();
        if kernels.is_empty() {
            eprintln!("skipped: no bf16 kernel here (neither AMX tiles nor AVX-512 BF16)");
            return;
        }
        let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
        for kernel in kernels {
            let _forced = crate::amx::force(kernel);
            bf16_forward_near_the_f32_one(kernel);
        }
    }

    fn bf16_forward_near_the_f32_one(kernel: crate::amx::Kernel) {
        let device = Device::flex();
        // Widths that are multiples of 32, as the tiles need.
        let config: EncoderConfig = serde_json::from_str(
            r#"{"model_type": "bert", "vocab_size": 50, "hidden_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
                "hidden_act": "gelu", "max_position_embeddings": 40, "type_vocab_size": 2,
                "pad_token_id": 0, "layer_norm_eps": 1e-12}"#,
        )
        .unwrap();
        let mut encoder = Encoder::new(&config, &device);
        let ids: Vec<i64> = (0..40)
            .map(|i| if i % 20 > 15 { 0 } else { 1 + i % 37 })
            .collect();
        let mask: Vec<i64> = ids.iter().map(|&t| i64::from(t != 0)).collect();
        let int = |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [2, 20]), &device);
        let input = EncoderInput {
            input_ids: int(ids),
            attention_mask: int(mask),
            token_type_ids: int(vec![0; 40]),
        };
        let exact = values_of(encoder.forward(input.clone()).last_hidden_state);
        encoder.set_product_precision(ProductPrecision::Bf16);
        let rounded = values_of(encoder.forward(input).last_hidden_state);
        let delta = exact
            .iter()
            .zip(&rounded)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        // LayerNorm outputs of order 1; bf16 keeps 8 significant bits (2⁻⁹ ≈ 2·10⁻³ relative
        // per operand), summed over 64–128 terms per product, two layers deep.
        assert!(delta > 0.0, "{kernel:?}: the bf16 products were not used");
        assert!(delta < 3e-2, "{kernel:?}: max |Δ| {delta}");
        assert!(rounded.iter().all(|v| v.is_finite()));
    }

    /// Every parameter gradient of `encoder` in `grads`, by parameter path order.
    fn gradients(
        encoder: &Encoder,
        grads: &burn::optim::GradientsParams,
    ) -> Vec<(String, Vec<f32>)> {
        struct Collect<'a> {
            grads: &'a burn::optim::GradientsParams,
            out: Vec<(String, Vec<f32>)>,
        }
        impl burn::module::ModuleVisitor for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
                if let Some(g) = self.grads.get::<D>(param.id) {
                    let values = g
                        .into_data()
                        .convert::<f32>()
                        .try_into_vec::<f32>()
                        .unwrap();
                    self.out.push((format!("{:?}", param.id), values));
                }
            }
        }
        let mut visitor = Collect {
            grads,
            out: Vec::new(),
        };
        encoder.visit(&mut visitor);
        visitor.out
    }

    /// The embeddings on the host (a frozen-embeddings training step) against burn's: RoBERTa
    /// (positions counted past the pads) and BERT (two token types), dropout on. The same
    /// mask from the same place in the stream (its zeros at the same places, the stream
    /// moved on alike), the values to float rounding (the LayerNorms' sums differ in
    /// order). An id past its table gives `None` and draws nothing.
    #[test]
    fn embeddings_on_the_host_equal_burns() {
        let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
        let device = Device::flex().autodiff();
        for family in ["roberta", "bert"] {
            let config: EncoderConfig = serde_json::from_str(&format!(
                r#"{{"model_type": "{family}", "vocab_size": 50, "hidden_size": 32,
                    "num_hidden_layers": 1, "num_attention_heads": 4,
                    "intermediate_size": 64, "hidden_dropout_prob": 0.1,
                    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 40,
                    "type_vocab_size": 2, "pad_token_id": 1, "layer_norm_eps": 1e-5}}"#
            ))
            .unwrap();
            device.seed(3);
            let mut embeddings = Encoder::new(&config, &device).embeddings;
            let norm = &mut embeddings.layer_norm;
            norm.gamma = norm
                .gamma
                .clone()
                .map(|g| g.random_like(Distribution::Normal(1.0, 0.2)));
            norm.beta = norm
                .beta
                .clone()
                .map(|beta| beta.map(|b| b.random_like(Distribution::Normal(0.0, 0.2))));
            let int =
                |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [2, 9]), &device);
            // The second sequence ends in pads (id 1).
            let ids: Vec<i64> = (0..18)
                .map(|i| if i > 14 { 1 } else { 2 + (i * 7) % 47 })
                .collect();
            let types: Vec<i64> = (0..18)
                .map(|i| i64::from(family == "bert" && i % 9 > 4))
                .collect();
            let (ids, types) = (int(ids), int(types));

            device.seed(11);
            let mut burn_masks = DropoutMasks::new(&device);
            let burns = values(embeddings.forward(ids.clone(), types.clone(), &mut burn_masks));
            device.seed(11);
            let mut host_masks = DropoutMasks::new(&device);
            let host = embeddings
                .forward_on_host(&ids, &types, 1e-5, &mut host_masks)
                .expect("ids in range");
            assert_eq!(host.len(), burns.len());
            for (i, (h, b)) in host.iter().zip(&burns).enumerate() {
                assert_eq!(*h == 0.0, *b == 0.0, "{family} [{i}]: dropped in one only");
                assert!(
                    (h - b).abs() <= 2e-6 * b.abs().max(1.0),
                    "{family} [{i}]: {h} vs {b}"
                );
            }
            assert!(
                host.iter().filter(|&&v| v == 0.0).count() > 0,
                "dropout was on"
            );
            let dropout = DropoutConfig::new(0.5).init();
            let next = |masks: &mut DropoutMasks| masks.host_keep(&dropout, 64);
            assert_eq!(next(&mut host_masks), next(&mut burn_masks));

            // An id past the word table: nothing made, nothing drawn.
            let past = int((0..18).map(|i| if i == 4 { 50 } else { 2 }).collect());
            device.seed(11);
            let mut masks = DropoutMasks::new(&device);
            assert!(embeddings
                .forward_on_host(&past, &types, 1e-5, &mut masks)
                .is_none());
            device.seed(11);
            let mut fresh = DropoutMasks::new(&device);
            assert_eq!(next(&mut masks), next(&mut fresh));
        }
    }

    /// A two-layer RoBERTa with dropout 0.1 everywhere, for the training-path tests.
    fn training_config(hidden: usize, heads: usize, intermediate: usize) -> EncoderConfig {
        serde_json::from_str(&format!(
            r#"{{"model_type": "roberta", "vocab_size": 50, "hidden_size": {hidden},
                "num_hidden_layers": 2, "num_attention_heads": {heads},
                "intermediate_size": {intermediate},
                "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
                "max_position_embeddings": 40, "type_vocab_size": 1, "pad_token_id": 1,
                "layer_norm_eps": 1e-5}}"#
        ))
        .unwrap()
    }

    /// The training step with `ProductPrecision::Bf16`: the base weights' products (forward,
    /// input and weight gradients) in bf16, everything else as in f32. `H` and every
    /// parameter gradient stay within bf16's rounding of the f32 step's (relative to each
    /// tensor's largest value), and they do move (the bf16 kernel was used); full fine-tuning and
    /// LoRA, dropout on, padded keys, and a row count (2 × 21) that pads `k` in the weight
    /// gradients.
    #[test]
    fn bf16_training_products_stay_near_the_f32_step() {
        let kernels = crate::amx::kernels_here();
        if kernels.is_empty() {
            eprintln!("skipped: no bf16 kernel here (neither AMX tiles nor AVX-512 BF16)");
            return;
        }
        let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
        for kernel in kernels {
            let _forced = crate::amx::force(kernel);
            bf16_training_step_near_the_f32_one(kernel);
        }
    }

    fn bf16_training_step_near_the_f32_one(kernel: crate::amx::Kernel) {
        let config = training_config(64, 4, 128);
        let device = Device::flex().autodiff();
        for lora_rank in [None, Some(4)] {
            device.seed(5);
            let mut encoder = Encoder::new(&config, &device);
            if let Some(rank) = lora_rank {
                encoder = perturb_adapters(
                    encoder
                        .apply_lora(&lora::LoraConfig::with_rank(rank))
                        .unwrap(),
                );
            }
            let ids: Vec<i64> = (0..42)
                .map(|i| if i % 21 > 17 { 1 } else { 2 + i % 41 })
                .collect();
            let mask: Vec<i64> = ids.iter().map(|&t| i64::from(t != 1)).collect();
            let int =
                |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [2, 21]), &device);
            let input = EncoderInput {
                input_ids: int(ids),
                attention_mask: int(mask),
                token_type_ids: int(vec![0; 42]),
            };
            let weights: Vec<f32> = (0..2 * 64)
                .map(|i| ((i * 37) % 11) as f32 * 0.1 - 0.5)
                .collect();
            let weights = Tensor::<2>::from_data(TensorData::new(weights, [2, 64]), &device);
            let _ = encoder.forward(input.clone());
            let mut step = |precision| {
                encoder.set_product_precision(precision);
                device.seed(11);
                let (h, tape) = encoder.forward_train(input.clone()).unwrap();
                let grads = (h.clone() * weights.clone()).sum().backward();
                let mut params = burn::optim::GradientsParams::new();
                tape.backward(h.grad(&grads), &mut params);
                (values(h.inner()), gradients(&encoder, &params))
            };
            let (h_exact, exact) = step(ProductPrecision::F32);
            let (h_rounded, rounded) = step(ProductPrecision::Bf16);
            let relative = |a: &[f32], b: &[f32]| {
                let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max)
                    / scale
            };
            let h_delta = relative(&h_rounded, &h_exact);
            assert!(h_delta > 0.0 && h_delta < 3e-2, "{kernel:?} H: {h_delta}");
            assert_eq!(rounded.len(), exact.len());
            let mut moved = 0;
            for ((id, g), (_, r)) in rounded.iter().zip(&exact) {
                let delta = relative(g, r);
                let scale = r.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                if scale < 1e-6 {
                    // The key biases' gradients: zero in exact arithmetic, rounding noise here.
                    let small = g.iter().all(|v| v.abs() < 1e-5);
                    assert!(small, "{kernel:?} {lora_rank:?} {id}");
                    continue;
                }
                let near = delta < 5e-2;
                assert!(
                    near,
                    "{kernel:?} {lora_rank:?} {id}: relative max |Δ| {delta}"
                );
                moved += usize::from(delta > 0.0);
            }
            assert!(
                moved * 2 > exact.len(),
                "{kernel:?} {lora_rank:?}: only {moved} gradients moved"
            );
        }
    }

    /// The hand-written training forward and backward against burn's autodiff of the same
    /// encoder: same `H`, same gradient for every parameter, with dropout everywhere (the same
    /// masks: same stream, same order), padded keys, full fine-tuning and LoRA (rank 4 through
    /// the row kernels, rank 40 through `gemm`: both of the adapter's paths), attention through
    /// `gemm` and through the AVX-512 tiles.
    #[test]
    fn fused_training_matches_burn_autodiff() {
        let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
        const {
            assert!(
                4 <= crate::low_rank::ROW_KERNEL_MAX_RANK
                    && 40 > crate::low_rank::ROW_KERNEL_MAX_RANK
            )
        };
        let ids: Vec<i64> = vec![
            0, 7, 9, 11, 2, 1, 1, 0, 5, 6, 8, 13, 17, 2, 0, 4, 2, 1, 1, 1, 1,
        ];
        // Head widths 8 (attention through `gemm`) and 16 (the AVX-512 tiles, where the CPU
        // has them).
        for hidden in [24, 48] {
            let config = training_config(hidden, 3, 40);
            for lora_rank in [None, Some(4), Some(40)] {
                assert_training_matches_autodiff(&config, (ids.clone(), [3, 7]), lora_rank);
            }
        }
    }

    /// [`fused_training_matches_burn_autodiff`] with products large enough for the panel
    /// products (`panel_product`: 256 rows, every weight product 2²⁰ multiply-adds or more,
    /// forward and input gradients, the weight read in place and read transposed).
    #[test]
    fn fused_training_on_the_panel_products_matches_burn_autodiff() {
        let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
        if !crate::cpu_inference::panel_takes((256, 64, 64)) {
            eprintln!("skipped: the panel products do not run here (one thread, or no AVX-512F)");
            return;
        }
        let (batch, seq) = (8, 32);
        // Sequences of 32 − 3b real tokens, then padding (id 1).
        let ids: Vec<i64> = (0..batch * seq)
            .map(|i| {
                let (b, t) = (i / seq, i % seq);
                if t == 0 {
                    0
                } else if t >= seq - 3 * b {
                    1
                } else {
                    2 + ((7 * i + 3 * b) % 47) as i64
                }
            })
            .collect();
        let config = training_config(64, 4, 256);
        for lora_rank in [None, Some(8)] {
            assert_training_matches_autodiff(&config, (ids.clone(), [batch, seq]), lora_rank);
        }
    }

    /// The fused CPU training step against burn's autodiff through the same encoder (`config`,
    /// its LoRA adapters of `lora_rank` with dropout, `B` non-zero): same first-token `H`, same
    /// gradient for every parameter, on `ids` (`[batch, seq]`, id 1 padding).
    fn assert_training_matches_autodiff(
        config: &EncoderConfig,
        (ids, [batch, seq]): (Vec<i64>, [usize; 2]),
        lora_rank: Option<usize>,
    ) {
        let device = Device::flex().autodiff();
        let hidden = config.hidden_size;
        device.seed(3);
        let mut encoder = Encoder::new(config, &device);
        if let Some(rank) = lora_rank {
            let lora = lora::LoraConfig {
                dropout: 0.2,
                ..lora::LoraConfig::with_rank(rank)
            };
            encoder = encoder.apply_lora(&lora).unwrap();
            // Non-zero B everywhere, so every adapter path carries gradient.
            encoder = perturb_adapters(encoder);
        }
        let mask: Vec<i64> = ids.iter().map(|&t| i64::from(t != 1)).collect();
        let int =
            |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [batch, seq]), &device);
        let input = EncoderInput {
            input_ids: int(ids.clone()),
            attention_mask: int(mask),
            token_type_ids: int(vec![0; batch * seq]),
        };
        let weights: Vec<f32> = (0..batch * hidden)
            .map(|i| ((i * 37) % 11) as f32 * 0.1 - 0.5)
            .collect();
        let weights = Tensor::<2>::from_data(TensorData::new(weights, [batch, hidden]), &device);
        // burn parameters initialise lazily from the RNG: one forward fixes them first.
        let _ = encoder.forward(input.clone());

        device.seed(11);
        let h_burn = encoder.first_token(input.clone());
        let grads = (h_burn.clone() * weights.clone()).sum().backward();
        let burn_grads = burn::optim::GradientsParams::from_grads(grads, &encoder);

        device.seed(11);
        let (h, tape) = encoder
            .forward_train(input)
            .expect("the CPU training path applies");
        let grads = (h.clone() * weights.clone()).sum().backward();
        let mut ours = burn::optim::GradientsParams::new();
        tape.backward(h.grad(&grads), &mut ours);

        let (a, b) = (values(h.inner()), values(h_burn.inner()));
        let delta = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(delta <= 1e-5, "H: max |Δ| {delta}");
        let (ours, reference) = (gradients(&encoder, &ours), gradients(&encoder, &burn_grads));
        let expected = if lora_rank.is_some() {
            2 * 6 * 2
        } else {
            16 * 2 + 5
        };
        assert_eq!(
            reference.len(),
            expected,
            "parameters with a gradient (burn)"
        );
        assert_eq!(
            ours.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            reference.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            "the same parameters get a gradient"
        );
        for ((id, g), (_, r)) in ours.iter().zip(&reference) {
            // Relative to the tensor's largest value (the key biases' gradients are 0 in
            // exact arithmetic, rounding noise of ~1e-8 here).
            let scale = r.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let delta = g
                .iter()
                .zip(r)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(
                delta <= 2e-6 * scale + 1e-7,
                "{id} (hidden {hidden}, LoRA {lora_rank:?}): max |Δ| {delta} of {scale}"
            );
        }
    }

    /// Sets every adapter's `B` to small random values (a fresh `B` is 0).
    fn perturb_adapters(mut encoder: Encoder) -> Encoder {
        for layer in &mut encoder.encoder.layer {
            let a = &mut layer.attention;
            for linear in [
                &mut a.self_attention.query,
                &mut a.self_attention.key,
                &mut a.self_attention.value,
                &mut a.output.dense,
                &mut layer.intermediate.dense,
                &mut layer.output.dense,
            ] {
                let adapter = linear.adapter.as_mut().unwrap();
                adapter.lora_b.weight = adapter.lora_b.weight.clone().map(|w| {
                    w.random_like(Distribution::Normal(0.0, 0.3))
                        .detach()
                        .require_grad()
                });
            }
        }
        encoder
    }

    fn values_of(t: Tensor<3>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }
}
