//! How the benchmark binaries finish: print their table, write the JSON they were asked for, and turn
//! any error into a message and exit status 1.

use std::path::Path;

use hierspec_model::Result;

/// Print with `table` and write `json` when the job succeeded; otherwise report the error and exit 1.
pub fn finish<R: serde::Serialize>(result: Result<R>, json: Option<&Path>, table: impl FnOnce(&R)) {
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    table(&r);
    if let Some(p) = json {
        if let Err(e) = std::fs::write(p, serde_json::to_string_pretty(&r).expect("report serialises")) {
            eprintln!("error: {}: {e}", p.display());
            std::process::exit(1);
        }
    }
}

/// The median of `v` (the upper one of an even count; NaN when empty). Sorts `v`.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
