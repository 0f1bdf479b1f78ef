#!/usr/bin/env bash
# Regenerates testdata/parity-avx2: llama.cpp's greedy continuations and logits on the cases of
# testdata/parity, computed by ggml's AVX2 CPU build, and prints its llama-perplexity figures
# for the quantized-KV test (crates/orchard/tests/cli.rs). Not run by CI (about 40 minutes on 2
# cores, most of it building llama.cpp); see testdata/parity-avx2/README.md.
#
# LLAMA_BUILD: an existing CMake build dir of llama.cpp 0.25.3 with shared libraries and
# llama-perplexity (default: one is built in $WORK from llama-cpp-python 0.3.36's sdist, with
# AVX2, FMA, F16C and BMI2 and nothing newer, so any x86-64 CPU with those can run this).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/scripts/parity-avx2"
WORK=${WORK:-/tmp/parity-avx2}
MODELS=${ORCHARD_MODELS:-$ROOT/models}
mkdir -p "$WORK"
if [ -z "${LLAMA_BUILD:-}" ]; then
    python3 -m pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$WORK"
    tar -xzf "$WORK"/llama_cpp_python-0.3.36.tar.gz -C "$WORK"
    SRC="$WORK/llama_cpp_python-0.3.36/vendor/llama.cpp"
    LLAMA_BUILD="$WORK/build"
    cmake -S "$SRC" -B "$LLAMA_BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
        -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF
    cmake --build "$LLAMA_BUILD" -j "$(nproc)" --target llama llama-perplexity
    INC="$SRC"
else
    INC=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$LLAMA_BUILD/CMakeCache.txt")
fi
gcc -O2 -o "$WORK/gen" "$HERE/gen.c" -I"$INC/include" -I"$INC/ggml/include" \
    -L"$LLAMA_BUILD/bin" -lllama -Wl,-rpath,"$LLAMA_BUILD/bin"
P="$ROOT/testdata/parity"
OUTD="$ROOT/testdata/parity-avx2"
python3 "$HERE/gen.py" "$WORK/gen" "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" "$P/smollm2-135m-q4_1" "$OUTD/smollm2-135m-q4_1"
python3 "$HERE/gen.py" "$WORK/gen" "$MODELS/gemma-3-270m-q4_k_m.gguf" "$P/gemma3-270m-q4_k_m" "$OUTD/gemma3-270m-q4_k_m"
for m in llama3.Q4_K_M qwen2.Q8_0 qwen3.Q4_K_M gemma3.Q4_K_M; do
    python3 "$HERE/gen.py" "$WORK/gen" "$P/tiny/tiny-$m.gguf" "$P/tiny" "$OUTD/tiny" "tiny-${m%%.*}.logits.jsonl"
done
# The quantized-KV perplexity references (cli.rs), as testdata/parity's were made.
for m in SmolLM2-135M-Instruct.Q4_1.gguf gemma-3-270m-q4_k_m.gguf; do
    for t in f16 q8_0 q4_0; do
        printf '%s %s: ' "$m" "$t"
        "$LLAMA_BUILD/bin/llama-perplexity" -m "$MODELS/$m" -f "$P/corpus.txt" -c 512 --chunks 2 -t 2 \
            -fa on -ctk "$t" -ctv "$t" 2>&1 | grep -o 'Final estimate: PPL = [0-9.]*'
    done
done
