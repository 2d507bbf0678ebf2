//! OpenAI's wire format: the request bodies `serve` accepts, their checks, and the JSON it answers
//! with. A request becomes a [`Job`] here, on the HTTP side, so that a bad one is refused before it
//! queues for the engine.

use serde::Deserialize;
use serde_json::{json, Value};

use hierspec_model::TextTokenizer;
use hierspec_speculative::SamplingParams;

use crate::engine::Method;

/// OpenAI caps `stop` at four sequences.
const MAX_STOPS: usize = 4;

/// An error as OpenAI's API shapes it, with the HTTP status it goes out with.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> Self {
        Self { status: 400, kind: "invalid_request_error", message: message.into(), param }
    }

    pub fn body(&self) -> Value {
        json!({ "error": { "message": self.message, "type": self.kind, "param": self.param, "code": Value::Null } })
    }
}

/// `stop`: one string or a list.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// A message's `content`: a string, or a list of parts of which only text ones are understood.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize, Debug)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize, Debug)]
struct Message {
    role: String,
    content: Option<Content>,
}

/// The fields of both request kinds that set how tokens are chosen and when to stop. Fields this
/// server does not know are ignored, as OpenAI's own clients send some; known fields of the wrong
/// type are refused.
#[derive(Deserialize, Debug, Default)]
struct Common {
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    /// Not OpenAI's, but vLLM's and llama.cpp's.
    top_k: Option<i64>,
    seed: Option<i64>,
    stop: Option<Stop>,
    stream: Option<bool>,
    n: Option<i64>,
    /// vLLM's: generate through end-of-sequence tokens, up to `max_tokens`.
    ignore_eos: Option<bool>,
    /// hierspec's own: which of the server's methods serves this request.
    method: Option<Method>,
}

#[derive(Deserialize, Debug)]
struct ChatBody {
    messages: Vec<Message>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Prompt {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug)]
struct CompletionBody {
    prompt: Prompt,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// A checked request, ready for the engine.
#[derive(Debug, Clone)]
pub struct Job {
    pub kind: Kind,
    pub method: Method,
    pub prompt: Vec<u32>,
    pub max_new: usize,
    pub params: SamplingParams,
    pub stops: Vec<String>,
    pub ignore_eos: bool,
    pub stream: bool,
}

/// What a request is checked against: the served model and the methods loaded for it.
pub struct Limits<'a> {
    pub tokenizer: &'a TextTokenizer,
    pub context: usize,
    pub methods: &'a [Method],
    pub seed: u64,
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::invalid(None, format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid(None, "the body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| ApiError::invalid(None, format!("invalid request: {e}")))
}

/// A `/v1/chat/completions` body to a job: the messages through the model's chat template.
pub fn chat_job(body: &[u8], limits: &Limits) -> Result<Job, ApiError> {
    let req: ChatBody = parse(body)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid(Some("messages"), "messages must hold at least one message"));
    }
    let mut turns: Vec<(String, String)> = Vec::with_capacity(req.messages.len());
    for m in req.messages {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(ApiError::invalid(Some("messages"), format!("unsupported role {:?} (system, user or assistant)", m.role)));
        }
        let text = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut t = String::new();
                for p in parts {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(s)) => t += &s,
                        (kind, _) => return Err(ApiError::invalid(Some("messages"), format!("unsupported content part {kind:?} (text only)"))),
                    }
                }
                t
            }
        };
        turns.push((m.role, text));
    }
    let text = match &limits.tokenizer.chat_template {
        Some(template) => {
            let (system, rest) = match turns.split_first() {
                Some((first, rest)) if first.0 == "system" => (Some(first.1.as_str()), rest),
                _ => (None, &turns[..]),
            };
            let rest: Vec<(&str, &str)> = rest.iter().map(|(r, t)| (r.as_str(), t.as_str())).collect();
            template.render(system, &rest)
        }
        // No template: the turns as plain text, the answer after "assistant:".
        None => turns.iter().map(|(r, t)| format!("{r}: {t}\n")).collect::<String>() + "assistant:",
    };
    job(Kind::Chat, &text, req.common, None, limits)
}

/// A `/v1/completions` body to a job: the prompt as raw text (16 new tokens unless `max_tokens`
/// says otherwise, as OpenAI has it).
pub fn completion_job(body: &[u8], limits: &Limits) -> Result<Job, ApiError> {
    let req: CompletionBody = parse(body)?;
    let text = match req.prompt {
        Prompt::One(s) => s,
        Prompt::Many(mut v) if v.len() == 1 => v.remove(0),
        Prompt::Many(_) => return Err(ApiError::invalid(Some("prompt"), "one prompt per request (batch 1)")),
    };
    if text.is_empty() {
        return Err(ApiError::invalid(Some("prompt"), "the prompt is empty"));
    }
    job(Kind::Completion, &text, req.common, Some(16), limits)
}

