//! One error type for everything that reads files or checks user settings: bad input is an error
//! with a message, never a panic.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("malformed GGUF file: {0}")]
    Gguf(String),
    #[error("malformed safetensors: {0}")]
    Safetensors(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("missing tensor {0}")]
    MissingTensor(String),
    #[error("tensor {name}: expected shape {expected:?}, found {found:?}")]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("prompt of {prompt} tokens plus {new} new tokens exceeds the context of {context} tokens")]
    ContextOverflow { prompt: usize, new: usize, context: usize },
    #[error("invalid setting: {0}")]
    Setting(String),
    #[error("fetch failed: {0}")]
    Fetch(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }
}
