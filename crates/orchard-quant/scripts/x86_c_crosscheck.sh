#!/usr/bin/env bash
# Builds x86_c_ref.c against ggml-cpu's x86 sources twice, the way llama.cpp builds them: once with
# -march=native (GGML_NATIVE=ON: on an AVX-512 machine that is the AVX-512 build) and once for a
# plain AVX2+FMA+F16C machine, both with gcc -O3 and its default -ffp-contract=fast (which fuses
# some of ggml's scalar `a += b * c` into FMAs, part of what we must match). Then runs the ignored
# Rust test that demands bit-identical activation quantization and dot products from every kernel
# tier against the matching build. Not part of CI (needs a llama.cpp tree, gcc and g++, x86-64).
#
# Usage: crates/orchard-quant/scripts/x86_c_crosscheck.sh [LLAMA_CPP_SRC]
set -euo pipefail
SRC=${1:-${LLAMA_CPP_SRC:-/work/llama.cpp-src}}
G=$SRC/ggml
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
INC=(-I "$G/include" -I "$G/src" -I "$G/src/ggml-cpu")
DEFS=(-DNDEBUG -D_GNU_SOURCE -D_XOPEN_SOURCE=600)
build() { # name, arch flags...
    local name=$1
    shift
    mkdir -p "$OUT/$name"
    # ggml-base (reference quantizers) is compiled without -march, as in llama.cpp's build.
    gcc -O3 -std=gnu11 "${DEFS[@]}" "${INC[@]}" -c "$G/src/ggml-quants.c" -o "$OUT/$name/ggml-quants.o"
    gcc -O3 -std=gnu11 "$@" "${DEFS[@]}" "${INC[@]}" -c "$G/src/ggml-cpu/quants.c" -o "$OUT/$name/cpu-quants.o"
    gcc -O3 -std=gnu11 "$@" "${DEFS[@]}" "${INC[@]}" -c "$G/src/ggml-cpu/arch/x86/quants.c" -o "$OUT/$name/x86-quants.o"
    g++ -O3 -std=gnu++17 "$@" "${DEFS[@]}" "${INC[@]}" -c "$G/src/ggml-cpu/vec.cpp" -o "$OUT/$name/vec.o"
    gcc -O3 -std=gnu11 "$@" "${DEFS[@]}" "${INC[@]}" -c "$HERE/x86_c_ref.c" -o "$OUT/$name/harness.o"
    g++ "$OUT/$name"/*.o -lm -o "$OUT/$name/x86_c_ref"
    # The repacked (8-row interleaved) Q4_K kernels llama.cpp uses on x86.
    g++ -O3 -std=gnu++17 "$@" "${DEFS[@]}" "${INC[@]}" -c "$G/src/ggml-cpu/arch/x86/repack.cpp" -o "$OUT/$name/repack.o.x"
    g++ -O3 -std=gnu++17 "$@" "${DEFS[@]}" "${INC[@]}" -c "$HERE/x86_repack_c_ref.cpp" -o "$OUT/$name/repack_harness.o.x"
    g++ "$OUT/$name"/*.o.x "$OUT/$name"/{ggml-quants,cpu-quants,x86-quants}.o -lm -o "$OUT/$name/x86_repack_c_ref"
}
build native -march=native
build avx2 -march=x86-64-v3
cd "$HERE/.."
X86_C_HARNESS="$OUT/native/x86_c_ref" X86_C_HARNESS_AVX2="$OUT/avx2/x86_c_ref" \
    X86_REPACK_HARNESS="$OUT/native/x86_repack_c_ref" X86_REPACK_HARNESS_AVX2="$OUT/avx2/x86_repack_c_ref" \
    cargo test --release -p orchard-quant --test x86_c_crosscheck -- --ignored --nocapture
