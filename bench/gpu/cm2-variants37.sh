#!/usr/bin/env bash
# Run 37: why llama.cpp's cm2 Q4_K kernel, run inside our harness (foreign-cm2.sh), is ~30 %
# faster than ours on the same tile. The driver's statistics (register count: what sets how
# many workgroups share an SM) of our modules, of the variants of bench/gpu/cm2-variants37.comp
# and of llama.cpp's; then each variant timed on the 8B gate/up and q/o shapes beside
# llama.cpp's kernel, alternating, each in its own process.
# Prepared here: $BIN/gpu_bench (--features cm2-spv-override), $BIN/var/NAME/*.spv (the
# variants, compiled as scripts/build-cm2.sh does with the variant's -D switches) and
# $BIN/llama_q4k_128x256x64h.spv (see foreign-cm2.sh). Carried: .gl/ and $BIN.
set -u
. bench/gpu/vulkan-env.sh
L=$BIN/llama_q4k_128x256x64h.spv
VARS=${VARIANTS:-$(ls "$BIN/var")}
timeout 60 $N --cm2-stats --foreign-cm2 $L 2>&1 | grep "cm2 stats" | tee -a "$OUT/stats.txt"
for v in $VARS; do
    echo "== $v" >>"$OUT/stats.txt"
    timeout 60 env ORCHARD_GPU_CM2_SPV_DIR=$BIN/var/$v $N --cm2-stats 2>&1 |
        grep "cm2 stats" | tee -a "$OUT/stats.txt"
done
for r in 1 2; do
    for sh in ${SHAPES:-4096x14336}; do
        echo "== round $r $sh llama.cpp's kernel" | tee -a "$OUT/times.txt"
        timeout 60 $N --foreign-cm2 $L --shape "$sh" 2>&1 | grep "foreign" | tee -a "$OUT/times.txt"
        for v in base $VARS; do
            echo "== round $r $sh $v" | tee -a "$OUT/times.txt"
            if [ "$v" = base ]; then e=ORCHARD_NONE=1; else e=ORCHARD_GPU_CM2_SPV_DIR=$BIN/var/$v; fi
            timeout 60 env $e ORCHARD_BENCH_CM2_TILES=128x256x64h,128x128x64 \
                ORCHARD_BENCH_CHECK_TOKENS=300 $N --kernels --no-matvec --warm-ms 300 \
                --formats q4_K --shape "$sh" 2>&1 | grep -E "cm2 128" | tail -2 | tee -a "$OUT/times.txt"
        done
    done
done
echo "total ${SECONDS}s"
