#!/usr/bin/env bash
# Runs llama-server's own test suite (shared/peer-suite) against orchard-server.
# The suite's runner fetches llama.cpp's tests from a PyPI sdist, whose download fails here for
# metadata reasons; when a llama.cpp source tree is at hand ($LLAMA_CPP_SRC, default
# /work/llama.cpp-src) its tests and templates are copied into the runner's cache first, exactly
# where the runner would have put them.
# usage: tests/server/peer-suite.sh [pytest args...]   (default: the runner's default selection)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SUITE=${PEER_SUITE:-$ROOT/../shared/peer-suite}
[[ -x $SUITE/run ]] || SUITE=/work/shared/peer-suite
CACHE=${PEER_SUITE_CACHE:-$HOME/.cache/orchard-peer-suite}
SRC=${LLAMA_CPP_SRC:-/work/llama.cpp-src}
if [[ ! -d $CACHE/llama.cpp/tools/server/tests && -d $SRC/tools/server/tests ]]; then
  mkdir -p "$CACHE/llama.cpp/tools/server" "$CACHE/llama.cpp/models"
  cp -r "$SRC/tools/server/tests" "$CACHE/llama.cpp/tools/server/"
  cp -r "$SRC/models/templates" "$CACHE/llama.cpp/models/"
fi
BIN=${ORCHARD_SERVER_BIN:-}
if [[ -z $BIN ]]; then
  (cd "$ROOT" && cargo build -q --release -p orchard-server)
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/orchard-server
fi
MODEL=${ORCHARD_MODELS:-$ROOT/models}/SmolLM2-135M-Instruct.Q4_1.gguf
SERVER_BIN=$BIN MODEL=$MODEL PEER_SUITE_CACHE=$CACHE exec "$SUITE/run" "$@"
