//! hierspec-model: Llama-family decoders as Burn modules, their KV caches, and the loaders that
//! turn Hugging Face directories and GGUF files into them.

pub mod cache;
pub mod calibrate;
pub mod checkpoint;
pub mod config;
pub mod eagle;
pub mod error;
pub mod gptq;
pub mod fetch;
pub mod gguf;
pub mod llama;
pub mod loader;
pub mod nn;
pub mod pytorch;
pub mod quantized;
pub mod quants;
pub mod tokenizer;
pub mod weights;

pub use cache::KvCache;
pub use config::LlamaConfig;
pub use eagle::{EagleConfig, EagleHead};
pub use error::{Error, Result};
pub use llama::{AttnMask, ForwardOutput, Llama, LogitsFor};
pub use loader::{load, LoadedModel};
pub use tokenizer::{ChatTemplate, TextTokenizer};
