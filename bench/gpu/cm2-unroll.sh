#!/usr/bin/env bash
# Run 37, last call: our cm2 kernel with its K-step loop left to the driver (a specialization-
# constant trip count, as llama.cpp's) against the glslc-unrolled modules before it ($BIN/var/old)
# and llama.cpp's own kernel in our harness: register counts, the 8B gate/up product
# alternating, then the 8B prompt and decode beside llama.cpp's Vulkan backend, and one
# profiled step. Carried: .gl/ and $BIN (gpu_bench --features cm2-spv-override,
# llama_q4k_128x256x64h.spv, var/old/*.spv, llama-bench-vulkan.xz, lib/).
set -u
. bench/gpu/vulkan-env.sh
L=$BIN/llama_q4k_128x256x64h.spv
O=ORCHARD_GPU_CM2_SPV_DIR=$BIN/var/old
T=ORCHARD_BENCH_CM2_TILES=128x256x64h
timeout 60 env ORCHARD_BENCH_CM2_TILES= $N --cm2-stats --foreign-cm2 $L 2>&1 | grep "cm2 stats" | tee -a "$OUT/stats.txt"
timeout 60 env $T $N --cm2-stats 2>&1 | grep "cm2 stats" | sed 's/^/new /' | tee -a "$OUT/stats.txt"
timeout 60 env $T $O $N --cm2-stats 2>&1 | grep "cm2 stats" | sed 's/^/old /' | tee -a "$OUT/stats.txt"
for r in 1 2; do
    timeout 60 $N --foreign-cm2 $L --shape 4096x14336 2>&1 | grep "foreign" | tee -a "$OUT/times.txt"
    for v in new old; do
        if [ $v = new ]; then e=ORCHARD_NONE=1; else e=$O; fi
        timeout 60 env $e $T ORCHARD_BENCH_CHECK_TOKENS=300 $N --kernels --no-matvec --warm-ms 300 \
            --formats q4_K --shape 4096x14336 2>&1 | grep -E "cm2 " | tail -2 | sed "s/^/$v /" |
            tee -a "$OUT/times.txt"
    done
done
M=/tmp/llama8b-synth-q4km.gguf
timeout 120 $N --write-only --synth 8b=$M 2>&1 | tail -1
V=/tmp/llama-bench-vulkan
xz -dc "$BIN/llama-bench-vulkan.xz" >$V && chmod +x $V
for r in 1 2; do
    echo "== round $r orchard $(date +%T)" | tee -a "$OUT/models.txt"
    timeout 90 $N -r 3 -p 512 -n 128 $M 2>&1 | grep -v XDG_RUNTIME | tee -a "$OUT/models.txt"
    echo "== round $r llama.cpp Vulkan $(date +%T)" | tee -a "$OUT/models.txt"
    LD_LIBRARY_PATH="$BIN/lib" timeout 90 $V -m $M -ngl 99 -p 512 -n 128 -r 3 2>&1 |
        grep -E "pp512|tg128" | tee -a "$OUT/models.txt"
done
echo "== orchard, old modules $(date +%T)" | tee -a "$OUT/models.txt"
timeout 90 env $O $N -r 3 -p 512 -n 0 $M 2>&1 | grep -v XDG_RUNTIME | tee -a "$OUT/models.txt"
timeout 90 $N --profile -r 1 -p 512 -n 0 $M 2>&1 | sed -n '/pp profile/,$p' | tee "$OUT/profile.txt"
echo "total ${SECONDS}s"
