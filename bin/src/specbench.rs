//! Spec-Bench style measurement of real models: read the question file (JSONL: `question_id`,
//! `category`, `turns`), run every method on the same prompts with the same settings (batch 1,
//! greedy by default, a warm-up first; turn 2 follows the method's own answer to turn 1), and report
//! per prompt and per category: tokens/s over the decode phase (prefill timed apart), tau (target
//! bonus counted), inner tau (hier), forwards per token, speedup over `ar`, and any greedy mismatch
//! with `ar`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use hierspec_model::{Error, Result};
use hierspec_speculative::{GenerationStats, Sampler, SamplingParams};
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, Method};

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Question {
    pub question_id: serde_json::Value,
    pub category: String,
    pub turns: Vec<String>,
}

/// Read a Spec-Bench question file, keeping the first `per_category` questions of each category
/// (all when None) and only `categories` when given. Malformed lines are errors with their number.
pub fn read_questions(path: &Path, per_category: Option<usize>, categories: &[String]) -> Result<Vec<Question>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let q: Question = serde_json::from_str(line)
            .map_err(|e| Error::Setting(format!("{}:{}: not a Spec-Bench question ({e})", path.display(), i + 1)))?;
        if q.turns.is_empty() {
            return Err(Error::Setting(format!("{}:{}: question without turns", path.display(), i + 1)));
        }
        if !categories.is_empty() && !categories.contains(&q.category) {
            continue;
        }
        let n = seen.entry(q.category.clone()).or_default();
        if per_category.is_none_or(|k| *n < k) {
            *n += 1;
            out.push(q);
        }
    }
    if out.is_empty() {
        return Err(Error::Setting(format!("{}: no questions selected", path.display())));
    }
    Ok(out)
}

/// One method on one turn of one question.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub question_id: serde_json::Value,
    pub category: String,
    pub method: Method,
    pub turn: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub tok_s: f64,
    /// Tokens per target forward, the target's bonus token counted.
    pub tau: f64,
    /// hier: tokens per inner round (head -> intermediate), the intermediate's bonus counted.
    pub inner_tau: f64,
    pub inner_rounds: usize,
    pub inner_tokens: usize,
    pub target_forwards: usize,
    pub intermediate_forwards: usize,
    pub head_forwards: usize,
    pub draft_ms: f64,
    pub intermediate_ms: f64,
    pub verify_ms: f64,
    /// Greedy runs: whether the tokens equal `ar`'s on this turn (None without an `ar` run).
    pub matches_ar: Option<bool>,
    #[serde(skip)]
    pub tokens: Vec<u32>,
    #[serde(skip)]
    pub text: String,
}

impl Record {
    fn new(q: &Question, method: Method, turn: usize, tokens: Vec<u32>, text: String, s: &GenerationStats) -> Self {
        Record {
            question_id: q.question_id.clone(),
            category: q.category.clone(),
            method,
            turn,
            prompt_tokens: s.prompt_tokens,
            new_tokens: s.new_tokens,
            prefill_ms: s.prefill_ms,
            decode_ms: s.decode_ms,
            tok_s: s.decode_tok_s(),
            tau: s.tau(),
            inner_tau: s.inner_tau(),
            inner_rounds: s.inner_rounds,
            inner_tokens: s.inner_tokens,
            target_forwards: s.target_forwards,
            intermediate_forwards: s.intermediate_forwards,
            head_forwards: s.draft_forwards,
            draft_ms: s.draft_ms,
            intermediate_ms: s.intermediate_ms,
            verify_ms: s.verify_ms,
            matches_ar: None,
            tokens,
            text,
        }
    }
}

/// Mean figures of one method over a set of records.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub category: String,
    pub method: Method,
    pub turns: usize,
    pub new_tokens: usize,
    /// Mean of the per-turn decode tokens/s.
    pub tok_s: f64,
    /// Mean prefill per turn (timed apart from the decode: the prompt's forward, and for `eagle` and
    /// `hier` the head's pass over it), ms.
    pub prefill_ms: f64,
    /// Decode time over all turns, s.
    pub decode_s: f64,
    /// Emitted tokens per target forward over all turns (bonus counted).
    pub tau: f64,
    pub inner_tau: f64,
    /// Per emitted token.
    pub target_forwards_per_token: f64,
    pub intermediate_forwards_per_token: f64,
    /// Drafter forwards: the head for eagle and hier, the draft model for sd.
    pub head_forwards_per_token: f64,
    /// Mean tokens/s over `ar`'s mean tokens/s on the same turns.
    pub speedup: Option<f64>,
    pub mismatches: usize,
}

