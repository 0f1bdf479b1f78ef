//! How much memory this process may use before the OS swaps or kills it: the smallest of the
//! cgroup limit (v2 `memory.max` of this cgroup and its ancestors, v1 `memory.limit_in_bytes`),
//! `MemAvailable` and `RLIMIT_AS`; on macOS the physical memory (`hw.memsize`). GPU capacity
//! comes from the caller, which knows the adapter.
//!
//! Each bound is turned into "bytes this process can hold in total", the quantity the plan
//! predicts (its peak resident set):
//! - MemAvailable excludes what we already hold, so our current RSS is added back.
//! - A cgroup's limit is shared with everything in it: from `memory.max` we subtract what the
//!   cgroup uses that cannot be reclaimed (`memory.current` less reclaimable file cache, shmem
//!   kept), then add back our own anonymous memory, which the plan already counts.
//! - RLIMIT_AS bounds address space, which is at least the resident set, so the limit itself is
//!   compared with the plan (a plan above it certainly fails; one below it usually works).

// The /proc and cgroup parsers are Linux-only at run time but compiled (and unit-tested)
// everywhere.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::path::{Path, PathBuf};

/// One bound on the memory this process can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemorySource {
    /// Where the number comes from (`MemAvailable`, `cgroup memory.max (/user.slice)`, ...).
    pub name: String,
    pub bytes: u64,
}

/// Memory available to this process, per device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvailableMemory {
    /// Every bound found; the smallest is `cpu_bytes`.
    pub sources: Vec<MemorySource>,
    pub cpu_bytes: u64,
    pub cpu_source: String,
    /// The GPU adapter's memory (from the caller), `None` when unknown or absent.
    pub gpu_bytes: Option<u64>,
}

impl AvailableMemory {
    /// A fixed figure (tests, or a caller that knows better).
    pub fn fixed(cpu_bytes: u64, gpu_bytes: Option<u64>) -> AvailableMemory {
        AvailableMemory {
            sources: vec![MemorySource {
                name: "given".into(),
                bytes: cpu_bytes,
            }],
            cpu_bytes,
            cpu_source: "given".into(),
            gpu_bytes,
        }
    }

    fn from_sources(sources: Vec<MemorySource>, gpu_bytes: Option<u64>) -> AvailableMemory {
        let smallest = sources.iter().min_by_key(|s| s.bytes).cloned();
        let (cpu_bytes, cpu_source) = match smallest {
            Some(s) => (s.bytes, s.name),
            None => (u64::MAX, "unknown (no limit found)".into()),
        };
        AvailableMemory {
            sources,
            cpu_bytes,
            cpu_source,
            gpu_bytes,
        }
    }
}

/// Measures the memory available to this process now.
pub fn available_memory(gpu_bytes: Option<u64>) -> AvailableMemory {
    AvailableMemory::from_sources(system_sources(), gpu_bytes)
}

#[cfg(target_os = "linux")]
fn system_sources() -> Vec<MemorySource> {
    let status = read("/proc/self/status");
    let own_rss = status
        .as_deref()
        .and_then(|s| kib_field(s, "VmRSS:"))
        .unwrap_or(0);
    let own_anon = status
        .as_deref()
        .and_then(|s| kib_field(s, "RssAnon:"))
        .unwrap_or(own_rss);
    let mut out = Vec::new();
    if let Some(meminfo) = read("/proc/meminfo") {
        let avail = kib_field(&meminfo, "MemAvailable:")
            .or_else(|| Some(kib_field(&meminfo, "MemFree:")? + kib_field(&meminfo, "Cached:")?));
        if let Some(a) = avail {
            out.push(MemorySource {
                name: "MemAvailable".into(),
                bytes: a.saturating_add(own_rss),
            });
        }
    }
    if let Some(cg) = read("/proc/self/cgroup") {
        out.extend(cgroup_sources(&cg, Path::new("/sys/fs/cgroup"), own_anon));
    }
    if let Some(limit) = read("/proc/self/limits").and_then(|l| address_space_limit(&l)) {
        out.push(MemorySource {
            name: "RLIMIT_AS (ulimit -v)".into(),
            bytes: limit,
        });
    }
    out
}

