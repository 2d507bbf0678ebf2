//! Fused kernels that declined their operands (a dtype, a layout, a mix of parts they do not take)
//! on a device that has them. The op still gives the right answer through a slower path, which
//! nobody would see: each kind is counted, warned about the first time, and reported by the
//! binaries' `--stats-json`. Backends without kernels (Flex, autodiff) are not fallbacks.

use std::collections::BTreeMap;
use std::sync::Mutex;

static COUNTS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// `kind` declined on `device`; counted only where the device has kernels.
#[cfg(feature = "cube")]
pub(crate) fn declined(kind: &'static str, device: &burn::tensor::Device) {
    if !crate::cube::has_kernels(device) {
        return;
    }
    let mut counts = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let n = counts.entry(kind).or_insert(0);
    if *n == 0 {
        eprintln!("warning: the {kind} kernel declined its operands; a slower path runs instead (counted in --stats-json)");
    }
    *n += 1;
}

/// Declines so far in this process, by kernel.
pub fn counts() -> BTreeMap<String, u64> {
    COUNTS.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.to_string(), *v)).collect()
}
