//! Mutations of a seed file: byte-level ones for binary formats (bit flips, interesting integers and
//! floats written over fields, truncation at the format's own structural boundaries, cut and
//! duplicated ranges, invalid UTF-8) and structure-aware ones for JSON (a node replaced by a huge
//! number, NaN, a wrong type, a huge string or array, deep nesting; keys dropped or renamed).

use serde_json::Value;

/// SplitMix64: small, seedable, the same sequence on every platform (a run replays from its seed).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, n) (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Integers that break parsers: zero, one, sign and width limits, counts no file can hold.
const INTS: [u64; 14] = [0, 1, 2, 7, 8, 0x7F, 0xFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 32, 1 << 40, 1 << 60, u64::MAX];
/// f32 and f64 bit patterns: NaN, infinities, the largest, subnormal, negative zero.
const F32S: [u32; 6] = [0x7FC0_0000, 0x7F80_0000, 0xFF80_0000, 0x7F7F_FFFF, 0x0000_0001, 0x8000_0000];
const F64S: [u64; 4] = [0x7FF8_0000_0000_0000, 0x7FF0_0000_0000_0000, 0xFFF0_0000_0000_0000, 0x7FEF_FFFF_FFFF_FFFF];

/// One to four byte-level mutations of `seed`. `bounds` are the offsets where the format's fields
/// and sections begin or end (truncation prefers them).
pub fn bytes(seed: &[u8], bounds: &[usize], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.push(rng.next_u64() as u8);
            continue;
        }
        let at = if !bounds.is_empty() && rng.chance(2) { (*rng.pick(bounds)).min(b.len() - 1) } else { rng.below(b.len()) };
        match rng.below(10) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = *rng.pick(&[0u8, 1, 0x7F, 0x80, 0xFF]),
            2 => {
                let v = *rng.pick(&INTS);
                let w = *rng.pick(&[1usize, 2, 4, 8]);
                put(&mut b, at, &v.to_le_bytes()[..w]);
            }
            3 => {
                if rng.chance(2) {
                    put(&mut b, at, &rng.pick(&F32S).to_le_bytes());
                } else {
                    put(&mut b, at, &rng.pick(&F64S).to_le_bytes());
                }
            }
            // Truncation, at a boundary half the time.
            4 | 5 => b.truncate(at),
            6 => {
                let end = (at + 1 + rng.below(256)).min(b.len());
                b.drain(at..end);
            }
            7 => {
                let end = (at + 1 + rng.below(256)).min(b.len());
                let copy = b[at..end].to_vec();
                let to = rng.below(b.len());
                b.splice(to..to, copy);
            }
            // Invalid UTF-8 where strings live.
            8 => b.insert(at, *rng.pick(&[0xC3u8, 0xFF, 0xED, 0xF8])),
            _ => {
                // A length field read as one more or one fewer than it says.
                let w = if rng.chance(2) { 4 } else { 8 };
                if at + w <= b.len() {
                    let mut v = [0u8; 8];
                    v[..w].copy_from_slice(&b[at..at + w]);
                    let n = u64::from_le_bytes(v);
                    let n = if rng.chance(2) { n.wrapping_add(1) } else { n.wrapping_sub(1) };
                    put(&mut b, at, &n.to_le_bytes()[..w]);
                }
            }
        }
    }
    b
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    let end = (at + v.len()).min(b.len());
    b[at..end].copy_from_slice(&v[..end - at]);
}

/// A safetensors file with its JSON header mutated (dtypes, shapes, offsets past the end or
/// overlapping, names) and the length prefix rewritten to fit, so the mutation reaches the tensor
/// table instead of stopping at the prefix; half the time the bytes are mutated instead.
pub fn safetensors(seed: &[u8], bounds: &[usize], rng: &mut Rng) -> Vec<u8> {
    let n = seed.get(..8).map(|h| u64::from_le_bytes(h.try_into().expect("8 bytes")) as usize);
    let Some(header) = n.and_then(|n| seed.get(8..8 + n)) else { return bytes(seed, bounds, rng) };
    if rng.chance(2) {
        return bytes(seed, bounds, rng);
    }
    let header = json(header, rng);
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(&seed[8 + n.unwrap_or(0)..]);
    out
}

/// Strings worth trying where a config or tokenizer holds a string.
const STRINGS: [&str; 23] = [
    "", "llama", "qwen2", "mistral", "gptq", "gptq_v2", "awq", "gemm", "gemv", "llama3", "bfloat16", "F32", "F16", "BF16", "F64", "I32", "I64", "U8",
    "BOOL", "F8_E4M3", "\u{0}", "\u{1F4A5}", "{{ messages }}",
];

