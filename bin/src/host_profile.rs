//! `--host-profile <path>`: an in-process sampling profile of the host threads, for finding where
//! a decode step's host time goes when the GPU host has no `perf` (`../shared/spec/gpu.md`). Built
//! only with the `host-profile` feature (pprof-rs: SIGPROF sampling and unwinding in the process).
//!
//! Writes `<path>.folded` (one line per distinct stack, `thread;outer;...;inner count`, the format
//! of flamegraph.pl and inferno) and `<path>.svg` (a flame graph). The symbols come from the
//! binary's symbol table, so profile an unstripped binary.

use std::path::{Path, PathBuf};

use hierspec_model::{Error, Result};

/// A running profile; [`HostProfile::finish`] writes it.
pub struct HostProfile {
    #[cfg(feature = "host-profile")]
    guard: pprof::ProfilerGuard<'static>,
    path: PathBuf,
}

impl HostProfile {
    /// Start sampling every thread at `hz`, or do nothing without a path.
    pub fn start(path: Option<&Path>, hz: i32) -> Result<Option<Self>> {
        let Some(path) = path else { return Ok(None) };
        if !(1..=10_000).contains(&hz) {
            return Err(Error::Setting(format!("--host-profile-hz {hz}: between 1 and 10000")));
        }
        Self::start_sampling(path.to_path_buf(), hz).map(Some)
    }

    #[cfg(feature = "host-profile")]
    fn start_sampling(path: PathBuf, hz: i32) -> Result<Self> {
        // A sample whose innermost frame lies in one of these libraries is dropped: unwinding from
        // inside the unwinder's own library (or the vDSO) can deadlock. libc stays in (malloc and
        // memcpy are host time we want to see); `HIERSPEC_HOST_PROFILE_BLOCK=a,b` replaces the list.
        let block: Vec<String> = std::env::var("HIERSPEC_HOST_PROFILE_BLOCK")
            .map(|v| v.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect())
            .unwrap_or_else(|_| vec!["libgcc".into(), "vdso".into()]);
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(hz)
            .blocklist(&block)
            .build()
            .map_err(|e| Error::Setting(format!("host profile: {e}")))?;
        Ok(Self { guard, path })
    }

    #[cfg(not(feature = "host-profile"))]
    fn start_sampling(path: PathBuf, _hz: i32) -> Result<Self> {
        Err(Error::Setting(format!("--host-profile {}: this binary was built without the `host-profile` feature", path.display())))
    }

    /// Stop sampling; write the folded stacks and the flame graph, and print the hottest frames.
    #[cfg(feature = "host-profile")]
    pub fn finish(self) -> Result<()> {
        let report = self.guard.report().build().map_err(|e| Error::Setting(format!("host profile: {e}")))?;
        let mut lines: Vec<(String, isize)> = report
            .data
            .iter()
            .map(|(frames, count)| {
                // pprof keeps the innermost frame first.
                let mut stack = vec![frames.thread_name.replace(';', ":")];
                for frame in frames.frames.iter().rev() {
                    for sym in frame.iter().rev() {
                        stack.push(sym.name().replace(';', ":"));
                    }
                }
                (stack.join(";"), *count)
            })
            .collect();
        lines.sort();
        let folded: String = lines.iter().map(|(s, c)| format!("{s} {c}\n")).collect();
        let with_ext = |ext: &str| {
            let mut p = self.path.clone().into_os_string();
            p.push(ext);
            PathBuf::from(p)
        };
        let io = |p: &Path, e: std::io::Error| Error::Setting(format!("{}: {e}", p.display()));
        let folded_path = with_ext(".folded");
        std::fs::write(&folded_path, folded).map_err(|e| io(&folded_path, e))?;
        let svg_path = with_ext(".svg");
        let svg = std::fs::File::create(&svg_path).map_err(|e| io(&svg_path, e))?;
        report.flamegraph(svg).map_err(|e| Error::Setting(format!("{}: {e}", svg_path.display())))?;
        eprint!("{}", self_time_table(&lines, 25));
        Ok(())
    }

    #[cfg(not(feature = "host-profile"))]
    pub fn finish(self) -> Result<()> {
        let _ = &self.path;
        Ok(())
    }
}

/// The `top` frames by samples in which they are the innermost frame (self time), and by samples
/// that contain them (total time), from folded stacks.
pub fn self_time_table(lines: &[(String, isize)], top: usize) -> String {
    use std::collections::HashMap;
    let (mut own, mut total): (HashMap<&str, isize>, HashMap<&str, isize>) = Default::default();
    let mut all = 0isize;
    for (stack, count) in lines {
        all += count;
        let frames: Vec<&str> = stack.split(';').skip(1).collect();
        if let Some(leaf) = frames.last() {
            *own.entry(leaf).or_default() += count;
        }
        let mut seen = std::collections::HashSet::new();
        for f in frames {
            if seen.insert(f) {
                *total.entry(f).or_default() += count;
            }
        }
    }
    let mut out = format!("host profile: {all} samples\n");
    for (title, map) in [("self", &own), ("total", &total)] {
        let mut v: Vec<_> = map.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        out += &format!("| {title} % | samples | frame |\n|---|---|---|\n");
        for (name, n) in v.into_iter().take(top) {
            out += &format!("| {:.1} | {n} | {} |\n", 100.0 * *n as f64 / all.max(1) as f64, name.chars().take(160).collect::<String>());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_and_total_time_count_each_frame_once_per_stack() {
        let lines = vec![("main;a;b;a".to_string(), 3), ("main;a;c".to_string(), 1)];
        let t = self_time_table(&lines, 10);
        assert!(t.contains("4 samples"), "{t}");
        // a is the leaf of 3 samples and on every stack once (recursion not double counted).
        assert!(t.contains("| 75.0 | 3 | a |"), "{t}");
        assert!(t.contains("| 100.0 | 4 | a |"), "{t}");
        assert!(t.contains("| 25.0 | 1 | c |"), "{t}");
    }
}
