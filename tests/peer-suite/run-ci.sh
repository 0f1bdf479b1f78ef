#!/usr/bin/env bash
# llama-server's own pytest suite against orchard-server on SmolLM2 (see README.md here; `run`
# is the shared harness, copied so the repository needs nothing outside itself).
# Passes when every test of the files the server issue targets passes (test_tokenize,
# test_basic, test_completion, test_chat_completion, test_metrics, test_security); the whole
# default selection runs too and its pass count is printed, but other files may still fail.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export SERVER_BIN=${SERVER_BIN:-$ROOT/target/release/orchard-server}
export MODEL=${ORCHARD_MODELS:-$ROOT/models}/SmolLM2-135M-Instruct.Q4_1.gguf
bash "$HERE/run" unit/test_tokenize.py unit/test_basic.py unit/test_completion.py \
  unit/test_chat_completion.py unit/test_metrics.py unit/test_security.py -m "not slow"
target=$?
bash "$HERE/run" || true
exit $target
