//! `serve` end to end on the CPU with SmolLM2-135M: real clients (the `openai` Python package and
//! curl) against a server on a loopback port; greedy text equal to `generate`'s and to `ar`'s under
//! every method; a bounded load; a client killed mid-stream; every bad request refused with an
//! OpenAI-shaped error.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const MODEL: &str = "smollm2-135m";
const PROMPT: &str = "Name three colors.";

/// A `serve` process, killed on drop; its stderr collected for the checks that read its log.
struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_serve"))
            .args(["--model", MODEL, "--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start serve");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().and_then(|l| l.ok()).unwrap_or_else(|| panic!("serve exited: {}", log.lock().unwrap()));
        let base = line
            .strip_prefix("listening on ")
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Self { child, base, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl a JSON body to `path` (GET without one): (HTTP status, body).
fn curl(base: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "300", "-o", "-", "-w", "\n%{http_code}"]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd.arg(format!("{base}{path}")).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or_else(|| panic!("curl gave {text:?}: {}", String::from_utf8_lossy(&out.stderr)));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn chat_body(max_tokens: usize, extra: &str) -> String {
    format!(r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"{PROMPT}"}}],"max_tokens":{max_tokens},"temperature":0{extra}}}"#)
}

/// The text `generate` writes for the same chat prompt, greedy.
fn generate_text(max_new: usize) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_generate"))
        .args(["--model", MODEL, "--max-new-tokens", &max_new.to_string(), PROMPT])
        .output()
        .expect("run generate");
    assert!(out.status.success(), "generate: {}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8(out.stdout).unwrap();
    s.strip_suffix('\n').unwrap_or(&s).to_string()
}

#[test]
fn openai_package_curl_and_every_method() {
    let server = Server::start(&["--method", "ar,sd,eagle,hier", "--draft", MODEL, "--eagle", "random"]);
    let max_tokens = 24;
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py"))
        .args([&server.base, PROMPT, &max_tokens.to_string(), "ar,sd,eagle,hier"])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "the openai client failed (CI installs it: pip install openai): {}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let r = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(r["models"], serde_json::json!([MODEL]));

    let text = r["chat"]["text"].as_str().unwrap();
    assert!(!text.is_empty());
    assert_eq!(text, generate_text(max_tokens), "serve and generate differ on the same greedy prompt");
    assert_eq!(r["chat"]["role"], "assistant");
    let usage = &r["chat"]["usage"];
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!(completion >= 1 && completion <= max_tokens as u64, "{usage}");
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), usage["prompt_tokens"].as_u64().unwrap() + completion);
    let finish = if completion == max_tokens as u64 { "length" } else { "stop" };
    assert_eq!(r["chat"]["finish_reason"], finish);
    assert_eq!(r["chat"]["hierspec"]["method"], "ar");
    assert!(r["chat"]["hierspec"]["tokens_per_s"].as_f64().unwrap() >= 0.0);

    // Streamed: the same text, the role once, the usage on the last chunk.
    assert_eq!(r["chat_stream"]["text"], text);
    assert_eq!(r["chat_stream"]["roles"], serde_json::json!(["assistant"]));
    assert_eq!(r["chat_stream"]["finish_reason"], finish);
    assert_eq!(r["chat_stream"]["usage"], *usage);

    let comp = r["completion"]["text"].as_str().unwrap();
    assert!(!comp.is_empty());
    assert_eq!(r["completion_stream"]["text"], comp);

    // Every method gives ar's text at temperature 0 (random heads: low acceptance, same output).
    for m in ["ar", "sd", "eagle", "hier"] {
        assert_eq!(r["methods"][m]["text"], text, "{m}");
        assert_eq!(r["methods"][m]["hierspec"]["method"], m);
    }
    assert!(r["methods"]["sd"]["hierspec"]["tau"].as_f64().unwrap() >= 1.0);
    assert!(r["methods"]["hier"]["hierspec"]["inner_tau"].as_f64().unwrap() >= 1.0);
    assert_eq!(r["seeded"][0], r["seeded"][1], "a seeded sample repeats");
    if let Some(stop) = r["stop"]["stop"].as_str() {
        let cut = r["stop"]["text"].as_str().unwrap();
        assert!(!cut.contains(stop) && text.starts_with(cut) && cut.len() < text.len(), "stop {stop:?}: {cut:?} of {text:?}");
        assert_eq!(r["stop"]["finish_reason"], "stop");
    }

    // curl: health, models, and a raw event stream ending in [DONE].
    assert_eq!(curl(&server.base, "/health", None).0, 200);
    let (code, body) = curl(&server.base, "/v1/models", None);
    assert_eq!((code, json(&body)["data"][0]["id"].as_str()), (200, Some(MODEL)));
    let (code, body) = curl(&server.base, "/v1/chat/completions", Some(&chat_body(max_tokens, r#","stream":true"#)));
    assert_eq!(code, 200);
    let data: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{body}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| json(d)).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, text);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], finish);
    assert_eq!(last["usage"], *usage);
    assert_eq!(last["hierspec"]["method"], "ar");
}

