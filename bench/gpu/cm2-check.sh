#!/usr/bin/env bash
# The cm2 prompt products on the lent NVIDIA machine: every tile and the default choice
# (split-K included) timed at 512 tokens and checked against the CPU backend at
# $CHECK_TOKENS (over 128: the wide tile, ragged), on the 8B shapes (gate/up, down, q/o, k/v);
# then the 8B prompt beside llama.cpp Vulkan, alternating, and one profiled step.
# Runs from the repository root ON THE DEVICE MACHINE; carried: .gl/, $BIN/gpu_bench,
# $BIN/llama-bench-vulkan.xz and $BIN/lib (see run-h100.sh).
set -u
. bench/gpu/vulkan-env.sh
for sh in ${SHAPES:-4096x14336 14336x4096 4096x4096 4096x1024}; do
    for c in ${CHECK_TOKENS:-300 77}; do
        echo "== $sh check $c" >>"$OUT/kernels.txt"
        timeout 90 env ORCHARD_BENCH_CHECK_TOKENS=$c $N --kernels --no-matvec --warm-ms 150 \
            --formats q4_K --shape "$sh" 2>&1 | grep -E "cm2|coop" | tee -a "$OUT/kernels.txt"
    done
done
[ "${MODELS:-1}" = 1 ] || exit 0
# Ours and llama.cpp's Vulkan backend alternating on the same synthetic Q4_K_M files.
M=/tmp/llama8b-synth-q4km.gguf
ALL="/tmp/smollm2-synth-q4km.gguf /tmp/gemma3-synth-q4km.gguf $M"
timeout 120 $N --write-only --synth smollm2=/tmp/smollm2-synth-q4km.gguf \
    --synth gemma3=/tmp/gemma3-synth-q4km.gguf --synth 8b=$M 2>&1 | tail -3
LM=""
for m in $ALL; do LM="$LM -m $m"; done
V=/tmp/llama-bench-vulkan
xz -dc "$BIN/llama-bench-vulkan.xz" >$V && chmod +x $V
for r in $(seq 1 "${ROUNDS:-2}"); do
    echo "== round $r orchard $(date +%T)" | tee -a "$OUT/models.txt"
    timeout 150 $N -r 3 -p 512 -n 128 $ALL 2>&1 | grep -v XDG_RUNTIME | tee -a "$OUT/models.txt"
    echo "== round $r llama.cpp Vulkan $(date +%T)" | tee -a "$OUT/models.txt"
    LD_LIBRARY_PATH="$BIN/lib" timeout 150 $V $LM -ngl 99 -p 512 -n 128 -r 3 2>&1 |
        grep -E "pp512|tg128" | tee -a "$OUT/models.txt"
done
timeout 150 $N --profile -r 1 -p 512 -n 0 $M 2>&1 | sed -n '/pp profile/,$p' | tee "$OUT/profile.txt"
echo "total ${SECONDS}s"