pub fn summarize(category: &str, method: Method, recs: &[&Record], ar_tok_s: Option<f64>) -> Summary {
    let n = recs.len().max(1) as f64;
    let sum = |f: &dyn Fn(&Record) -> f64| recs.iter().map(|r| f(r)).sum::<f64>();
    let decoded = sum(&|r| r.new_tokens.saturating_sub(1) as f64);
    let emitted = sum(&|r| r.new_tokens as f64).max(1.0);
    let tok_s = sum(&|r| r.tok_s) / n;
    let inner_rounds = sum(&|r| r.inner_rounds as f64);
    Summary {
        category: category.to_string(),
        method,
        turns: recs.len(),
        new_tokens: emitted as usize,
        tok_s,
        prefill_ms: sum(&|r| r.prefill_ms) / n,
        decode_s: sum(&|r| r.decode_ms) / 1e3,
        tau: decoded / sum(&|r| r.target_forwards as f64).max(1.0),
        inner_tau: if inner_rounds > 0.0 { sum(&|r| r.inner_tokens as f64) / inner_rounds } else { 0.0 },
        target_forwards_per_token: sum(&|r| r.target_forwards as f64) / emitted,
        intermediate_forwards_per_token: sum(&|r| r.intermediate_forwards as f64) / emitted,
        head_forwards_per_token: sum(&|r| r.head_forwards as f64) / emitted,
        speedup: ar_tok_s.map(|a| tok_s / a),
        mismatches: recs.iter().filter(|r| r.matches_ar == Some(false)).count(),
    }
}

/// Settings of a Spec-Bench run besides the engine's.
pub struct RunSpec<'a> {
    pub methods: &'a [Method],
    pub max_new: usize,
    pub turns: usize,
    pub params: SamplingParams,
    pub warmup_tokens: usize,
    pub answers_dir: Option<&'a Path>,
    pub model_id: &'a str,
}

