#!/usr/bin/env bash
# llama.cpp's own cm2 Q4_K product kernel run inside our harness (gpu_bench --foreign-cm2:
# wgpu device, buffers and timing as ours), beside our kernel, alternating, on the 8B shapes.
# Same speed as llama.cpp's in-graph 0.306 ms (gate/up) => the difference is our shader code;
# same as ours => it is around the code (device, memory, dispatch).
# $BIN/llama_q4k_128x256x64h.spv: vulkan-shaders/mul_mm_cm2.comp from llama-cpp-python 0.3.36's
# sdist compiled as vulkan-shaders-gen does matmul_q4_k_f16_f16acc_cm2 (Debian 13 glslc -O),
# its spec constants set to the large tile (256 threads, 128 x 256 x 64, smaller matrices on,
# aligned, subgroup 32) and frozen with spirv-opt (see bench/README, run 37).
# Runs from the repository root ON THE DEVICE MACHINE; carried: .gl/ and $BIN.
set -u
. bench/gpu/vulkan-env.sh
for r in 1 2; do
    for sh in ${SHAPES:-4096x14336 14336x4096 4096x4096}; do
        echo "== round $r $sh" | tee -a "$OUT/foreign.txt"
        timeout 60 $N --foreign-cm2 "$BIN/llama_q4k_128x256x64h.spv" --shape "$sh" 2>&1 |
            grep -v XDG_RUNTIME | tee -a "$OUT/foreign.txt"
        timeout 90 env ORCHARD_BENCH_CM2_TILES=128x256x64h ORCHARD_BENCH_CHECK_TOKENS=300 \
            $N --kernels --no-matvec --warm-ms 1500 --formats q4_K --shape "$sh" 2>&1 |
            grep -E "cm2" | tee -a "$OUT/foreign.txt"
    done
done
echo "total ${SECONDS}s"
