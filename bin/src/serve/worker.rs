//! The engine side of `serve`: one generation at a time, on the thread that owns the models. Each job
//! streams its text back as it is decoded and stops early once its client has gone.

use std::time::Instant;

use serde_json::json;
use tokio::sync::mpsc;

use hierspec_model::TextTokenizer;
use hierspec_speculative::{Sampler, Until};

use super::wire::{ApiError, Done, Finish, Job};
use crate::engine::Engine;

/// What a job sends back: text as it becomes final, then either the end or an error.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done(Done),
    Error(ApiError),
}

/// A queued job and where its events go.
pub struct Work {
    pub job: Job,
    pub events: mpsc::UnboundedSender<Event>,
}

/// Generated ids to text that is safe to send: whole UTF-8 only, cut at the first stop string, and
/// holding back a tail that could still grow into one.
pub struct TextStream<'a> {
    tokenizer: &'a TextTokenizer,
    stops: &'a [String],
    ids: Vec<u32>,
    text: String,
    sent: usize,
    /// A stop string was found: the text ends at `text.len()`.
    pub stopped: bool,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a TextTokenizer, stops: &'a [String]) -> Self {
        Self { tokenizer, stops, ids: Vec::new(), text: String::new(), sent: 0, stopped: false }
    }

    /// Take a generated id (end-of-sequence ids add no text); the text that became final.
    pub fn push(&mut self, id: u32) -> String {
        if self.stopped || self.tokenizer.eos_ids.contains(&id) {
            return String::new();
        }
        self.ids.push(id);
        let Ok(text) = self.tokenizer.decode(&self.ids) else { return String::new() };
        if text.ends_with('\u{FFFD}') {
            return String::new(); // the rest of a character is still to come
        }
        self.text = text;
        // A stop string may start in text already sent, less than its length back.
        let longest = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut from = self.sent.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self.stops.iter().filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i)).min();
        let end = match hit {
            Some(at) => {
                self.stopped = true;
                self.text.truncate(at.max(self.sent));
                self.text.len()
            }
            None => self.text.len() - stop_prefix_len(&self.text, self.stops),
        };
        self.take(end)
    }

    /// Everything not sent yet (at the end of generation nothing more can complete a stop string).
    pub fn finish(&mut self) -> String {
        self.take(self.text.len())
    }

    fn take(&mut self, end: usize) -> String {
        if end <= self.sent {
            return String::new();
        }
        let s = self.text[self.sent..end].to_string();
        self.sent = end;
        s
    }
}

/// Bytes at the end of `text` that begin some stop string (they wait for the next token).
fn stop_prefix_len(text: &str, stops: &[String]) -> usize {
    let t = text.as_bytes();
    let mut held = 0;
    for s in stops {
        let s = s.as_bytes();
        // Proper prefixes only: a whole stop string is found, not held.
        for n in (held + 1..s.len().min(t.len() + 1)).rev() {
            if t.ends_with(&s[..n]) && text.is_char_boundary(t.len() - n) {
                held = n;
                break;
            }
        }
    }
    held
}

/// Serve jobs until every sender is gone.
pub fn run(engine: &Engine, mut queue: mpsc::Receiver<Work>) {
    let tokenizer = &engine.target.tokenizer;
    while let Some(Work { job, events }) = queue.blocking_recv() {
        if events.is_closed() {
            continue; // its client left while it waited
        }
        let started = Instant::now();
        let mut stream = TextStream::new(tokenizer, &job.stops);
        let mut client_left = false;
        let mut sampler = match Sampler::new(job.params) {
            Ok(s) => s,
            Err(e) => {
                let _ = events.send(Event::Error(ApiError::invalid(None, e.to_string())));
                continue;
            }
        };
        let on_token = Until(|id| {
            let text = stream.push(id);
            let gone = (!text.is_empty() && events.send(Event::Text(text)).is_err()) || events.is_closed();
            if gone {
                client_left = true;
                return false;
            }
            !stream.stopped
        });
        let eos: &[u32] = if job.ignore_eos { &[] } else { &tokenizer.eos_ids };
        let result = engine.run(job.method, &job.prompt, job.max_new, &mut sampler, eos, on_token);
        match result {
            Ok((tokens, stats)) => {
                if client_left {
                    eprintln!("[serve] {} stopped after {} tokens: the client left", job.method.name(), tokens.len());
                    continue;
                }
                let rest = stream.finish();
                if !rest.is_empty() {
                    let _ = events.send(Event::Text(rest));
                }
                let ended = tokens.last().is_some_and(|t| eos.contains(t));
                let finish = if stream.stopped || ended { Finish::Stop } else { Finish::Length };
                let hierspec = json!({
                    "method": job.method.name(),
                    "tau": stats.tau(),
                    "inner_tau": stats.inner_tau(),
                    "tokens_per_s": stats.decode_tok_s(),
                    "prefill_ms": stats.prefill_ms,
                    "decode_ms": stats.decode_ms,
                    "target_forwards": stats.target_forwards,
                });
                eprintln!(
                    "[serve] {}: {} prompt + {} new tokens, {:.1} tok/s, tau {:.2}, {:.0} ms",
                    job.method.name(),
                    job.prompt.len(),
                    tokens.len(),
                    stats.decode_tok_s(),
                    stats.tau(),
                    started.elapsed().as_secs_f64() * 1e3
                );
                let done = Done { finish, prompt_tokens: job.prompt.len(), completion_tokens: tokens.len(), hierspec };
                let _ = events.send(Event::Done(done));
            }
            Err(e) => {
                eprintln!("[serve] {} failed: {e}", job.method.name());
                let err = match e {
                    hierspec_model::Error::Setting(_) | hierspec_model::Error::ContextOverflow { .. } => ApiError::invalid(None, e.to_string()),
                    other => ApiError { status: 500, kind: "server_error", message: other.to_string(), param: None },
                };
                let _ = events.send(Event::Error(err));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stop_prefix_len;

    #[test]
    fn a_tail_that_may_grow_into_a_stop_string_is_held() {
        let stops = vec!["\n\nUser:".to_string(), "END".to_string()];
        assert_eq!(stop_prefix_len("hello", &stops), 0);
        assert_eq!(stop_prefix_len("hello\n", &stops), 1);
        assert_eq!(stop_prefix_len("hello\n\nUse", &stops), 5);
        assert_eq!(stop_prefix_len("the E", &stops), 1);
        assert_eq!(stop_prefix_len("the EN", &stops), 2);
        // A whole stop string is not a prefix to hold (the caller cuts there).
        assert_eq!(stop_prefix_len("the END", &stops), 0);
        assert_eq!(stop_prefix_len("", &stops), 0);
        // Multi-byte characters are held whole or not at all.
        let stops = vec!["é!".to_string()];
        assert_eq!(stop_prefix_len("café", &stops), "é".len());
        assert_eq!(stop_prefix_len("cafe", &stops), 0);
    }
}
