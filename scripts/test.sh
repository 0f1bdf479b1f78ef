#!/usr/bin/env bash
# Sets up a fresh machine and runs every check CI runs: formatting, clippy, the Rust test suites
# (release mode: the parity tests run real models), the ledger's PostgreSQL tests against a real
# server, the GPU backend on Mesa's lavapipe, the OpenAI-client tests and llama-server's own test
# suite against `orchard serve`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
export ORCHARD_MODELS="$ROOT/models"
export WGPU_BACKEND=vulkan
step() { echo; echo "=== $* ($(date +%T))"; }

step "format"
cargo fmt --all -- --check
step "clippy"
cargo clippy --release --workspace --all-targets -- -D warnings
step "build"
cargo build --release --workspace --all-targets
step "rust tests"
export ORCHARD_TEST_POSTGRES_URL="$(bash crates/orchard-ledger/scripts/start-test-postgres.sh)"
cargo test --release --workspace
step "ledger on PostgreSQL (the #[ignore]d tests that need a server)"
cargo test --release -p orchard-ledger -- --ignored
step "ledger end to end on PostgreSQL (orchard serve --ledger postgres://..., SIGKILL under load)"
cargo test --release -p orchard --test ledger -- --ignored
step "OpenAI client tests against orchard-server"
ORCHARD_SERVER_BIN="$ROOT/target/release/orchard-server" bash tests/server/run.sh
step "llama-server's own test suite against orchard-server"
bash tests/peer-suite/run-ci.sh
step "done"
