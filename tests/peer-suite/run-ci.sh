#!/usr/bin/env bash
# llama-server's own pytest suite against orchard-server on SmolLM2 (see README.md here; `run`
# is the shared harness, copied so the repository needs nothing outside itself).
# The gate: every test of the files the server issue targets (test_tokenize, test_basic,
# test_completion, test_chat_completion, test_metrics, test_security), less the tests that fail
# on the real llama-server with SmolLM2 (smollm2-known-fail.txt) and our own known gaps
# (orchard-known-fail.txt, each explained there and in the issue notes).
# ORCHARD_PEER_FULL=1 also runs the whole default selection and prints its pass count.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export SERVER_BIN=${SERVER_BIN:-$ROOT/target/release/orchard-server}
export MODEL=${ORCHARD_MODELS:-$ROOT/models}/SmolLM2-135M-Instruct.Q4_1.gguf
DESELECT=$(mktemp)
trap 'rm -f "$DESELECT"' EXIT
grep -hv '^#' "$HERE/smollm2-known-fail.txt" "$HERE/orchard-known-fail.txt" > "$DESELECT"
export LLAMA_TEST_DESELECT_FILE="$DESELECT"
bash "$HERE/run" unit/test_tokenize.py unit/test_basic.py unit/test_completion.py \
  unit/test_chat_completion.py unit/test_metrics.py unit/test_security.py -m "not slow"
if [[ ${ORCHARD_PEER_FULL:-0} == 1 ]]; then
  bash "$HERE/run" || true
fi
