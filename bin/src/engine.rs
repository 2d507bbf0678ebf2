//! The models a run needs and the decoding methods over them, shared by `generate` and `bench`:
//! load the target (and the draft / intermediate, and EAGLE heads) once, then run any method on any
//! prompt with the same settings.

use burn::tensor::Device;
use std::path::{Path, PathBuf};

use hierspec_model::eagle::{load_head, EagleConfig, EagleHead};
use hierspec_model::loader::{self, LoadOptions, LoadedModel};
use hierspec_model::nn::QuantSpec;
use hierspec_model::{Error, Result};
use hierspec_speculative::drafter::EagleDrafter;
use hierspec_speculative::sd::Model;
use hierspec_speculative::tree::TreeConfig;
use hierspec_speculative::{generate, generate_eagle, generate_hier, generate_sd, GenerationStats, HierConfig, OnToken, Sampler, SamplingParams};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The target alone.
    Ar,
    /// A smaller model of the same tokenizer (--draft) drafts --draft-len tokens, the target verifies them.
    Sd,
    /// An EAGLE head (--eagle) drafts a dynamic tree, the target verifies it in one forward.
    Eagle,
    /// The hierarchy: an EAGLE head trained on --draft drafts trees, the intermediate model --draft
    /// verifies them into a sequence of at least --min-draft-len tokens, the target verifies that.
    Hier,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Ar => "ar",
            Method::Sd => "sd",
            Method::Eagle => "eagle",
            Method::Hier => "hier",
        }
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    None,
    Rtn,
}

/// Model and method settings (flattened into each binary's arguments).
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Target: alias (smollm2-135m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b), HF model directory or .gguf file.
    #[arg(long, default_value = "smollm2-135m")]
    pub model: String,
    /// Draft model for `sd`, the intermediate for `hier` (alias, HF directory or .gguf).
    #[arg(long)]
    pub draft: Option<String>,
    #[arg(long, default_value_t = 5)]
    pub draft_len: usize,
    /// EAGLE head directory (config.json + safetensors) trained on the model it drafts for: the target
    /// for `eagle`, the intermediate (--draft) for `hier` unless --hier-eagle names another. `auto`
    /// (or a name) looks in $HIERSPEC_HEADS or artifacts/heads/ for the head `train-eagle` wrote for
    /// that model. `random` makes an untrained head (exercises the machinery; acceptance is low).
    #[arg(long, alias = "head")]
    pub eagle: Option<String>,
    /// The head on the intermediate for `hier`, when a run also uses --eagle for `eagle`.
    #[arg(long)]
    pub hier_eagle: Option<String>,
    /// Children per tree node and frontier width.
    #[arg(long, default_value_t = 10)]
    pub tree_topk: usize,
    /// Drafter forwards per tree (levels below the root) [default: 6 for eagle, 3 for hier].
    #[arg(long)]
    pub tree_depth: Option<usize>,
    /// Nodes per tree, root included [default: 60 for eagle, 30 for hier].
    #[arg(long)]
    pub tree_nodes: Option<usize>,
    /// `hier`: the intermediate verifies head trees until the sequence draft holds this many tokens.
    #[arg(long, default_value_t = 6)]
    pub min_draft_len: usize,
    /// Cap on the context (RoPE table and KV cache sizing).
    #[arg(long, default_value_t = loader::DEFAULT_MAX_CONTEXT)]
    pub max_context: usize,
    /// Quantize the target's linear layers to W4A16 at load (`rtn`: round-to-nearest per group).
    #[arg(long, value_enum, default_value_t = Quant::None)]
    pub quant: Quant,
    /// Quantize the draft / intermediate (--draft) too, with the same group settings.
    #[arg(long, value_enum, default_value_t = Quant::None)]
    pub draft_quant: Quant,
    /// Input rows per scale for --quant (the full row where it does not divide the layer's input).
    #[arg(long, default_value_t = 128)]
    pub quant_group: usize,
    /// Symmetric int4 (zero point 8) instead of min-max per group.
    #[arg(long)]
    pub quant_sym: bool,
    /// Quantize lm_head too (dense by default).
    #[arg(long)]
    pub quant_lm_head: bool,
    /// Seed of random heads (and of sampling, in `generate`).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl EngineArgs {
    pub fn eagle_tree(&self) -> TreeConfig {
        TreeConfig { top_k: self.tree_topk, depth: self.tree_depth.unwrap_or(6), total_nodes: self.tree_nodes.unwrap_or(60) }
    }

    pub fn hier(&self) -> HierConfig {
        let tree = TreeConfig { top_k: self.tree_topk, depth: self.tree_depth.unwrap_or(3), total_nodes: self.tree_nodes.unwrap_or(30) };
        HierConfig { min_draft_len: self.min_draft_len, tree }
    }

    fn quant(&self, q: Quant) -> Option<QuantSpec> {
        (q == Quant::Rtn).then_some(QuantSpec { group: self.quant_group, asymmetric: !self.quant_sym, lm_head: self.quant_lm_head })
    }

    /// The target's load-time quantization.
    pub fn quant_spec(&self) -> Option<QuantSpec> {
        self.quant(self.quant)
    }

    /// Check every setting the listed methods use, before loading anything.
    pub fn validate(&self, methods: &[Method]) -> Result<()> {
        if (self.quant != Quant::None || self.draft_quant != Quant::None) && !matches!(self.quant_group, 32 | 64 | 128 | 256) {
            return Err(Error::Setting(format!("--quant-group {} (use 32, 64, 128 or 256)", self.quant_group)));
        }
        for m in methods {
            match m {
                Method::Ar => {}
                Method::Sd | Method::Hier if self.draft.is_none() => {
                    return Err(Error::Setting(format!("--method {} needs --draft <model>", m.name())));
                }
                Method::Sd if self.draft_len == 0 => return Err(Error::Setting("--draft-len must be at least 1".into())),
                Method::Sd => {}
                Method::Eagle if self.eagle.is_none() => return Err(Error::Setting("--method eagle needs --eagle <head dir | random>".into())),
                Method::Eagle => self.eagle_tree().validate()?,
                Method::Hier if self.hier_eagle.is_none() && self.eagle.is_none() => {
                    return Err(Error::Setting("--method hier needs --eagle <head dir | random> (a head on --draft)".into()));
                }
                Method::Hier => self.hier().validate()?,
            }
        }
        Ok(())
    }
}

