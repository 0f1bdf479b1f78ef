#!/usr/bin/env bash
# Where one 8B prompt step goes, in both engines, on the lent NVIDIA machine: llama.cpp's
# Vulkan backend with its own per-op timer (GGML_VK_PERF_LOGGER: timestamps around every
# node) and orchard's `gpu_bench --profile` (per-dispatch timestamps), on the same synthetic
# Llama-8B Q4_K_M file. Runs from the repository root ON THE DEVICE MACHINE.
# Carried: .gl/ (loader .debs), $BIN/gpu_bench, $BIN/llama-bench-vulkan.xz and $BIN/lib (see
# run-h100.sh). run(command="BIN=.bin/runNN bash bench/gpu/op-profile.sh", carry=[".gl", ".bin/runNN"]).
set -u
. bench/gpu/vulkan-env.sh
M=/tmp/llama8b-synth-q4km.gguf
timeout 120 "$BIN/gpu_bench" --write-only --synth 8b=$M 2>&1 | tail -2
xz -dc "$BIN/llama-bench-vulkan.xz" >/tmp/llama-bench-vulkan && chmod +x /tmp/llama-bench-vulkan
# Plain first (the figure to beat), then with the per-op timer.
LD_LIBRARY_PATH="$BIN/lib" timeout 120 /tmp/llama-bench-vulkan -m $M -ngl 99 -p 512 -n 0 -r 3 2>&1 |
    grep -v XDG_RUNTIME | tee "$OUT/llama-bench.txt"
GGML_VK_PERF_LOGGER=1 LD_LIBRARY_PATH="$BIN/lib" timeout 120 /tmp/llama-bench-vulkan -m $M -ngl 99 \
    -p 512 -n 0 -r 1 >"$OUT/llama-perf.txt" 2>&1
timeout 150 "$BIN/gpu_bench" --profile -r 2 -p 512 -n 0 $M 2>&1 | grep -v XDG_RUNTIME | tee "$OUT/profile.txt"
echo "total ${SECONDS}s"