fn job(kind: Kind, text: &str, c: Common, default_max: Option<usize>, limits: &Limits) -> Result<Job, ApiError> {
    let method = c.method.unwrap_or(limits.methods[0]);
    if !limits.methods.contains(&method) {
        let loaded: Vec<&str> = limits.methods.iter().map(|m| m.name()).collect();
        return Err(ApiError::invalid(Some("method"), format!("method {} is not served here (started with: {})", method.name(), loaded.join(", "))));
    }
    if c.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(Some("n"), "n must be 1 (batch 1)"));
    }
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(Some("temperature"), format!("temperature {temperature} is outside [0, 2]")));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(Some("top_p"), format!("top_p {top_p} is outside (0, 1]")));
    }
    let top_k = match c.top_k {
        None | Some(-1) => 0,
        Some(k) if k >= 0 => k as usize,
        Some(k) => return Err(ApiError::invalid(Some("top_k"), format!("top_k {k} must be >= 0 (or -1 for none)"))),
    };
    let seed = match c.seed {
        None => limits.seed,
        Some(s) if s >= 0 => s as u64,
        Some(s) => return Err(ApiError::invalid(Some("seed"), format!("seed {s} must be >= 0"))),
    };
    let stops = match c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stops.len() > MAX_STOPS || stops.iter().any(|s| s.is_empty()) {
        return Err(ApiError::invalid(Some("stop"), format!("stop takes at most {MAX_STOPS} non-empty strings")));
    }
    let prompt = limits.tokenizer.encode(text).map_err(|e| ApiError::invalid(None, format!("cannot tokenize the prompt: {e}")))?;
    let room = limits.context.saturating_sub(prompt.len());
    if room == 0 {
        return Err(ApiError::invalid(
            Some("messages"),
            format!("the prompt is {} tokens, the context is {} (no room for an answer)", prompt.len(), limits.context),
        ));
    }
    let max_new = match c.max_completion_tokens.or(c.max_tokens) {
        None => default_max.unwrap_or(room).min(room),
        Some(n) if n < 1 => return Err(ApiError::invalid(Some("max_tokens"), format!("max_tokens {n} must be at least 1"))),
        Some(n) if n as u64 > room as u64 => {
            return Err(ApiError::invalid(
                Some("max_tokens"),
                format!("max_tokens {n} does not fit: the prompt is {} tokens and the context {}", prompt.len(), limits.context),
            ))
        }
        Some(n) => n as usize,
    };
    let params = SamplingParams { temperature: temperature as f32, top_p: top_p as f32, top_k, seed };
    Ok(Job { kind, method, prompt, max_new, params, stops, ignore_eos: c.ignore_eos.unwrap_or(false), stream: c.stream.unwrap_or(false) })
}

/// Why generation ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// The end of a generation: its reason, its counts, and the method's own figures.
#[derive(Debug, Clone)]
pub struct Done {
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub hierspec: Value,
}

impl Done {
    pub fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// Identity of one response: every chunk of a stream carries the same.
pub struct Head<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
}

/// A whole (non-streamed) response.
pub fn response(kind: Kind, head: &Head, text: &str, done: &Done) -> Value {
    let choice = match kind {
        Kind::Chat => json!({
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "logprobs": Value::Null,
            "finish_reason": done.finish.as_str(),
        }),
        Kind::Completion => json!({ "index": 0, "text": text, "logprobs": Value::Null, "finish_reason": done.finish.as_str() }),
    };
    json!({
        "id": head.id,
        "object": match kind { Kind::Chat => "chat.completion", Kind::Completion => "text_completion" },
        "created": head.created,
        "model": head.model,
        "choices": [choice],
        "usage": done.usage(),
        "hierspec": done.hierspec,
    })
}

/// One streamed chunk: text (a chat stream's first chunk also names the role), or the last one with
/// the finish reason, usage and the method's figures.
pub fn chunk(kind: Kind, head: &Head, text: Option<&str>, first: bool, done: Option<&Done>) -> Value {
    let finish = done.map(|d| Value::from(d.finish.as_str())).unwrap_or(Value::Null);
    let choice = match kind {
        Kind::Chat => {
            let mut delta = serde_json::Map::new();
            if first {
                delta.insert("role".into(), "assistant".into());
            }
            if let Some(t) = text {
                delta.insert("content".into(), t.into());
            }
            json!({ "index": 0, "delta": delta, "logprobs": Value::Null, "finish_reason": finish })
        }
        Kind::Completion => json!({ "index": 0, "text": text.unwrap_or(""), "logprobs": Value::Null, "finish_reason": finish }),
    };
    let mut v = json!({
        "id": head.id,
        "object": match kind { Kind::Chat => "chat.completion.chunk", Kind::Completion => "text_completion" },
        "created": head.created,
        "model": head.model,
        "choices": [choice],
    });
    if let Some(d) = done {
        v["usage"] = d.usage();
        v["hierspec"] = d.hierspec.clone();
    }
    v
}
