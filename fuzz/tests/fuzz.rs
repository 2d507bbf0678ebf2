//! A short fuzzing budget per target (CI), and every input saved under assets/fuzz/ replayed: each
//! must be refused or accepted in under a second, never crash.

use hierspec_fuzz::{alloc, run, targets, Counting};

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn every_parser_survives_a_short_budget_and_the_saved_inputs() {
    assert!(alloc::counting(), "the counting allocator is installed");
    let work = std::env::temp_dir().join(format!("hierspec-fuzz-test-{}", std::process::id()));
    let all = targets::all(&work).expect("seed directories");
    // The seeds themselves load (a target whose seed is refused would fuzz nothing but its error path).
    for t in &all {
        assert!(matches!(run::execute(t), run::Outcome::Accepted), "seed of {} is not accepted", t.name);
    }
    run::quiet_panics();
    let saved = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/fuzz");
    let failures = run::replay(&all, &saved);
    let crashes = std::env::temp_dir().join(format!("hierspec-fuzz-test-crashes-{}", std::process::id()));
    let execs: usize = std::env::var("HIERSPEC_FUZZ_EXECS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let mut bad = Vec::new();
    for t in &all {
        let r = run::fuzz(t, execs, 7, &crashes);
        assert_eq!(r.executions, execs);
        if r.crashes + r.hangs + r.over_allocations > 0 {
            bad.extend(r.crash_notes.clone());
        }
    }
    let _ = std::panic::take_hook();
    let _ = std::fs::remove_dir_all(&work);
    if bad.is_empty() {
        // Only the slowest inputs are there: nothing to keep.
        let _ = std::fs::remove_dir_all(&crashes);
    }
    assert!(failures.is_empty(), "saved inputs: {failures:#?}");
    assert!(bad.is_empty(), "fuzzing found: {bad:#?}");
}
