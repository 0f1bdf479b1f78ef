#!/usr/bin/env bash
# Sets up a fresh machine and serves the default model (SmolLM2-135M-Instruct) with Orchard's
# OpenAI-compatible server on http://127.0.0.1:8080. Extra arguments go to `orchard serve`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/fetch-models.sh
cargo build --release -p orchard
exec target/release/orchard serve -m models/SmolLM2-135M-Instruct.Q4_1.gguf --host 127.0.0.1 --port 8080 "$@"
