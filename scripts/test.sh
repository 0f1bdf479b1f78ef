#!/usr/bin/env bash
# Sets up a fresh machine and runs every check CI runs: formatting, clippy, the Rust test suites
# (release mode: the parity tests run real models), the ledger's PostgreSQL tests against a real
# server, the GPU backend on Mesa's lavapipe, the OpenAI-client tests and llama-server's own test
# suite against `orchard serve`; and a check of the macOS (aarch64, Metal) build.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
export ORCHARD_MODELS="$ROOT/models"
export WGPU_BACKEND=vulkan
# CI machines' free disk varies (one CI run died with ENOSPC linking tests). Line tables in ~40
# release test binaries were most of the ~3.8 GB target dir; CI has no use for them.
export CARGO_PROFILE_RELEASE_DEBUG=false
step() { echo; echo "=== $* ($(date +%T))"; }
step "disk"
df -h "$ROOT" | tail -1

step "cargo check --target aarch64-apple-darwin (the Metal build; its own target dir, removed after)"
bash scripts/check-macos.sh
step "format"
cargo fmt --all -- --check
step "clippy"
cargo clippy --release --workspace --all-targets -- -D warnings
step "build"
cargo build --release --workspace --all-targets
step "rust tests"
export ORCHARD_TEST_POSTGRES_URL="$(bash crates/orchard-ledger/scripts/start-test-postgres.sh)"
cargo test --release --workspace
# `--workspace --test NAME` rather than `-p CRATE`: the same package selection as the step above,
# so the same feature resolution and no second build of the dependency graph.
step "ledger on PostgreSQL (the #[ignore]d tests that need a server)"
cargo test --release --workspace --test postgres -- --ignored
step "ledger end to end on PostgreSQL (orchard serve --ledger postgres://..., SIGKILL under load)"
cargo test --release --workspace --test ledger -- --ignored
step "OpenAI client tests against orchard-server"
ORCHARD_SERVER_BIN="$ROOT/target/release/orchard-server" bash tests/server/run.sh
step "llama-server's own test suite against orchard-server"
bash tests/peer-suite/run-ci.sh
step "done"
du -sh target; df -h "$ROOT" | tail -1
