#!/usr/bin/env bash
# Prepares what bench/gpu/run-h100.sh carries to the device machine: the stripped gpu_bench
# binary (.bin/) and llama.cpp's sources pruned to what a CUDA llama-bench build needs
# (.llama/). Both folders are ignored through .git/info/exclude. LLAMA_SRC: a llama.cpp
# checkout (default /work/llama.cpp-src).
set -eu
LLAMA_SRC=${LLAMA_SRC:-/work/llama.cpp-src}
for d in /.bin/ /.llama/ /.gl/; do
    grep -qx "$d" .git/info/exclude || echo "$d" >>.git/info/exclude
done
cargo build --release -p orchard-gpu --example gpu_bench
mkdir -p .bin
cp "${CARGO_TARGET_DIR:-target}/release/examples/gpu_bench" .bin/
strip .bin/gpu_bench
rm -rf .llama
mkdir -p .llama/tools .llama/ggml/src
cp -r "$LLAMA_SRC"/{CMakeLists.txt,cmake,include,src,common,vendor,LICENSE} .llama/
cp -r "$LLAMA_SRC"/tools/llama-bench .llama/tools/
printf 'find_package(Threads REQUIRED)\nllama_add_compile_flags()\nadd_subdirectory(llama-bench)\n' \
    >.llama/tools/CMakeLists.txt
cp -r "$LLAMA_SRC"/ggml/{CMakeLists.txt,cmake,include} .llama/ggml/
cp "$LLAMA_SRC"/ggml/src/*.{c,cpp,h,in} "$LLAMA_SRC"/ggml/src/CMakeLists.txt .llama/ggml/src/
cp -r "$LLAMA_SRC"/ggml/src/{ggml-cpu,ggml-cuda} .llama/ggml/src/
# The same sources compressed (22 MB -> 2.3 MB), for when the binaries leave no room for .llama.
tar -cJf .bin/llama-src.tar.xz .llama
du -sh .bin .llama