/// Where trained heads live: $HIERSPEC_HEADS, else `artifacts/heads` under the working directory.
pub fn heads_root() -> PathBuf {
    std::env::var_os("HIERSPEC_HEADS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("artifacts/heads"))
}

/// The directory `train-eagle` writes the head of `model` to: its alias (or file / directory
/// stem), with `-w4a16` when trained on the quantized model's features.
pub fn default_head_dir(model: &str, quantized: bool) -> PathBuf {
    let stem = model_name(model);
    heads_root().join(if quantized { format!("{stem}-w4a16") } else { stem })
}

/// A model's short name: its alias, its directory's name, or its file's stem.
pub fn model_name(model: &str) -> String {
    let p = Path::new(model);
    let name = if hierspec_model::fetch::alias(model).is_some() || p.is_dir() { p.file_name() } else { p.file_stem() };
    name.map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| model.to_string())
}

/// `--eagle` to a head directory: a path as is; `auto` the head trained for `model` (its W4A16
/// head first when the model is quantized); any other name a directory under the heads root.
pub fn find_head(spec: &str, model: &str, quantized: bool) -> Result<PathBuf> {
    let p = PathBuf::from(spec);
    if p.is_dir() {
        return Ok(p);
    }
    let candidates: Vec<PathBuf> = if spec == "auto" {
        let mut v = Vec::new();
        if quantized {
            v.push(default_head_dir(model, true));
        }
        v.push(default_head_dir(model, false));
        v
    } else {
        vec![heads_root().join(spec)]
    };
    candidates.iter().find(|c| c.join("config.json").exists()).cloned().ok_or_else(|| {
        Error::Setting(format!(
            "--eagle {spec}: no head at {} (train one with `train-eagle --model {model}`, or pass a head directory)",
            candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(" or ")
        ))
    })
}

/// Token selection, applied identically to every model of a method (0 = greedy).
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
}

impl SamplingArgs {
    pub fn params(&self, seed: u64) -> SamplingParams {
        SamplingParams { temperature: self.temperature, top_p: self.top_p, top_k: self.top_k, seed }
    }
}

/// Loaded models and heads; `run` decodes one prompt with one method.
pub struct Engine {
    pub args: EngineArgs,
    pub target: LoadedModel,
    pub draft: Option<LoadedModel>,
    target_head: Option<(EagleHead, EagleConfig)>,
    draft_head: Option<(EagleHead, EagleConfig)>,
}

