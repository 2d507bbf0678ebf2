//! Tokenizer and chat template. HF directories ship tokenizer.json; GGUF files carry the vocabulary,
//! merges and pre-tokenizer name in metadata, from which we write the equivalent tokenizer.json and let
//! the `tokenizers` crate do the work.

use std::path::Path;

use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, MetaValue};

/// Prompt formats we can render.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\n...<|im_end|>\n` (Qwen, SmolLM2). `default_system` is what the model's own
    /// template inserts when the user gives no system message.
    ChatMl { default_system: Option<String> },
    /// `<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>` (Llama 3).
    Llama3,
}

impl ChatTemplate {
    /// Recognise the family of a Jinja chat template and pull out its default system message.
    pub fn detect(jinja: &str) -> Option<Self> {
        if jinja.contains("<|im_start|>") {
            // The newline after the role is a real newline or a Jinja `\n` escape, depending on the
            // writer; the default message is the first such block whose body is a plain literal.
            let default_system = ["<|im_start|>system\n", "<|im_start|>system\\n"].iter().find_map(|m| {
                jinja.match_indices(m).find_map(|(i, _)| {
                    let rest = &jinja[i + m.len()..];
                    let text = &rest[..rest.find("<|im_end|>")?];
                    let literal = !text.is_empty() && !text.contains(['{', '\'', '<']);
                    literal.then(|| text.to_string())
                })
            });
            Some(ChatTemplate::ChatMl { default_system })
        } else if jinja.contains("<|start_header_id|>") {
            Some(ChatTemplate::Llama3)
        } else {
            None
        }
    }

    /// One user turn (after an optional system message), ready for the assistant's answer.
    pub fn render(&self, system: Option<&str>, turns: &[(&str, &str)]) -> String {
        let mut s = String::new();
        match self {
            ChatTemplate::ChatMl { default_system } => {
                if let Some(sys) = system.or(default_system.as_deref()) {
                    s += &format!("<|im_start|>system\n{sys}<|im_end|>\n");
                }
                for (role, text) in turns {
                    s += &format!("<|im_start|>{role}\n{text}<|im_end|>\n");
                }
                s += "<|im_start|>assistant\n";
            }
            ChatTemplate::Llama3 => {
                s += "<|begin_of_text|>";
                if let Some(sys) = system {
                    s += &format!("<|start_header_id|>system<|end_header_id|>\n\n{sys}<|eot_id|>");
                }
                for (role, text) in turns {
                    s += &format!("<|start_header_id|>{role}<|end_header_id|>\n\n{text}<|eot_id|>");
                }
                s += "<|start_header_id|>assistant<|end_header_id|>\n\n";
            }
        }
        s
    }
}

#[derive(Clone)]
pub struct TextTokenizer {
    pub inner: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// Generation stops at any of these.
    pub eos_ids: Vec<u32>,
    pub bos_id: Option<u32>,
    /// Whether the model expects a BOS token before the prompt (and the template does not add one).
    pub add_bos: bool,
}

const STOP_STRINGS: [&str; 4] = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>"];

