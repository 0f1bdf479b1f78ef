#!/usr/bin/env bash
# Run 38, the build to land: the 8B Q4_K/Q6_K prompt product shapes on their default cm2 tile
# and the others, checked against the CPU (SHAPES, empty for none); then each synthetic
# Q4_K_M shape (MODELS: 8b, smollm2, gemma3) through orchard and llama.cpp's Vulkan backend
# alternately, ROUNDS times, pp512 and tg128 (CFGS: orchard settings to alternate with the
# default, e.g. ORCHARD_GPU_CM2_LONG_K=0 or ORCHARD_GPU_FUSE_F16=0); one profiled 8B step.
# Carried: .gl/ and $BIN (gpu_bench, llama-bench-vulkan.xz, lib/).
set -u
. bench/gpu/vulkan-env.sh
for f in ${SHAPES-q4_K:4096x4096 q4_K:4096x1024 q4_K:4096x14336 q4_K:14336x4096 q6_K:14336x4096 q6_K:4096x1024}; do
    timeout 40 env ORCHARD_BENCH_CM2_TILES=${TILES:-128x256x64h,128x128x64,128x64x32} ORCHARD_BENCH_CHECK_TOKENS=77 \
        $N --kernels --no-matvec --warm-ms 200 --formats ${f%%:*} --shape ${f#*:} 2>&1 |
        grep -E "cm2" | tee -a "$OUT/kernels.txt"
done
V=/tmp/llama-bench-vulkan
xz -dc "$BIN/llama-bench-vulkan.xz" >$V && chmod +x $V
for m in ${MODELS:-8b}; do
    M=/tmp/synth-$m-q4km.gguf
    timeout 120 $N --write-only --synth $m=$M 2>&1 | tail -1
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
timeout 60 $N --profile -r 1 -p 512 -n 0 /tmp/synth-8b-q4km.gguf 2>&1 | sed -n '/pp profile/,$p' |
    tee "$OUT/profile.txt"
echo "total ${SECONDS}s"
