#!/usr/bin/env bash
# Runs the OpenAI-client tests against a freshly started orchard-server on loopback.
# usage: tests/server/run.sh [pytest args...]
# env:   ORCHARD_SERVER_BIN  server binary (default: builds target/release/orchard-server)
#        ORCHARD_MODELS      model directory (default: <repo>/models)
#        ORCHARD_TEST_VENV   virtualenv to use/create (default: ~/.cache/orchard-server-tests/venv)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MODEL=${ORCHARD_MODELS:-$ROOT/models}/SmolLM2-135M-Instruct.Q4_1.gguf
[[ -f $MODEL ]] || { echo "model missing: $MODEL" >&2; exit 1; }
VENV=${ORCHARD_TEST_VENV:-$HOME/.cache/orchard-server-tests/venv}
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c "import openai, jsonschema, pytest" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r "$HERE/requirements.txt"
fi
BIN=${ORCHARD_SERVER_BIN:-}
if [[ -z $BIN ]]; then
  (cd "$ROOT" && cargo build -q --release -p orchard-server)
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/orchard-server
fi
PORT=${ORCHARD_TEST_PORT:-$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
LOG=$(mktemp)
"$BIN" -m "$MODEL" --host 127.0.0.1 --port "$PORT" -c 4096 -np 4 --alias smol --strict-model \
  --api-key orchard-test-key --metrics >"$LOG" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 600); do
  if "$VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null; then break; fi
  if ! kill -0 $PID 2>/dev/null; then cat "$LOG" >&2; exit 1; fi
  sleep 0.1
done
export ORCHARD_BASE_URL="http://127.0.0.1:$PORT" ORCHARD_API_KEY=orchard-test-key ORCHARD_MODEL=smol
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$HERE" "$@"
