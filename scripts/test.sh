#!/usr/bin/env bash
# Sets up a fresh machine and runs every check CI runs: formatting, clippy, the Rust test suite
# (release mode: the parity tests run real models), and the service-backed tests.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
export ORCHARD_MODELS="$ROOT/models"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