#[test]
fn bad_requests_get_openai_errors() {
    // A small context makes "beyond the context" cheap to reach.
    let server = Server::start(&["--method", "ar,eagle", "--eagle", "random", "--max-context", "128"]);
    let long = "word ".repeat(400);
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        ("/v1/chat/completions", "{not json".into(), 400, None),
        ("/v1/chat/completions", "[1, 2]".into(), 400, None),
        ("/v1/chat/completions", r#"{"messages":"hello"}"#.into(), 400, None),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":"ten"}"#.into(), 400, None),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#.into(), 400, None),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"stream":"yes"}"#.into(), 400, None),
        ("/v1/chat/completions", r#"{"messages":[]}"#.into(), 400, Some("messages")),
        ("/v1/chat/completions", r#"{"model":"x"}"#.into(), 400, None),
        ("/v1/chat/completions", r#"{"messages":[{"role":"robot","content":"hi"}]}"#.into(), 400, Some("messages")),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#.into(), 400, Some("messages")),
        ("/v1/chat/completions", format!(r#"{{"messages":[{{"role":"user","content":"{long}"}}]}}"#), 400, Some("messages")),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":0}"#.into(), 400, Some("max_tokens")),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":-3}"#.into(), 400, Some("max_tokens")),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":1000000000000}"#.into(), 400, Some("max_tokens")),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"temperature":-0.5}"#.into(), 400, Some("temperature")),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"top_p":0}"#.into(), 400, Some("top_p")),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"n":2}"#.into(), 400, Some("n")),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"seed":-1}"#.into(), 400, Some("seed")),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"stop":["a","b","c","d","e"]}"#.into(), 400, Some("stop")),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"method":"hier"}"#.into(), 400, Some("method")),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"method":"beam"}"#.into(), 400, None),
        ("/v1/completions", r#"{"prompt":""}"#.into(), 400, Some("prompt")),
        ("/v1/completions", r#"{"prompt":["a","b"]}"#.into(), 400, Some("prompt")),
        ("/v1/completions", r#"{"prompt":42}"#.into(), 400, None),
        ("/v1/completions", format!(r#"{{"prompt":"{long}"}}"#), 400, Some("messages")),
        ("/v1/nothing", "{}".into(), 404, None),
    ];
    for (path, body, status, param) in &cases {
        let (code, text) = curl(&server.base, path, Some(body));
        let short: String = body.chars().take(80).collect();
        assert_eq!(code, *status, "{path} {short}: {text}");
        let err = json(&text);
        assert!(err["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{short}: {text}");
        assert!(err["error"]["type"].is_string(), "{text}");
        if let Some(p) = param {
            assert_eq!(err["error"]["param"], *p, "{short}: {text}");
        }
    }
    // Still serving: unknown fields are ignored, a good request is answered.
    assert_eq!(curl(&server.base, "/health", None).0, 200);
    let (code, text) = curl(&server.base, "/v1/chat/completions", Some(&chat_body(4, r#","logit_bias":null,"user":"u","method":"eagle""#)));
    assert_eq!(code, 200, "{text}");
    assert_eq!(json(&text)["hierspec"]["method"], "eagle");
}

#[test]
fn concurrent_clients_and_a_client_that_leaves() {
    let server = Arc::new(Server::start(&["--queue", "4"]));
    // 16 clients at once: each answered (200) or refused (429), none lost or left hanging.
    let started = Instant::now();
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let base = server.base.clone();
            std::thread::spawn(move || {
                let stream = if i % 2 == 0 { r#","stream":true"# } else { "" };
                curl(&base, "/v1/chat/completions", Some(&chat_body(8, stream)))
            })
        })
        .collect();
    let results: Vec<(u16, String)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let refused = results.iter().filter(|r| r.0 == 429).count();
    assert_eq!(ok + refused, 16, "{results:?}");
    eprintln!("16 clients at once, queue 4: {ok} answered, {refused} refused");
    assert!(ok >= 1 && ok <= 16, "{results:?}");
    for (code, body) in &results {
        if *code == 429 {
            assert_eq!(json(body)["error"]["type"], "rate_limit_exceeded");
        } else if body.starts_with("data: ") {
            assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
        } else {
            assert!(json(body)["choices"][0]["message"]["content"].is_string(), "{body}");
        }
    }
    assert!(started.elapsed() < Duration::from_secs(600));
    assert_eq!(curl(&server.base, "/health", None).0, 200);

    // A streaming client killed after its first chunk: its generation stops at the next round,
    // and the next request is served.
    let mut child = Command::new("curl")
        .args(["-sS", "-N", "-H", "Content-Type: application/json", "--data-binary"])
        .arg(chat_body(2000, r#","stream":true,"ignore_eos":true"#))
        .arg(format!("{}/v1/chat/completions", server.base))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("data: "), "{first}");
    child.kill().unwrap();
    child.wait().unwrap();
    let t = Instant::now();
    let (code, text) = curl(&server.base, "/v1/chat/completions", Some(&chat_body(4, "")));
    assert_eq!(code, 200, "{text}");
    let log = server.log();
    assert!(log.contains("stopped after") && log.contains("the client left"), "no early stop in the log:\n{log}");
    let stopped = log.lines().find(|l| l.contains("the client left")).unwrap_or_default();
    eprintln!("{stopped}; the request after it took {:.1} s", t.elapsed().as_secs_f64());
}
