#!/usr/bin/env bash
# Builds kquants_c_ref.c against ggml's own C sources and runs the ignored Rust test that demands
# bit-identical K-quant quantization and dot products. Not part of CI (needs a llama.cpp tree and
# gcc). ggml's C is compiled with -ffp-contract=off: ggml-base (the reference quantizers) is built
# without FMA, and the generic dots are specified as unfused expressions; letting gcc contract
# them changes results (the test then fails, which is how you know it is sensitive).
#
# Usage: crates/orchard-quant/scripts/kquants_c_crosscheck.sh [LLAMA_CPP_SRC]
set -euo pipefail
SRC=${1:-${LLAMA_CPP_SRC:-/work/llama.cpp-src}}
G=$SRC/ggml
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
CFLAGS=(-O2 -ffp-contract=off -I "$G/include" -I "$G/src" -I "$G/src/ggml-cpu")
gcc "${CFLAGS[@]}" -c "$G/src/ggml-quants.c" -o "$OUT/ggml-quants.o"
gcc "${CFLAGS[@]}" -c "$G/src/ggml-cpu/quants.c" -o "$OUT/cpu-quants.o"
gcc "${CFLAGS[@]}" "$HERE/kquants_c_ref.c" "$OUT/ggml-quants.o" "$OUT/cpu-quants.o" -lm -o "$OUT/kquants_c_ref"
cd "$HERE/.."
KQUANTS_C_HARNESS="$OUT/kquants_c_ref" cargo test --release -p orchard-quant --test kquants_c_crosscheck -- --ignored --nocapture
