//! The BERT/RoBERTa encoder of the sentiment model, as burn modules, with everything needed to
//! load a Hugging Face model folder offline: its `config.json`, its weights (safetensors or
//! PyTorch pickle, read by burn-store, or burn's own format after `cargo xtask import-weights`)
//! and its `tokenizer.json`.
//!
//! On the CPU, inference and the training step run the layers through hand-fused kernels
//! rather than burn's per-operation ones (same function and dropout masks, tested against
//! burn's path and its autodiff gradients). A training step:
//!
//! ```ignore
//! let (h, tape) = encoder.forward_train(input).expect("CPU autodiff device");
//! let grads = loss_of(h.clone()).backward();           // heads, loss weighting: burn autodiff
//! let grad_h = h.grad(&grads);
//! let mut params = GradientsParams::from_grads(grads, &model);
//! tape.backward(grad_h, &mut params);                  // the encoder's parameter gradients
//! ```
//!
//! ```no_run
//! use encoder::{ModelFolder, TextTokenizer, pad_batch, parse_device};
//! # fn main() -> Result<(), encoder::EncoderError> {
//! let device = parse_device("cpu")?;
//! let folder = ModelFolder::open("models/all-MiniLM-L6-v2".as_ref(), None)?;
//! let model = folder.load_encoder(&device)?;
//! let tokenizer = TextTokenizer::from_file(&folder.tokenizer, &folder.config, 128)?;
//! let row = tokenizer.encode("Shares jumped 12%.", None)?;
//! let h = model.first_token(pad_batch(&[&row], tokenizer.pad_id(), &device));
//! # Ok(()) }
//! ```

mod adapters;
mod amx;
mod attention_kernel;
mod config;
mod cpu_inference;
mod cpu_training;
mod device;
mod error;
mod fastmath;
mod gpu_products;
mod loader;
mod low_rank;
mod model;
mod panel_product;
mod speed_split;
mod tokenize;

pub use adapters::{TrainableParameters, ADAPTER_CONFIG, ADAPTER_WEIGHTS, LORA_TARGETS};
pub use config::{EncoderConfig, HiddenAct, ModelFamily};
pub use cpu_inference::weight_product_gflops;
pub use cpu_training::TrainTape;
pub use device::{parse_device, parse_devices};
pub use error::EncoderError;
pub use gpu_products::{cublas_products, linear};
pub use loader::{
    load_weights, save_burnpack, ModelFolder, WeightsFormat, BURN_WEIGHTS, HF_WEIGHTS,
};
pub use model::{
    bf16_products_available, bf16_products_kernel, Attention, Embeddings, Encoder, EncoderInput,
    EncoderOutput, Intermediate, Layer, LayerStack, ProductPrecision, ResidualOutput,
    SelfAttention,
};
pub use tokenize::{pad_batch, Encoded, TextTokenizer};
