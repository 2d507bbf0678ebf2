//! The loop: mutate one file of a target's seed directory, run the target's calls on it, and sort
//! the outcome. A panic is a crash (its input is saved); a call over a second is a hang; a call that
//! allocates more than its inputs could justify (64 bytes per input byte plus 64 MiB: dequantized
//! f32 weights, the tokenizer's tables) is an over-allocation. Errors are counted by their message
//! with numbers and paths blanked, so "unique errors" says how many distinct refusals the run met.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::alloc;
use crate::mutate::{self, Rng};
use crate::targets::{Kind, Target};

/// Slower than this is a hang.
pub const HANG: Duration = Duration::from_secs(1);
/// A call still running after this aborts the run (its input is in the target directory).
const STUCK: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: String,
    pub executions: usize,
    pub unique_errors: usize,
    pub accepted: usize,
    pub crashes: usize,
    pub hangs: usize,
    pub over_allocations: usize,
    pub max_ms: f64,
    pub slowest: String,
    pub peak_alloc_mb: f64,
    /// The first few crash messages, with the saved inputs.
    pub crash_notes: Vec<String>,
}

/// One input's outcome.
pub enum Outcome {
    Accepted,
    Refused(String),
    Crashed(String),
}

/// Run the target's calls once on its directory as it is now.
pub fn execute(target: &Target) -> Outcome {
    match catch_unwind(AssertUnwindSafe(|| (target.check)(&target.dir))) {
        Ok(Ok(())) => Outcome::Accepted,
        Ok(Err(e)) => Outcome::Refused(e),
        Err(payload) => Outcome::Crashed(
            payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "panic".into()),
        ),
    }
}

/// An error message with its numbers and paths blanked (what makes two refusals the same).
fn shape_of(msg: &str, dir: &Path) -> String {
    let msg = msg.replace(&dir.display().to_string(), "<dir>");
    let mut out = String::with_capacity(msg.len());
    let mut last_digit = false;
    for c in msg.chars().take(160) {
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('#');
            }
            last_digit = true;
        } else {
            out.push(c);
            last_digit = false;
        }
    }
    out
}

/// Panics print nothing while fuzzing (their messages are collected instead).
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}

