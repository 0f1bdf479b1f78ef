#!/usr/bin/env bash
# Times variants of the cm2 Q4_K prompt kernel on the lent NVIDIA machine next to llama.cpp's
# own product of the same shape (test-backend-ops perf, Vulkan backend). Runs from the
# repository root ON THE DEVICE MACHINE; nothing is built there.
#
# Prepared here:
#   .gl/                       Vulkan/GL loader .debs (device README's recipe)
#   $BIN/gpu_bench             cargo build --release -p orchard-gpu --example gpu_bench
#                              --features cm2-spv-override; strip
#   $BIN/var/NAME/*.spv        the variants: bench/gpu/cm2-variants.comp (run 35's kernel with
#                              switches: V_CONST, V_NOSCALE, V_Q16, V_INT, V_F16DEC, V_NOA, V_NOB,
#                              SH_PAD, UNROLL_J) compiled as scripts/build-cm2.sh does, e.g.
#                              glslc ... -DBM=128 -DBN=128 -DBK=64 -DV_NOA bench/gpu/cm2-variants.comp
#                              -o $BIN/var/noa/matmul_cm2_q4_K_128x128x64.spv (the 128x128x64
#                              and 128x64x32 tiles of run 35; run 36's split-K parameters are
#                              not in it: time it with whole-K products only)
#   $BIN/test-backend-ops.xz   llama.cpp's test-backend-ops with its Vulkan backend, built here
#                              (bench/gpu/prepare-vulkan.sh's build dir, -DLLAMA_BUILD_TESTS=ON),
#                              with $BIN/lib: the libgomp it links (optional)
# Then: run(command="BIN=.bin/runNN bash bench/gpu/cm2-variants.sh", carry=[".gl", ".bin/runNN"]).
set -u
. bench/gpu/vulkan-env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee "$OUT/card.txt"
if [ -f "$BIN/test-backend-ops.xz" ]; then
    xz -dc "$BIN/test-backend-ops.xz" >/tmp/test-backend-ops && chmod +x /tmp/test-backend-ops
    # llama.cpp's perf cases of the 8B down projection: m=4096, k=14336, n=512 tokens.
    for r in 1 2; do
        LD_LIBRARY_PATH="$BIN/lib" timeout 120 /tmp/test-backend-ops perf -o MUL_MAT -b Vulkan0 \
            -p "type_a=(q4_K|q6_K|f16),type_b=f32,m=4096,n=512," 2>&1 |
            grep -E "MUL_MAT|ggml_vulkan: 0" | tee -a "$OUT/llama-ops.txt"
    done
fi
# Each variant in its own process, both 8B product shapes, the default tile after a warm-up.
for v in base ${VARIANTS:-$(ls "$BIN/var" 2>/dev/null)}; do
    for sh in ${SHAPES:-14336x4096 4096x14336}; do
        echo "== $v $sh" >>"$OUT/variants.txt"
        if [ "$v" = base ]; then e=ORCHARD_NONE=1; else e=ORCHARD_GPU_CM2_SPV_DIR=$BIN/var/$v; fi
        timeout "${KERNEL_TIMEOUT:-60}" env "$e" ORCHARD_BENCH_CM2_TILES=128x128x64 \
            "$BIN/gpu_bench" --kernels --no-matvec --warm-ms 150 --formats q4_K --shape "$sh" 2>&1 |
            grep -E "cm2|coop" | tee -a "$OUT/variants.txt"
    done
done
echo "total ${SECONDS}s" | tee -a "$OUT/variants.txt"