impl TextTokenizer {
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn with_stops(inner: Tokenizer, mut eos_ids: Vec<u32>, chat_template: Option<ChatTemplate>) -> Self {
        for s in STOP_STRINGS {
            if let Some(id) = inner.token_to_id(s) {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        Self { inner, chat_template, eos_ids, bos_id: None, add_bos: false }
    }

    /// tokenizer.json (+ tokenizer_config.json for the chat template, generation_config.json for eos).
    pub fn from_hf_dir(dir: &Path, config_eos: &[u32]) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let inner = parse_tokenizer(&text).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let read_json = |name: &str| -> Option<Value> {
            serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
        };
        let tcfg = read_json("tokenizer_config.json");
        let template = tcfg
            .as_ref()
            .and_then(|c| c.get("chat_template"))
            .and_then(Value::as_str)
            .and_then(ChatTemplate::detect);
        let mut eos: Vec<u32> = config_eos.to_vec();
        if let Some(g) = read_json("generation_config.json") {
            match g.get("eos_token_id") {
                Some(Value::Number(n)) => eos.extend(n.as_u64().map(|x| x as u32)),
                Some(Value::Array(a)) => eos.extend(a.iter().filter_map(Value::as_u64).map(|x| x as u32)),
                _ => {}
            }
        }
        eos.sort();
        eos.dedup();
        Ok(Self::with_stops(inner, eos, template))
    }

    /// Build the tokenizer from GGUF metadata (BPE vocabularies only: `tokenizer.ggml.model == gpt2`).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let meta = |k: &str| file.meta(k);
        let model = meta("tokenizer.ggml.model").and_then(MetaValue::as_str).unwrap_or("");
        if model != "gpt2" {
            return Err(Error::Unsupported(format!("GGUF tokenizer model {model:?} (supported: gpt2/BPE)")));
        }
        let strings = |k: &str| -> Result<Vec<String>> {
            meta(k)
                .and_then(MetaValue::as_array)
                .ok_or_else(|| Error::Tokenizer(format!("GGUF metadata lacks {k}")))?
                .iter()
                .map(|v| v.as_str().map(String::from).ok_or_else(|| Error::Tokenizer(format!("{k}: non-string entry"))))
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<u64> = meta("tokenizer.ggml.token_type")
            .and_then(MetaValue::as_array)
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_default();
        let pre = meta("tokenizer.ggml.pre").and_then(MetaValue::as_str).unwrap_or("default");

        let vocab: serde_json::Map<String, Value> =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
        // Control (3) and user-defined (4) tokens are matched whole before BPE, as HF does.
        let added: Vec<Value> = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
            .map(|(i, t)| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": types[i] == 3})
            })
            .collect();
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": use_regex});
        let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
        let (normalizer, pre_tokenizer) = match pre {
            "qwen2" => (
                json!({"type": "NFC"}),
                json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]}),
            ),
            "llama-bpe" | "llama3" => (
                Value::Null,
                json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]}),
            ),
            "smollm" => (
                Value::Null,
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            ),
            "gpt2" | "default" => (Value::Null, byte_level(true)),
            other => return Err(Error::Unsupported(format!("GGUF pre-tokenizer {other:?}"))),
        };
        let tj = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": pre == "llama-bpe" || pre == "llama3",
                      "vocab": vocab, "merges": merges}
        });
        let inner = parse_tokenizer(&tj.to_string()).map_err(|e| Error::Tokenizer(format!("GGUF vocabulary: {e}")))?;
        let id = |k: &str| meta(k).and_then(MetaValue::as_u64).map(|v| v as u32);
        let eos: Vec<u32> = id("tokenizer.ggml.eos_token_id").into_iter().collect();
        let template = meta("tokenizer.chat_template").and_then(MetaValue::as_str).and_then(ChatTemplate::detect);
        let mut t = Self::with_stops(inner, eos, template);
        t.bos_id = id("tokenizer.ggml.bos_token_id");
        t.add_bos = matches!(meta("tokenizer.ggml.add_bos_token"), Some(MetaValue::Bool(true)));
        Ok(t)
    }
}

/// A tokenizer from its JSON. The tokenizers crate panics on some malformed files (a document cut
/// inside its `decoder`, found by `fuzz`), so the text must first be JSON, and a panic that still
/// escapes the crate becomes an error.
fn parse_tokenizer(text: &str) -> std::result::Result<Tokenizer, String> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| e.to_string())?;
    match std::panic::catch_unwind(|| text.parse::<Tokenizer>()) {
        Ok(parsed) => parsed.map_err(|e| e.to_string()),
        Err(_) => Err("the tokenizers crate could not read it (it panicked)".into()),
    }
}

const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[cfg(test)]
mod tests {
    use super::*;

    /// A tokenizer.json cut inside its decoder made the tokenizers crate panic (found by `fuzz`);
    /// it is an error now, as is a cut at every other point.
    #[test]
    fn a_cut_tokenizer_json_is_an_error() {
        let full = r#"{"added_tokens":[],"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},"model":{"type":"BPE","vocab":{"a":0},"merges":[]}}"#;
        for cut in [29, 30, 31, 60, full.len() - 1] {
            assert!(parse_tokenizer(&full[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn chatml_default_system_is_extracted() {
        // Qwen2.5's template: the first `system\n` block is the tools branch (not a literal).
        let t = "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}";
        let ct = ChatTemplate::detect(t).unwrap();
        assert_eq!(
            ct,
            ChatTemplate::ChatMl {
                default_system: Some("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.".into())
            }
        );
        assert_eq!(
            ct.render(Some("S"), &[("user", "hi")]),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn llama3_template() {
        let ct = ChatTemplate::detect("{{ '<|start_header_id|>' }}").unwrap();
        assert_eq!(
            ct.render(None, &[("user", "hi")]),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }
}