/// `execs` mutated inputs of `target` from `seed`; crashing inputs go to `crash_dir`. The first
/// inputs truncate each binary file at each of its structural boundaries (up to half the budget).
pub fn fuzz(target: &Target, execs: usize, seed: u64, crash_dir: &Path) -> Report {
    let mut rng = Rng::new(seed ^ target.name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
    let mut report = Report {
        name: target.name.into(),
        executions: 0,
        unique_errors: 0,
        accepted: 0,
        crashes: 0,
        hangs: 0,
        over_allocations: 0,
        max_ms: 0.0,
        slowest: String::new(),
        peak_alloc_mb: 0.0,
        crash_notes: Vec::new(),
    };
    let mut errors = BTreeSet::new();
    let sweep: Vec<(usize, usize)> = target.files.iter().enumerate().filter(|(_, f)| f.kind == Kind::Bytes).flat_map(|(i, f)| f.bounds.iter().map(move |&b| (i, b))).take(execs / 2).collect();
    let watchdog = Watchdog::start(target.dir.clone());
    let mut slowest = (0, Vec::new());
    for e in 0..execs {
        let (fi, input, what) = if let Some(&(fi, b)) = sweep.get(e) {
            let f = &target.files[fi];
            (fi, f.seed[..b.min(f.seed.len())].to_vec(), format!("{} cut at {b}", f.file))
        } else {
            let fi = rng.below(target.files.len());
            let f = &target.files[fi];
            let input = match f.kind {
                Kind::Bytes if f.file.ends_with(".safetensors") => mutate::safetensors(&f.seed, &f.bounds, &mut rng),
                Kind::Bytes => mutate::bytes(&f.seed, &f.bounds, &mut rng),
                Kind::Json => mutate::json(&f.seed, &mut rng),
            };
            (fi, input, format!("{} mutation {e}", f.file))
        };
        let inputs: usize = target.files.iter().enumerate().map(|(i, f)| if i == fi { input.len() } else { f.seed.len() }).sum();
        let base = alloc::reset_peak();
        watchdog.arm();
        let (outcome, ms) = try_input(target, fi, &input);
        watchdog.disarm();
        let grew = alloc::peak().saturating_sub(base);
        report.executions += 1;
        report.peak_alloc_mb = report.peak_alloc_mb.max(grew as f64 / (1 << 20) as f64);
        if grew > 64 * inputs + (64 << 20) {
            report.over_allocations += 1;
            save(crash_dir, target, fi, &input, &mut report, format!("{what}: allocated {grew} bytes for {inputs} bytes of input"));
        }
        if ms > report.max_ms {
            report.max_ms = ms;
            report.slowest = what.clone();
            slowest = (fi, input.clone());
        }
        if ms > HANG.as_secs_f64() * 1e3 {
            report.hangs += 1;
            save(crash_dir, target, fi, &input, &mut report, format!("{what}: {ms:.0} ms"));
        }
        match outcome {
            Outcome::Accepted => report.accepted += 1,
            Outcome::Refused(msg) => {
                errors.insert(shape_of(&msg, &target.dir));
            }
            Outcome::Crashed(msg) => {
                report.crashes += 1;
                save(crash_dir, target, fi, &input, &mut report, format!("{what}: panic: {msg}"));
            }
        }
    }
    report.unique_errors = errors.len();
    // The slowest input, to time it again alone (`replay` takes it from there).
    let _ = std::fs::create_dir_all(crash_dir);
    let _ = std::fs::write(crash_dir.join(format!("{}-slowest__{}", target.name, target.files[slowest.0].file)), &slowest.1);
    report
}

/// Run the target's calls with file `fi` replaced by `input`, then put the seed back (so that each
/// input mutates one file): the outcome and how long the calls took, in ms.
fn try_input(target: &Target, fi: usize, input: &[u8]) -> (Outcome, f64) {
    let path = target.dir.join(&target.files[fi].file);
    std::fs::write(&path, input).expect("write the input");
    let t0 = Instant::now();
    let outcome = execute(target);
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    std::fs::write(&path, &target.files[fi].seed).expect("restore the seed");
    (outcome, ms)
}

fn save(crash_dir: &Path, target: &Target, fi: usize, input: &[u8], report: &mut Report, note: String) {
    let _ = std::fs::create_dir_all(crash_dir);
    let n = report.crash_notes.len();
    let file = crash_dir.join(format!("{}-{n}__{}", target.name, target.files[fi].file));
    let _ = std::fs::write(&file, input);
    if n < 20 {
        report.crash_notes.push(format!("{note} (input: {})", file.display()));
    }
}

/// Aborts the process when one call runs past [`STUCK`], naming the directory holding its input.
struct Watchdog {
    since: Arc<AtomicU64>,
    epoch: Instant,
}

impl Watchdog {
    fn start(dir: PathBuf) -> Self {
        let since = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        let s = since.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let armed = s.load(Ordering::Relaxed);
            if armed > 0 && epoch.elapsed().as_millis() as u64 > armed + STUCK.as_millis() as u64 {
                eprintln!("fuzz: one call ran over {STUCK:?}: the input is in {}", dir.display());
                std::process::abort();
            }
        });
        Self { since, epoch }
    }
    fn arm(&self) {
        self.since.store(self.epoch.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
    }
    fn disarm(&self) {
        self.since.store(0, Ordering::Relaxed);
    }
}

/// Replay the saved inputs under `dir` (`<target>[-<tag>]__<file>`, as [`fuzz`] saves them): each
/// must be refused or accepted in under a second, never crash. Returns the failures.
pub fn replay(targets: &[Target], dir: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return failures };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let name = p.file_name().expect("a name").to_string_lossy().to_string();
        let Some((head, file)) = name.split_once("__") else { continue };
        // The longest target name that is the head, or the head's start before a '-'.
        let target = targets.iter().filter(|t| head == t.name || head.starts_with(&format!("{}-", t.name))).max_by_key(|t| t.name.len());
        let Some(target) = target else {
            failures.push(format!("{name}: no target for {head}"));
            continue;
        };
        let tname = target.name;
        let Some(fi) = target.files.iter().position(|f| f.file == file) else {
            failures.push(format!("{name}: target {tname} has no file {file}"));
            continue;
        };
        let (outcome, ms) = try_input(target, fi, &std::fs::read(&p).expect("read the saved input"));
        if let Outcome::Crashed(msg) = outcome {
            failures.push(format!("{name}: panic: {msg}"));
        } else if ms > HANG.as_secs_f64() * 1e3 {
            failures.push(format!("{name}: {ms:.0} ms"));
        }
    }
    failures
}
