//! Helpers shared by orchard-quant's integration tests: locating models and the Python reference
//! scripts, running them (failing loudly when Python or `gguf` is missing), a deterministic RNG,
//! scratch directories and bit-exact comparison of f32 arrays. Self-contained on purpose: it uses
//! only std so any test file can `mod common;` it.

// Each test binary compiles this module separately and uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `$ORCHARD_MODELS/<file>` (default `<workspace>/models/<file>`); panics when it is missing,
/// because a silently skipped model test would prove nothing.
pub fn model_path(file: &str) -> PathBuf {
    let dir = std::env::var_os("ORCHARD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("models"));
    let path = dir.join(file);
    assert!(
        path.is_file(),
        "model {} is missing (set ORCHARD_MODELS or run scripts/fetch-models.sh)",
        path.display()
    );
    path
}

/// A script in this crate's `scripts/` directory.
pub fn script_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Runs `python3 <script> <args>` (`$ORCHARD_PYTHON` overrides the interpreter) and panics with
/// its stderr if it cannot start or exits non-zero.
pub fn run_python(script: &str, args: &[&str]) {
    let python = std::env::var("ORCHARD_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let path = script_path(script);
    let out = Command::new(&python)
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} (needed for reference data): {e}"));
    assert!(
        out.status.success(),
        "{python} {} {args:?} failed ({}):\n{}{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("orchard-quant-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        ScratchDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn write_f32(path: &Path, values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write f32 file");
}

pub fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(
        bytes.len() % 4,
        0,
        "{} is not a whole number of f32",
        path.display()
    );
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// SplitMix64: tiny, deterministic and good enough to scatter test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn fill_bytes(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box-Muller), in f64 then rounded once.
    pub fn normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Distance in units in the last place between two finite f32 of the same sign (or zeros).
pub fn ulp_distance(a: f32, b: f32) -> u64 {
    // Map the sign-magnitude bit patterns onto a monotonic integer line.
    fn key(x: f32) -> i64 {
        let b = x.to_bits() as i32 as i64;
        if b < 0 {
            i64::from(i32::MIN) - b
        } else {
            b
        }
    }
    key(a).abs_diff(key(b))
}

/// Asserts `ours` and `reference` agree bit for bit, reporting how many elements differ, the
/// largest difference in ulps and the first few offenders.
pub fn assert_bits_equal(label: &str, ours: &[f32], reference: &[f32]) {
    assert_eq!(ours.len(), reference.len(), "{label}: length differs");
    let mut n_diff = 0usize;
    let mut max_ulp = 0u64;
    let mut examples = Vec::new();
    for (i, (&a, &b)) in ours.iter().zip(reference).enumerate() {
        if a.to_bits() != b.to_bits() {
            n_diff += 1;
            max_ulp = max_ulp.max(ulp_distance(a, b));
            if examples.len() < 5 {
                examples.push(format!(
                    "[{i}] ours {a:e} ({:#010x}) ref {b:e} ({:#010x})",
                    a.to_bits(),
                    b.to_bits()
                ));
            }
        }
    }
    assert!(
        n_diff == 0,
        "{label}: {n_diff} of {} values differ (max {max_ulp} ulp): {}",
        ours.len(),
        examples.join("; ")
    );
}
