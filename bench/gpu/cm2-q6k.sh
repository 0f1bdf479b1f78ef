#!/usr/bin/env bash
# Run 37, Q6_K on cm2: the 8B Q6_K products (down, V) on MATMUL_COOP and on the cm2 kernel's
# Q6_K build (checked against the CPU at 300 tokens), then the 8B prompt and decode beside
# llama.cpp's Vulkan backend and one profiled step. Carried: .gl/ and $BIN (gpu_bench,
# llama-bench-vulkan.xz, lib/).
set -u
. bench/gpu/vulkan-env.sh
for sh in ${SHAPES:-14336x4096 4096x1024}; do
    echo "== $sh" | tee -a "$OUT/kernels.txt"
    timeout 60 env ORCHARD_BENCH_CM2_TILES=128x256x64h,128x128x64 ORCHARD_BENCH_CHECK_TOKENS=300 \
        $N --kernels --no-matvec --warm-ms 300 --formats q6_K --shape "$sh" 2>&1 |
        grep -E "cm2|coop" | tee -a "$OUT/kernels.txt"
done
M=/tmp/llama8b-synth-q4km.gguf
timeout 120 $N --write-only --synth 8b=$M 2>&1 | tail -1
V=/tmp/llama-bench-vulkan
xz -dc "$BIN/llama-bench-vulkan.xz" >$V && chmod +x $V
echo "== orchard $(date +%T)" | tee -a "$OUT/models.txt"
timeout 60 $N -r 3 -p 512 -n 128 $M 2>&1 | grep -v XDG_RUNTIME | tee -a "$OUT/models.txt"
echo "== llama.cpp Vulkan $(date +%T)" | tee -a "$OUT/models.txt"
LD_LIBRARY_PATH="$BIN/lib" timeout 60 $V -m $M -ngl 99 -p 512 -n 128 -r 3 2>&1 |
    grep -E "pp512|tg128" | tee -a "$OUT/models.txt"
timeout 60 $N --profile -r 1 -p 512 -n 0 $M 2>&1 | sed -n '/pp profile/,$p' | tee "$OUT/profile.txt"
echo "total ${SECONDS}s"
