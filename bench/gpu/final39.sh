#!/usr/bin/env bash
# Runs 38 and 39 (final38.sh folded in): the cm2 prompt product shapes in SHAPES (e.g.
# "q4_K:4096x14336 q6_K:14336x4096"; none by default) on each tile in TILES, checked against
# the CPU; optionally (ATTN=1) the prompt attention kernels side by side against the CPU; then
# per synthetic Q4_K_M shape (MODELS: 8b, smollm2, gemma3) the prompt's last logits against
# the CPU backend's for each orchard setting (LOGITS=1, the default), and orchard and
# llama.cpp's Vulkan backend alternately, ROUNDS times, pp512 and tg128 (CFGS: orchard
# settings to alternate with the default, e.g. ORCHARD_GPU_CM2_Q8K=1 or
# ORCHARD_GPU_ATTN_CM2=0); one profiled 8B step (PROFILE=1, the default). Carried: .gl/ and
# $BIN (gpu_bench, llama-bench-vulkan.xz, lib/).
set -u
. bench/gpu/vulkan-env.sh
for f in ${SHAPES-}; do
    timeout 40 env ORCHARD_BENCH_CM2_TILES=${TILES:-128x256x64h,128x128x64,128x64x32} ORCHARD_BENCH_CHECK_TOKENS=77 \
        $N --kernels --no-matvec --warm-ms 200 --formats ${f%%:*} --shape ${f#*:} 2>&1 |
        grep -E "cm2" | tee -a "$OUT/kernels.txt"
done
if [ "${ATTN:-0}" = 1 ]; then
    timeout 150 $N --attn -p 512 2>&1 | grep -E "attn|non-finite|panic" | tee "$OUT/attn.txt"
fi
V=/tmp/llama-bench-vulkan
xz -dc "$BIN/llama-bench-vulkan.xz" >$V && chmod +x $V
for m in ${MODELS:-8b}; do
    M=/tmp/synth-$m-q4km.gguf
    timeout 120 $N --write-only --synth $m=$M 2>&1 | tail -1
    if [ "${LOGITS:-1}" = 1 ]; then
        for cfg in default ${CFGS-}; do
            echo "== orchard $m $cfg logits" | tee -a "$OUT/logits.txt"
            timeout 120 env $([ $cfg = default ] || echo $cfg) $N --logits -r 1 -p 512 -n 1 $M 2>&1 |
                grep -E "logits of" | tee -a "$OUT/logits.txt"
        done
    fi
    for round in $(seq ${ROUNDS:-2}); do
        for cfg in default ${CFGS-}; do
            echo "== orchard $m $cfg round $round $(date +%T)" | tee -a "$OUT/models.txt"
            timeout 60 env $([ $cfg = default ] || echo $cfg) $N -r 5 -p 512 -n 128 $M 2>&1 |
                grep -E "pp512|pp reps" | tee -a "$OUT/models.txt"
        done
        echo "== llama.cpp Vulkan $m round $round $(date +%T)" | tee -a "$OUT/models.txt"
        LD_LIBRARY_PATH="$BIN/lib" timeout 60 $V -m $M -ngl 99 -p 512 -n 128 -r 5 2>&1 |
            grep -E "pp512|tg128" | tee -a "$OUT/models.txt"
    done
done
if [ "${PROFILE:-1}" = 1 ]; then
    timeout 60 $N --profile -r 1 -p 512 -n 0 /tmp/synth-8b-q4km.gguf 2>&1 | sed -n '/pp profile/,$p' |
        tee "$OUT/profile.txt"
fi
echo "total ${SECONDS}s"
