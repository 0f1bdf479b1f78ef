#!/usr/bin/env bash
# Builds vec_math_c_ref.cpp against ggml-cpu's vec.cpp the way llama.cpp builds it (g++ -O3 with
# gcc's default -ffp-contract=fast), once with -march=native (the AVX-512 build on the machines
# we validate on) and once with -march=x86-64-v3 (the AVX2 build), then runs the ignored Rust
# test that demands orchard-backend's vec_math.rs reproduce each build bit for bit. Not part of
# CI (needs a llama.cpp tree, g++ and an x86-64 CPU).
#
# Usage: crates/orchard-quant/scripts/vec_math_c_crosscheck.sh [LLAMA_CPP_SRC]
set -euo pipefail
SRC=${1:-${LLAMA_CPP_SRC:-/work/llama.cpp-src}}
G=$SRC/ggml
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
FLAGS=(-O3 -std=gnu++17 -DNDEBUG -D_GNU_SOURCE -I "$G/include" -I "$G/src" -I "$G/src/ggml-cpu")
for build in native:-march=native avx2:-march=x86-64-v3; do
    name=${build%%:*}
    arch=${build#*:}
    mkdir -p "$OUT/$name"
    g++ "${FLAGS[@]}" "$arch" -c "$G/src/ggml-cpu/vec.cpp" -o "$OUT/$name/vec.o"
    g++ "${FLAGS[@]}" "$arch" -c "$HERE/vec_math_c_ref.cpp" -o "$OUT/$name/harness.o"
    g++ "$OUT/$name"/*.o -o "$OUT/$name/vec_math_c_ref"
done
cd "$HERE/.."
VEC_MATH_C_HARNESS="$OUT/native/vec_math_c_ref" VEC_MATH_C_HARNESS_AVX2="$OUT/avx2/vec_math_c_ref" \
    cargo test --release -p orchard-quant --test vec_math -- --ignored --nocapture
