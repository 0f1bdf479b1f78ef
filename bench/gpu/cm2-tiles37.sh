#!/usr/bin/env bash
# Run 37, last minute of device time: the Q4_K down (14336 -> 4096) and q/o (4096 -> 4096)
# products on each tile with the driver-unrolled kernel, then the 8B prompt with every cm2
# product forced onto the wide tile. Carried: .gl/ and $BIN.
set -u
. bench/gpu/vulkan-env.sh
for sh in 14336x4096 4096x4096; do
    timeout 40 env ORCHARD_BENCH_CM2_TILES=128x256x64h,128x128x64 ORCHARD_BENCH_CHECK_TOKENS=77 \
        $N --kernels --no-matvec --warm-ms 200 --formats q4_K --shape "$sh" 2>&1 |
        grep -E "cm2" | tee -a "$OUT/kernels.txt"
done
M=/tmp/llama8b-synth-q4km.gguf
timeout 60 $N --write-only --synth 8b=$M 2>&1 | tail -1
timeout 40 env ORCHARD_GPU_CM2_TILE=128x256x64h $N -r 3 -p 512 -n 0 $M 2>&1 | grep pp512 | tee -a "$OUT/models.txt"
timeout 40 $N -r 3 -p 512 -n 0 $M 2>&1 | grep pp512 | tee -a "$OUT/models.txt"
echo "total ${SECONDS}s"
