//! LoRA (low-rank adaptation) for burn linear layers, with PEFT's semantics.
//!
//! [`LoraLinear`] wraps a frozen base [`Linear`](burn::nn::Linear) and, once adapted, adds
//! `scaling · B A dropout(x)` (DAO-SPEC "LoRA"):
//!
//! - `A: r×in` Kaiming-uniform (`a = √5`, PyTorch `Linear`'s default), `B: out×r` zeros, so a
//!   fresh adapter changes nothing; `scaling = α/r`, or `α/√r` with rsLoRA.
//! - The input goes `x → dropout → A → B`: the `out×in` update `BA` is never built while
//!   training (cost `r·(in+out)` per token instead of `in·out`), unlike burn's own
//!   `Module::apply_lora`, which materialises the merged weight on every forward and has no
//!   adapter dropout.
//! - [`LoraLinear::merge`] folds `scaling·BA` into `W` (refused when the update is not finite;
//!   a `merged` flag makes a second merge an error), [`LoraLinear::unmerge`] takes it out.
//! - [`LoraLinear::with_adapter`] freezes the base weight and bias (`no_grad`): an optimizer
//!   then sees no gradient for them and leaves them bit-identical; `A` and `B` train.
//!
//! # Design
//! - *Why wrap the base?* A model declares every projection it may adapt as a `LoraLinear`
//!   from the start. Without an adapter `forward` is exactly the base layer, so plain
//!   checkpoints load into `base` (module paths `….query.base.weight`), inference costs
//!   nothing extra, and switching LoRA on later is a change of value, not of type. The
//!   adapter's tensors sit beside the base (`….query.adapter.lora_a.weight`), so an adapter
//!   file is just the subset of tensors under `adapter`.
//! - *Why doesn't this crate know the encoder?* LoRA is a property of one linear layer. Which
//!   layers to adapt, how PEFT names them and how an adapter file maps onto a model are the
//!   model's business: the `encoder` crate resolves [`LoraConfig::targets`] on its own module
//!   tree (`Encoder::apply_lora`) and reads/writes PEFT folders. Depending on burn alone keeps
//!   this crate reusable for any model (e.g. the heads) and free of dependency cycles.
//!
//! [`LoraConfig`] holds the settings (validated, serde); [`PeftAdapterConfig`] reads and
//! writes the matching PEFT `adapter_config.json`.
//!
//! # Example
//! One projection of someone else's model adapted at rank 4 (α = 4), trained, then merged:
//!
//! ```
//! use burn::nn::LinearConfig;
//! use burn::tensor::{Device, Distribution, Tensor};
//! use lora::{LoraConfig, LoraLinear};
//!
//! let device = Device::flex().autodiff();
//! let layer = LoraLinear::new(LinearConfig::new(16, 8).init(&device))
//!     .with_adapter(&LoraConfig::with_rank(4))?;
//! let x = Tensor::<2>::random([3, 16], Distribution::Default, &device);
//! let y = layer.forward(x.clone()); // [3, 8]; B starts at zero, so y = base(x)
//! assert_eq!(y.dims(), [3, 8]);
//! assert_eq!(layer.adapter.as_ref().unwrap().num_params(), 4 * 16 + 8 * 4);
//! // … train (only A and B receive gradients), then fold the update in for inference:
//! let merged = layer.merge_and_unload()?;
//! assert!(merged.adapter.is_none());
//! # Ok::<(), lora::LoraError>(())
//! ```
//!
//! The formulas are PEFT's `LoraLayer` (`scaling = lora_alpha / r`, `use_rslora`,
//! `lora_dropout` on the adapter's input only); DAO-SPEC "LoRA" in this project's shared
//! material writes them out.
#![warn(missing_docs)]

mod config;
mod error;
mod linear;

pub use config::{LoraConfig, PeftAdapterConfig, PeftTargets};
pub use error::LoraError;
pub use linear::{LoraAdapter, LoraLinear};