/// One to three mutations of a JSON document: most keep it valid JSON with a wrong value somewhere,
/// some break the text itself (truncation, invalid UTF-8, NaN literals, deep nesting).
pub fn json(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let Ok(mut doc) = serde_json::from_slice::<Value>(seed) else { return bytes(seed, &[], rng) };
    let mut strings = Vec::new();
    collect_strings(&doc, &mut strings);
    for _ in 0..1 + rng.below(3) {
        let nodes = count(&doc);
        let target = rng.below(nodes);
        let mut i = 0;
        mutate_node(&mut doc, target, &mut i, &strings, rng);
    }
    let mut text = serde_json::to_vec(&doc).unwrap_or_default();
    match rng.below(12) {
        0 => {
            let at = rng.below(text.len().max(1));
            text.truncate(at);
        }
        1 => {
            let at = rng.below(text.len().max(1));
            text.insert(at.min(text.len()), 0xFF);
        }
        2 => {
            // Bare NaN / Infinity where a number stood (not JSON; some parsers take them).
            if let Some(at) = text.iter().position(|c| c.is_ascii_digit()) {
                let lits: [&[u8]; 4] = [b"NaN", b"Infinity", b"-Infinity", b"1e999"];
                let lit = *rng.pick(&lits);
                text.splice(at..at + 1, lit.iter().copied());
            }
        }
        3 => {
            // Nesting deeper than any parser's stack should follow.
            let depth = 100_000;
            let mut deep = vec![b'['; depth];
            deep.extend(std::iter::repeat_n(b']', depth));
            if let Some(at) = text.iter().position(|&c| c == b':') {
                text.splice(at + 1..at + 1, deep.into_iter().chain(*b","));
            }
        }
        _ => {}
    }
    text
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.len() < 64 => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.push(k.clone());
            collect_strings(x, out)
        }),
        _ => {}
    }
}

fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

/// Mutate the `target`-th node (pre-order) of `v`; `i` counts nodes visited.
fn mutate_node(v: &mut Value, target: usize, i: &mut usize, strings: &[String], rng: &mut Rng) -> bool {
    if *i == target {
        *v = replacement(v, strings, rng);
        return true;
    }
    *i += 1;
    match v {
        Value::Array(a) => {
            for x in a.iter_mut() {
                if mutate_node(x, target, i, strings, rng) {
                    return true;
                }
            }
        }
        Value::Object(o) => {
            // Sometimes act on the object's keys instead of a value.
            if rng.chance(16) && !o.is_empty() {
                let keys: Vec<String> = o.keys().cloned().collect();
                let key = rng.pick(&keys).clone();
                let val = o.remove(&key).unwrap_or(Value::Null);
                if rng.chance(2) {
                    o.insert(format!("{key}_"), val);
                }
                return true;
            }
            for (_, x) in o.iter_mut() {
                if mutate_node(x, target, i, strings, rng) {
                    return true;
                }
            }
        }
        _ => {}
    }
    false
}

fn replacement(v: &Value, strings: &[String], rng: &mut Rng) -> Value {
    use serde_json::json;
    match rng.below(12) {
        0 => json!(*rng.pick(&[0i64, -1, 1, 2, 3, 7, 8, 255, 65_536, i32::MAX as i64, i64::MAX, i64::MIN])),
        1 => json!(*rng.pick(&[u64::MAX, 1 << 32, 1 << 40, 1 << 53, 1 << 60])),
        2 => json!(*rng.pick(&[0.5f64, -0.0, 1e-320, 1e308, -1e308, 3.4e38, 1e-9])),
        3 => Value::Null,
        4 => json!(rng.chance(2)),
        5 => {
            if !strings.is_empty() && rng.chance(2) {
                json!(rng.pick(strings))
            } else {
                json!(rng.pick(&STRINGS))
            }
        }
        6 => json!("x".repeat(1 << (10 + rng.below(10)))),
        7 => Value::Array((0..1usize << rng.below(17)).map(|i| json!(i)).collect()),
        8 => json!({}),
        9 => json!([]),
        10 => match v {
            // The same kind of value, nudged: a number off by one, a string cut, an array emptied.
            Value::Number(n) => json!(n.as_i64().map_or(n.as_f64().unwrap_or(0.0) * 2.0, |x| x.wrapping_add(1) as f64)),
            Value::String(s) => json!(s.chars().take(s.chars().count() / 2).collect::<String>()),
            Value::Array(a) => Value::Array(a.iter().take(a.len() / 2).cloned().collect()),
            other => other.clone(),
        },
        _ => json!([v.clone(), v.clone()]),
    }
}