/// Run every method on every question; progress on stderr.
pub fn run(engine: &Engine, questions: &[Question], spec: &RunSpec) -> Result<Vec<Record>> {
    let tok = &engine.target.tokenizer;
    let template = tok.chat_template.as_ref().ok_or_else(|| Error::Setting("the target has no chat template".into()))?;
    let stop = tok.eos_ids.clone();
    let bar = indicatif::ProgressBar::new((questions.len() * spec.methods.len()) as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed} < {eta}]").expect("template"));
    // Warm-up: every method on the first prompt and on the longest first turn (kernels compiled,
    // autotune, allocations). Kernels are specialised on cache lengths too: warmed on a short prompt
    // only, `eagle` once ran a 1,000-token summarization prompt at a seventh of its later speed.
    let mut warm = vec![tok.encode(&template.render(None, &[("user", &questions[0].turns[0])]))?];
    let mut longest = Vec::new();
    for q in questions {
        let ids = tok.encode(&template.render(None, &[("user", &q.turns[0])]))?;
        if ids.len() > longest.len() {
            longest = ids;
        }
    }
    if longest.len() > warm[0].len() {
        warm.push(longest);
    }
    for &m in spec.methods {
        bar.set_message(format!("warm-up {}", m.name()));
        let t = std::time::Instant::now();
        for ids in &warm {
            engine.run(m, ids, spec.warmup_tokens, &mut Sampler::new(spec.params)?, &stop, |_| {})?;
        }
        bar.suspend(|| eprintln!("warm-up {}: {:.1} s", m.name(), t.elapsed().as_secs_f64()));
    }
    // The phase profile (HIERSPEC_PROFILE) covers the timed runs only.
    hierspec_speculative::profile::reset();
    let mut records = Vec::new();
    for (qi, q) in questions.iter().enumerate() {
        for &m in spec.methods {
            bar.set_message(format!("{} {}", q.category, m.name()));
            hierspec_speculative::profile::scope(m.name());
            let mut sampler = Sampler::new(SamplingParams { seed: spec.params.seed + qi as u64, ..spec.params })?;
            let mut messages: Vec<(&str, String)> = Vec::new();
            for (turn, user) in q.turns.iter().take(spec.turns).enumerate() {
                messages.push(("user", user.clone()));
                let view: Vec<(&str, &str)> = messages.iter().map(|(r, t)| (*r, t.as_str())).collect();
                let ids = tok.encode(&template.render(None, &view))?;
                let (tokens, stats) = engine.run(m, &ids, spec.max_new, &mut sampler, &stop, |_| {})?;
                let answer: Vec<u32> = tokens.iter().copied().filter(|t| !stop.contains(t)).collect();
                let text = tok.decode(&answer)?;
                messages.push(("assistant", text.clone()));
                let r = Record::new(q, m, turn + 1, tokens, text, &stats);
                // One line per turn as it finishes, so a run cut short still reports what it did.
                bar.suspend(|| {
                    eprintln!(
                        "[{} q{} t{} {}] {} tokens, prefill {:.0} ms, {:.2} tok/s, tau {:.2}, inner tau {:.2}",
                        r.category, r.question_id, r.turn, m.name(), r.new_tokens, r.prefill_ms, r.tok_s, r.tau, r.inner_tau
                    )
                });
                records.push(r);
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    if spec.params.is_greedy() {
        mark_mismatches(&mut records);
    }
    if let Some(dir) = spec.answers_dir {
        write_answers(dir, spec.model_id, &records)?;
    }
    Ok(records)
}

/// Greedy: every method must emit `ar`'s tokens on every turn.
fn mark_mismatches(records: &mut [Record]) {
    let ar: BTreeMap<(String, usize), Vec<u32>> = records
        .iter()
        .filter(|r| r.method == Method::Ar)
        .map(|r| ((r.question_id.to_string(), r.turn), r.tokens.clone()))
        .collect();
    for r in records.iter_mut() {
        r.matches_ar = ar.get(&(r.question_id.to_string(), r.turn)).map(|t| *t == r.tokens);
    }
}

/// Spec-Bench answer files, one JSONL per method: `{question_id, answer_id, model_id, choices:
/// [{index, turns, new_tokens, wall_time}], tstamp}`.
fn write_answers(dir: &Path, model_id: &str, records: &[Record]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let methods: Vec<Method> = records.iter().fold(Vec::new(), |mut v, r| {
        if !v.contains(&r.method) {
            v.push(r.method);
        }
        v
    });
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    for m in methods {
        let path = dir.join(format!("{}.jsonl", m.name()));
        let mut f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut by_q: Vec<(serde_json::Value, Vec<&Record>)> = Vec::new();
        for r in records.iter().filter(|r| r.method == m) {
            match by_q.iter_mut().find(|(q, _)| *q == r.question_id) {
                Some((_, v)) => v.push(r),
                None => by_q.push((r.question_id.clone(), vec![r])),
            }
        }
        for (qid, recs) in by_q {
            let line = serde_json::json!({
                "question_id": qid,
                "answer_id": format!("{}-{}", m.name(), qid),
                "model_id": format!("{model_id}-{}", m.name()),
                "choices": [{
                    "index": 0,
                    "turns": recs.iter().map(|r| r.text.clone()).collect::<Vec<_>>(),
                    "new_tokens": recs.iter().map(|r| r.new_tokens).collect::<Vec<_>>(),
                    "wall_time": recs.iter().map(|r| (r.prefill_ms + r.decode_ms) / 1e3).collect::<Vec<_>>(),
                    "tau": recs.iter().map(|r| r.tau).collect::<Vec<_>>(),
                }],
                "tstamp": now,
            });
            writeln!(f, "{line}").map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Per category and overall, for every method: the summaries, `ar` first when present.
pub fn summaries(records: &[Record], methods: &[Method]) -> Vec<Summary> {
    let mut cats: Vec<String> = Vec::new();
    for r in records {
        if !cats.contains(&r.category) {
            cats.push(r.category.clone());
        }
    }
    cats.push("overall".into());
    let mut out = Vec::new();
    for c in &cats {
        let of = |m: Method| records.iter().filter(|r| r.method == m && (c == "overall" || &r.category == c)).collect::<Vec<_>>();
        let ar = methods.contains(&Method::Ar).then(|| summarize(c, Method::Ar, &of(Method::Ar), None).tok_s);
        for &m in methods {
            out.push(summarize(c, m, &of(m), ar));
        }
    }
    out
}

/// The markdown table of `summaries`.
pub fn table(summaries: &[Summary]) -> String {
    let mut s = String::from(
        "| category | method | turns | tokens | tok/s | speedup vs ar | tau (bonus counted) | inner tau | target fwd/token | intermediate fwd/token | drafter fwd/token | prefill ms / turn | decode s | mismatches vs ar |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for x in summaries {
        s += &format!(
            "| {} | {} | {} | {} | {:.2} | {} | {:.2} | {} | {:.3} | {:.3} | {:.3} | {:.1} | {:.2} | {} |\n",
            x.category,
            x.method.name(),
            x.turns,
            x.new_tokens,
            x.tok_s,
            x.speedup.map_or("-".into(), |v| format!("{v:.2}x")),
            x.tau,
            if x.inner_tau > 0.0 { format!("{:.2}", x.inner_tau) } else { "-".into() },
            x.target_forwards_per_token,
            x.intermediate_forwards_per_token,
            x.head_forwards_per_token,
            x.prefill_ms,
            x.decode_s,
            x.mismatches
        );
    }
    s
}

/// An SVG bar chart of the speedup over `ar` per category (groups) and method (bars), with a
/// dashed line at 1x. Written by hand: a few rectangles and labels do not need a plotting crate.
pub fn svg(summaries: &[Summary]) -> String {
    let methods: Vec<Method> = summaries.iter().map(|s| s.method).fold(Vec::new(), |mut v, m| {
        if m != Method::Ar && !v.contains(&m) {
            v.push(m);
        }
        v
    });
    let cats: Vec<&str> = summaries.iter().map(|s| s.category.as_str()).fold(Vec::new(), |mut v, c| {
        if !v.contains(&c) {
            v.push(c);
        }
        v
    });
    let value = |c: &str, m: Method| summaries.iter().find(|s| s.category == c && s.method == m).and_then(|s| s.speedup).unwrap_or(0.0);
    let top = cats.iter().flat_map(|c| methods.iter().map(move |m| value(c, *m))).fold(1.0f64, f64::max) * 1.15;
    let (bar, gap, h, left, bottom) = (18.0, 24.0, 260.0, 50.0, 60.0);
    let group = bar * methods.len() as f64 + gap;
    let width = left + group * cats.len() as f64 + 160.0;
    let y = |v: f64| 20.0 + h * (1.0 - v / top);
    let colors = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2"];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n",
        20.0 + h + bottom
    );
    s += &format!("<text x=\"4\" y=\"14\">speedup over ar (mean tok/s ratio)</text>\n");
    for t in 0..=4 {
        let v = top * t as f64 / 4.0;
        s += &format!("<text x=\"4\" y=\"{:.1}\">{v:.2}x</text>\n", y(v) + 4.0);
    }
    s += &format!("<line x1=\"{left}\" x2=\"{:.0}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>\n", width - 160.0, y(1.0), y(1.0));
    for (ci, c) in cats.iter().enumerate() {
        let x0 = left + ci as f64 * group;
        for (mi, m) in methods.iter().enumerate() {
            let v = value(c, *m);
            let x = x0 + mi as f64 * bar;
            s += &format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{c} {}: {v:.2}x</title></rect>\n",
                y(v),
                bar - 2.0,
                h + 20.0 - y(v),
                colors[mi % colors.len()],
                m.name()
            );
        }
        s += &format!("<text x=\"{:.1}\" y=\"{:.1}\" transform=\"rotate(30 {:.1} {:.1})\">{c}</text>\n", x0, h + 34.0, x0, h + 34.0);
    }
    for (mi, m) in methods.iter().enumerate() {
        let ly = 30.0 + 16.0 * mi as f64;
        s += &format!("<rect x=\"{:.0}\" y=\"{ly:.0}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{:.0}\" y=\"{:.0}\">{}</text>\n", width - 140.0, colors[mi % colors.len()], width - 125.0, ly + 9.0, m.name());
    }
    s + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(category: &str, method: Method, speedup: f64) -> Summary {
        Summary {
            category: category.into(),
            method,
            turns: 1,
            new_tokens: 10,
            tok_s: speedup,
            prefill_ms: 1.0,
            decode_s: 1.0,
            tau: 1.0,
            inner_tau: 0.0,
            target_forwards_per_token: 1.0,
            intermediate_forwards_per_token: 0.0,
            head_forwards_per_token: 0.0,
            speedup: Some(speedup),
            mismatches: 0,
        }
    }

    /// The harness end to end on SmolLM2 (CPU): warm-up on the first and the longest prompt, one
    /// record per question and method, greedy `sd` (SmolLM2 drafting for itself) equal to `ar`.
    #[cfg(feature = "cpu")]
    #[test]
    fn runs_every_method_on_every_question() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            engine: crate::engine::EngineArgs,
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/spec_bench/question.jsonl");
        let cats = ["coding".to_string(), "summarization".to_string()];
        let questions = read_questions(&root, Some(1), &cats).unwrap();
        assert_eq!(questions.len(), 2);
        let methods = [Method::Ar, Method::Sd];
        let args = Cli::parse_from(["t", "--model", "smollm2-135m", "--draft", "smollm2-135m", "--max-context", "2048"]).engine;
        let engine = Engine::load(args, &methods, &burn::tensor::Device::flex()).unwrap();
        let spec = RunSpec { methods: &methods, max_new: 6, turns: 1, params: SamplingParams::default(), warmup_tokens: 2, answers_dir: None, model_id: "smollm2-135m" };
        let records = run(&engine, &questions, &spec).unwrap();
        assert_eq!(records.len(), 4, "2 questions x 2 methods, turn 1");
        for r in &records {
            assert!(!r.tokens.is_empty() && r.tokens.len() <= 6, "{} {:?}: {} tokens", r.category, r.method, r.tokens.len());
            if r.method == Method::Sd {
                assert_eq!(r.matches_ar, Some(true), "{}: greedy sd differs from ar", r.category);
            }
        }
    }

    #[test]
    fn svg_has_one_bar_per_category_and_speculative_method() {
        let s = vec![summary("qa", Method::Ar, 1.0), summary("qa", Method::Hier, 2.5), summary("rag", Method::Ar, 1.0), summary("rag", Method::Hier, 0.5)];
        let svg = svg(&s);
        assert_eq!(svg.matches("<rect x=").count(), 2 + 1, "two bars and one legend swatch");
        assert!(svg.contains("qa hier: 2.50x") && svg.contains("rag hier: 0.50x"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn table_rows_have_a_cell_per_column() {
        let t = table(&[summary("qa", Method::Ar, 1.0), summary("qa", Method::Hier, 2.5)]);
        let cells = |line: &str| line.matches('|').count();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].contains("prefill ms / turn") && lines[0].contains("decode s"));
        assert!(lines.iter().all(|l| cells(l) == cells(lines[0])), "{t}");
    }

    #[test]
    fn malformed_question_lines_are_errors_with_their_number() {
        let dir = std::env::temp_dir().join(format!("hierspec-sb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("q.jsonl");
        std::fs::write(&p, "{\"question_id\": 1, \"category\": \"qa\", \"turns\": [\"hi\"]}\n{not json}\n").unwrap();
        let e = read_questions(&p, None, &[]).unwrap_err().to_string();
        assert!(e.contains("q.jsonl:2"), "{e}");
        std::fs::write(&p, "{\"question_id\": 1, \"category\": \"qa\", \"turns\": [\"a\"]}\n{\"question_id\": 2, \"category\": \"qa\", \"turns\": [\"b\"]}\n{\"question_id\": 3, \"category\": \"rag\", \"turns\": [\"c\"]}\n").unwrap();
        assert_eq!(read_questions(&p, Some(1), &[]).unwrap().len(), 2);
        assert_eq!(read_questions(&p, None, &["rag".to_string()]).unwrap().len(), 1);
        assert!(read_questions(&p, None, &["math".to_string()]).is_err());
    }
}
