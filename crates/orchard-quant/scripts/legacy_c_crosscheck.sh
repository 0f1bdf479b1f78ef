#!/usr/bin/env bash
# Builds legacy_c_ref.c against ggml's own C sources and runs the ignored Rust test that demands
# bit-identical legacy-format quantization, dequantization and dot products. Not part of CI
# (needs a llama.cpp tree and gcc). ggml's C is compiled with -ffp-contract=off: ggml-base is built
# without FMA and the generic dots are specified as unfused expressions.
#
# Usage: crates/orchard-quant/scripts/legacy_c_crosscheck.sh [LLAMA_CPP_SRC]
set -euo pipefail
SRC=${1:-${LLAMA_CPP_SRC:-/work/llama.cpp-src}}
G=$SRC/ggml
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
CFLAGS=(-O2 -ffp-contract=off -I "$G/include" -I "$G/src" -I "$G/src/ggml-cpu")
gcc "${CFLAGS[@]}" -c "$G/src/ggml-quants.c" -o "$OUT/ggml-quants.o"
gcc "${CFLAGS[@]}" -c "$G/src/ggml-cpu/quants.c" -o "$OUT/cpu-quants.o"
gcc "${CFLAGS[@]}" "$HERE/legacy_c_ref.c" "$OUT/ggml-quants.o" "$OUT/cpu-quants.o" -lm -o "$OUT/legacy_c_ref"
cd "$HERE/.."
LEGACY_C_HARNESS="$OUT/legacy_c_ref" cargo test --release -p orchard-quant --test legacy_c_crosscheck -- --ignored --nocapture
