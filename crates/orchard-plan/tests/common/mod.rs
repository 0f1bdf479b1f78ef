//! Helpers shared by the integration tests: where the test models are, and the crate's example
//! binaries (built on demand with the test's own profile, since `cargo test --test x` does not
//! build examples).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `ORCHARD_MODELS`, else `<workspace>/models`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("ORCHARD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

/// A test model; panics (the test fails) when it is missing.
pub fn model(name: &str) -> PathBuf {
    let p = models_dir().join(name);
    assert!(
        p.is_file(),
        "test model {} is missing (set ORCHARD_MODELS to the directory holding it)",
        p.display()
    );
    p
}

/// The path of example `name` built with the same profile as this test binary. `cargo test`
/// builds the examples before running tests; when only this test was built (`--test x`), the
/// example is built into its own target directory, since cargo holds the lock of ours.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // <target>/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/<profile>/deps");
    let path = profile_dir.join("examples").join(name);
    if path.is_file() {
        return path;
    }
    let profile = profile_dir.file_name().expect("profile directory");
    let target = profile_dir
        .parent()
        .expect("target directory")
        .join("orchard-plan-examples");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "orchard-plan", "--example", name])
        .env("CARGO_TARGET_DIR", &target);
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "building example {name} failed");
    let built = target.join(profile).join("examples").join(name);
    assert!(built.is_file(), "{} was not built", built.display());
    built
}

/// A `"key": number` field of the one-line JSON the examples print.
pub fn json_u64(json: &str, key: &str) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {json}"))
}