impl Engine {
    /// Load what `methods` need.
    pub fn load(args: EngineArgs, methods: &[Method], device: &Device) -> Result<Self> {
        args.validate(methods)?;
        let uses = |m: Method| methods.contains(&m);
        let opts = |q: Quant| LoadOptions { max_context: args.max_context, quant: args.quant(q) };
        let target = loader::load_with(&args.model, &opts(args.quant), device)?;
        let draft = match &args.draft {
            Some(spec) if uses(Method::Sd) || uses(Method::Hier) => {
                let d = loader::load_with(spec, &opts(args.draft_quant), device)?;
                if d.tokenizer.vocab_size() != target.tokenizer.vocab_size() || d.config.vocab_size != target.config.vocab_size {
                    return Err(Error::Setting(format!(
                        "--draft {spec} has a different tokenizer or vocabulary ({} vs {})",
                        d.config.vocab_size, target.config.vocab_size
                    )));
                }
                Some(d)
            }
            _ => None,
        };
        let head = |spec: &str, base: &LoadedModel, base_spec: &str, quantized: bool| -> Result<(EagleHead, EagleConfig)> {
            if spec == "random" {
                let cfg = EagleConfig::for_base(&base.config);
                Ok((EagleHead::random(&cfg, base.context_len(), args.seed, device)?, cfg))
            } else {
                load_head(&find_head(spec, base_spec, quantized)?, &base.config, base.context_len(), device)
            }
        };
        let target_head = match (&args.eagle, uses(Method::Eagle)) {
            (Some(spec), true) => Some(head(spec, &target, &args.model, args.quant != Quant::None)?),
            _ => None,
        };
        let draft_head = match (args.hier_eagle.as_ref().or(args.eagle.as_ref()), &draft, &args.draft, uses(Method::Hier)) {
            (Some(spec), Some(d), Some(d_spec), true) => Some(head(spec, d, d_spec, args.draft_quant != Quant::None)?),
            _ => None,
        };
        Ok(Self { args, target, draft, target_head, draft_head })
    }

    /// Generate up to `max_new` tokens after `ids` with `method`.
    pub fn run(
        &self,
        method: Method,
        ids: &[u32],
        max_new: usize,
        sampler: &mut Sampler,
        stop: &[u32],
        on_token: impl OnToken,
    ) -> Result<(Vec<u32>, GenerationStats)> {
        let t = &self.target;
        let not_loaded = || Error::Setting(format!("method {} was not loaded", method.name()));
        let target = Model { model: &t.model, config: &t.config };
        match method {
            Method::Ar => generate(&t.model, &t.config, ids, max_new, sampler, stop, on_token),
            Method::Sd => {
                let d = self.draft.as_ref().ok_or_else(not_loaded)?;
                generate_sd(target, Model { model: &d.model, config: &d.config }, ids, max_new, self.args.draft_len, sampler, stop, on_token)
            }
            Method::Eagle => {
                let (head, cfg) = self.target_head.as_ref().ok_or_else(not_loaded)?;
                let tree = self.args.eagle_tree();
                let mut drafter = EagleDrafter::new(head, cfg, &t.model, ids.len() + max_new + 1, &tree)?;
                generate_eagle(&t.model, &t.config, &mut drafter, &tree, ids, max_new, sampler, stop, on_token)
            }
            Method::Hier => {
                let d = self.draft.as_ref().ok_or_else(not_loaded)?;
                let (head, cfg) = self.draft_head.as_ref().ok_or_else(not_loaded)?;
                let hier = self.args.hier();
                let mut drafter = EagleDrafter::new(head, cfg, &d.model, ids.len() + max_new + hier.max_sequence(), &hier.tree)?;
                let inter = Model { model: &d.model, config: &d.config };
                generate_hier(target, inter, &mut drafter, &hier, ids, max_new, sampler, stop, on_token)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_directories_by_model() {
        let root = heads_root();
        assert_eq!(default_head_dir("qwen2.5-coder-0.5b", false), root.join("qwen2.5-coder-0.5b"));
        assert_eq!(default_head_dir("/m/qwen2.5-coder-1.5b.gguf", true), root.join("qwen2.5-coder-1.5b-w4a16"));
        let err = find_head("auto", "/nowhere/x.gguf", true).unwrap_err().to_string();
        assert!(err.contains("x-w4a16") && err.contains("train-eagle"), "{err}");
        assert!(find_head("no-such-head", "m", false).is_err());
        let dir = std::env::temp_dir();
        assert_eq!(find_head(dir.to_str().unwrap(), "m", false).unwrap(), dir);
    }
}