#[cfg(target_os = "macos")]
fn system_sources() -> Vec<MemorySource> {
    // Unified memory: CPU and GPU share hw.memsize; the GPU's recommended working set (a Metal
    // figure) is what the caller passes as the GPU capacity.
    let out = std::process::Command::new("sysctl")
        .args(["-n", "hw.memsize"])
        .output();
    match out.ok().and_then(|o| String::from_utf8(o.stdout).ok()) {
        Some(s) => s
            .trim()
            .parse::<u64>()
            .ok()
            .map(|bytes| MemorySource {
                name: "hw.memsize".into(),
                bytes,
            })
            .into_iter()
            .collect(),
        None => Vec::new(),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn system_sources() -> Vec<MemorySource> {
    Vec::new()
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// A `Key:   123 kB` field of /proc/meminfo or /proc/self/status, in bytes.
pub(crate) fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The soft `Max address space` limit of /proc/self/limits, `None` when unlimited.
pub(crate) fn address_space_limit(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    line["Max address space".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A `key value` field of a cgroup `memory.stat`.
fn stat_field(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

/// A cgroup memory limit file's value, `None` for "max" or v1's "no limit" (a huge number).
fn limit_value(text: &str) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    (v < 1 << 60).then_some(v)
}

/// Bounds from the cgroups this process belongs to (`/proc/self/cgroup`, mounted at `root`).
pub(crate) fn cgroup_sources(proc_cgroup: &str, root: &Path, own_anon: u64) -> Vec<MemorySource> {
    let mut out = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if id == "0" && controllers.is_empty() {
            // v2: the limit of every ancestor applies; walk up to the root.
            let mut dir: PathBuf = root.join(rel);
            loop {
                if let Some(s) = v2_bound(&dir, root, own_anon) {
                    out.push(s);
                }
                if dir == root || !dir.pop() || !dir.starts_with(root) {
                    break;
                }
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            let dir = root.join("memory").join(rel);
            if let Some(s) = v1_bound(&dir, own_anon) {
                out.push(s);
            }
        }
    }
    out
}

fn v2_bound(dir: &Path, root: &Path, own_anon: u64) -> Option<MemorySource> {
    let max = limit_value(&read(dir.join("memory.max"))?)?;
    let current: u64 = read(dir.join("memory.current"))?.trim().parse().ok()?;
    let stat = read(dir.join("memory.stat")).unwrap_or_default();
    let file = stat_field(&stat, "file").unwrap_or(0);
    let shmem = stat_field(&stat, "shmem").unwrap_or(0);
    let pinned = current.saturating_sub(file.saturating_sub(shmem));
    let rel = dir.strip_prefix(root).unwrap_or(dir).display().to_string();
    Some(MemorySource {
        name: format!("cgroup memory.max (/{rel})"),
        bytes: max.saturating_sub(pinned).saturating_add(own_anon).min(max),
    })
}

fn v1_bound(dir: &Path, own_anon: u64) -> Option<MemorySource> {
    let max = limit_value(&read(dir.join("memory.limit_in_bytes"))?)?;
    let stat = read(dir.join("memory.stat")).unwrap_or_default();
    let pinned = stat_field(&stat, "total_rss")
        .or_else(|| stat_field(&stat, "rss"))
        .unwrap_or(0)
        + stat_field(&stat, "total_shmem")
            .or_else(|| stat_field(&stat, "shmem"))
            .unwrap_or(0);
    Some(MemorySource {
        name: "cgroup v1 memory.limit_in_bytes".into(),
        bytes: max.saturating_sub(pinned).saturating_add(own_anon).min(max),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_fields() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(1024 * 1024));
        assert_eq!(kib_field(status, "VmHWM:"), Some(2048 * 1024));
        assert_eq!(kib_field(status, "VmSwap:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max address space         1073741824           unlimited            bytes     \n";
        assert_eq!(address_space_limit(limits), Some(1 << 30));
        let unlimited =
            "Max address space         unlimited            unlimited            bytes\n";
        assert_eq!(address_space_limit(unlimited), None);
    }

    #[test]
    fn cgroup_v2_limit_of_an_ancestor_applies_and_page_cache_is_not_used() {
        let root = tempfile::tempdir().unwrap();
        let leaf = root.path().join("a/b");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(leaf.join("memory.max"), "max\n").unwrap();
        std::fs::write(leaf.join("memory.current"), "100\n").unwrap();
        let a = root.path().join("a");
        std::fs::write(a.join("memory.max"), "1000000\n").unwrap();
        std::fs::write(a.join("memory.current"), "600000\n").unwrap();
        // 500000 of the 600000 are page cache, 20000 of it shmem: 120000 are pinned.
        std::fs::write(
            a.join("memory.stat"),
            "anon 100000\nfile 500000\nshmem 20000\n",
        )
        .unwrap();
        let s = cgroup_sources("0::/a/b\n", root.path(), 30000);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].bytes, 1_000_000 - 120_000 + 30_000);
        assert!(s[0].name.contains("/a"), "{}", s[0].name);
    }

    #[test]
    fn cgroup_v1_memory_controller_line() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("memory/docker/x");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.limit_in_bytes"), "2000000\n").unwrap();
        std::fs::write(
            dir.join("memory.stat"),
            "cache 9\nrss 5\ntotal_rss 500000\ntotal_shmem 0\n",
        )
        .unwrap();
        let s = cgroup_sources("4:cpu:/docker/x\n5:memory:/docker/x\n", root.path(), 0);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].bytes, 1_500_000);
        // "no limit" on v1 is a huge number: not a bound
        std::fs::write(dir.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        assert!(cgroup_sources("5:memory:/docker/x\n", root.path(), 0).is_empty());
    }

    #[test]
    fn smallest_source_wins() {
        let a = AvailableMemory::from_sources(
            vec![
                MemorySource {
                    name: "MemAvailable".into(),
                    bytes: 10,
                },
                MemorySource {
                    name: "RLIMIT_AS (ulimit -v)".into(),
                    bytes: 4,
                },
            ],
            None,
        );
        assert_eq!(
            (a.cpu_bytes, a.cpu_source.as_str()),
            (4, "RLIMIT_AS (ulimit -v)")
        );
        #[cfg(target_os = "linux")]
        {
            let live = available_memory(Some(7));
            assert!(
                live.sources.iter().any(|s| s.name == "MemAvailable"),
                "{live:?}"
            );
            assert!(live.cpu_bytes > 0 && live.cpu_bytes < u64::MAX);
            assert_eq!(live.gpu_bytes, Some(7));
        }
    }
}
