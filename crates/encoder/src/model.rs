//! The BERT/RoBERTa transformer encoder as burn modules. Field names follow the Hugging Face
//! classes (`embeddings`, `encoder.layer.N.attention.self_attention.query`, …) so checkpoint keys
//! map onto them with a short remapping table (see `loader.rs`).

use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, LinearConfig,
};
use burn::tensor::activation::{gelu, gelu_approximate, relu, silu, softmax};
use burn::tensor::{Device, Int, Tensor};
use lora::LoraLinear;

use crate::config::{EncoderConfig, HiddenAct, ModelFamily};

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

    fn forward(&self, input_ids: Tensor<2, Int>, token_type_ids: Tensor<2, Int>) -> Tensor<3> {
        let positions = self.position_ids(&input_ids);
        let x = self.word_embeddings.forward(input_ids)
            + self.token_type_embeddings.forward(token_type_ids)
            + self.position_embeddings.forward(positions);
        self.dropout.forward(self.layer_norm.forward(x))
    }
}

/// Multi-head self-attention (`attention.self` in Hugging Face checkpoints).
#[derive(Module, Debug)]
pub struct SelfAttention {
    pub query: LoraLinear,
    pub key: LoraLinear,
    pub value: LoraLinear,
    dropout: Dropout,
    #[module(skip)]
    heads: usize,
}

impl SelfAttention {
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`; `mask_bias`: `[batch, 1, 1, seq]`, 0 or a large negative.
    fn forward(&self, x: Tensor<3>, mask_bias: Tensor<4>) -> Tensor<3> {
        let [batch, seq, hidden] = x.dims();
        let head_dim = hidden / self.heads;
        let split = |t: Tensor<3>| {
            t.reshape([batch, seq, self.heads, head_dim])
                .swap_dims(1, 2)
        };
        let q = split(self.query.forward(x.clone()));
        let k = split(self.key.forward(x.clone()));
        let v = split(self.value.forward(x));
        let scores = q.matmul(k.transpose()) * (1.0 / (head_dim as f64).sqrt()) + mask_bias;
        let probs = self.dropout.forward(softmax(scores, 3));
        probs
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([batch, seq, hidden])
    }
}

/// The projection after attention, with its residual and LayerNorm (`attention.output`), and
/// likewise after the feed-forward block (`output`).
#[derive(Module, Debug)]
pub struct ResidualOutput {
    pub dense: LoraLinear,
    pub layer_norm: LayerNorm,
    dropout: Dropout,
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

    fn forward(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        self.layer_norm
            .forward(self.dropout.forward(self.dense.forward(x)) + residual)
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
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.dense.forward(x);
        match self.act {
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

    fn forward(&self, x: Tensor<3>, mask_bias: Tensor<4>) -> Tensor<3> {
        let attended = self.attention.self_attention.forward(x.clone(), mask_bias);
        let x = self.attention.output.forward(attended, x);
        let expanded = self.intermediate.forward(x.clone());
        self.output.forward(expanded, x)
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
        }
    }

    /// The configuration this encoder was built from.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Runs the encoder. Dropout is active only on a training (autodiff) copy.
    pub fn forward(&self, input: EncoderInput) -> EncoderOutput {
        let [batch, seq] = input.input_ids.dims();
        // Padding is masked as a key only: HF computes pad positions like any token.
        let mask_bias = (input.attention_mask.float() - 1.0)
            .neg()
            .mul_scalar(MASKED_SCORE)
            .reshape([batch, 1, 1, seq]);
        let mut x = self
            .embeddings
            .forward(input.input_ids, input.token_type_ids);
        for layer in &self.encoder.layer {
            x = layer.forward(x, mask_bias.clone());
        }
        let hidden = self.config.hidden_size;
        let first_token = x.clone().narrow(1, 0, 1).reshape([batch, hidden]);
        EncoderOutput {
            last_hidden_state: x,
            first_token,
        }
    }
}
