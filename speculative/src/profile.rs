//! Wall-clock breakdown of the speculative methods' phases (draft levels, tree and sequence
//! verification, cache compaction), to find where a round spends its time on the GPU, where most
//! phases are bounded by host launches rather than device work. Off unless `HIERSPEC_PROFILE` is
//! set: `1` times each phase as the host sees it (launches are asynchronous, so device time lands on
//! the next phase that reads a result back); `sync` waits for the device at the end of every phase,
//! so each phase is charged its own device work (and the run gets slower). [`report`] renders the
//! totals; `bench` prints it at the end of a run.

use burn::tensor::Device;
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};


#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    Host,
    Sync,
}

pub fn mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("HIERSPEC_PROFILE").as_deref() {
        Ok("sync") => Mode::Sync,
        Ok("") | Ok("0") | Err(_) => Mode::Off,
        Ok(_) => Mode::Host,
    })
}

type Totals = BTreeMap<(&'static str, &'static str), (Duration, u64)>;

/// (scope, phase) -> (time, calls); the scope names the method being run.
fn totals() -> &'static Mutex<(Totals, &'static str)> {
    static T: OnceLock<Mutex<(Totals, &'static str)>> = OnceLock::new();
    T.get_or_init(|| Mutex::new((BTreeMap::new(), "")))
}

/// Charge the phases that follow to `scope` (a method's name).
pub fn scope(name: &'static str) {
    totals().lock().unwrap_or_else(|e| e.into_inner()).1 = name;
}

/// Run `f` as phase `name` (on `device`'s queue, for the `sync` mode).
pub fn phase<R>(name: &'static str, device: &Device, f: impl FnOnce() -> R) -> R {
    let m = mode();
    if m == Mode::Off {
        return f();
    }
    let t = Instant::now();
    let r = f();
    if m == Mode::Sync {
        // A failed sync surfaces at the next read of a result; the profile only loses accuracy.
        let _ = device.sync();
    }
    record(name, t.elapsed());
    r
}

pub fn record(name: &'static str, d: Duration) {
    let mut t = totals().lock().unwrap_or_else(|e| e.into_inner());
    let scope = t.1;
    let e = t.0.entry((scope, name)).or_default();
    e.0 += d;
    e.1 += 1;
}

/// Forget what was recorded (between warm-up and the timed runs).
pub fn reset() {
    totals().lock().unwrap_or_else(|e| e.into_inner()).0.clear();
}

/// A markdown table of the phases: calls, total ms, us per call; empty when profiling is off.
pub fn report() -> String {
    if mode() == Mode::Off {
        return String::new();
    }
    let t = totals().lock().unwrap_or_else(|e| e.into_inner());
    let mut s = format!("phases ({:?} mode)\n| method | phase | calls | total ms | us per call |\n|---|---|---|---|---|\n", mode());
    for ((scope, name), (d, n)) in t.0.iter() {
        s += &format!("| {scope} | {name} | {n} | {:.1} | {:.1} |\n", d.as_secs_f64() * 1e3, d.as_secs_f64() * 1e6 / *n as f64);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_by_name() {
        scope("test");
        record("test.a", Duration::from_micros(30));
        record("test.a", Duration::from_micros(10));
        let t = totals().lock().unwrap();
        let (d, n) = t.0[&("test", "test.a")];
        assert_eq!((d, n), (Duration::from_micros(40), 2));
    }
}
