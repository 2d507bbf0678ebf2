//! hierspec-train: EAGLE heads trained in Burn for any model hierspec loads. `corpus` reads
//! conversations, `data` turns them into the base model's features on disk, `trainer` runs the
//! EAGLE-1/2 objective on Burn autodiff; the head is written with `hierspec_model::eagle::save_head`.

pub mod corpus;
pub mod data;
pub mod trainer;

pub use corpus::{read_corpus, tokenize, Conversation};
pub use data::{make_data, Answers, DataSpec, Dataset, Manifest};
pub use trainer::{evaluate, train, Frozen, Metrics, RunLimits, TrainConfig, TrainResult};
