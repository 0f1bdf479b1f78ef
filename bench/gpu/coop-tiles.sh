#!/usr/bin/env bash
# Cooperative-matrix tile sweep on the lent NVIDIA machine, from the repository root there:
# every tile of TILES (shaders::CoopTile, `TMxTNxBK/SGMxSGN[/db|/dbs]`) is checked against
# CpuBackend on the card (the carried backend_ops test binary's `matmul_coop_every_format`, one
# process per tile: a pipeline the driver rejects poisons its process), timed on the 8B
# products (`gpu_bench --kernels --no-matvec --coop-tiles`, all tiles alternating in one
# process per format and shape), then run in the 8B model's pp512 (ORCHARD_GPU_COOP_TILE).
# Optionally (LLAMA_VK=1 and $BIN/llama-bench-vulkan.xz from prepare-vulkan.sh) llama.cpp's
# Vulkan backend on the same 8B file with coopmat2 off (GGML_VK_DISABLE_COOPMAT2: the
# KHR cooperative matrices wgpu exposes) and with integer dots off as well.
# Carry .gl and $BIN (gpu_bench, backend_ops). Results go to $OUT.
set -u
OUT=${OUT:-/tmp/coop-tiles-out}
. bench/gpu/vulkan-env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee "$OUT/card.txt"
TILES=${TILES:-128x128x64/4x2}
M8=/tmp/llama8b-synth-q4km.gguf
(timeout 120 $N --write-only --synth 8b=$M8 >"$OUT/write.txt" 2>&1) &
WRITER=$!
for t in ${TILES//,/ }; do
    echo "== $t" >>"$OUT/tests.txt"
    timeout 60 env ORCHARD_GPU_COOP_TILE=$t "$BIN/backend_ops" --exact matmul_coop_every_format \
        --test-threads 1 2>&1 | grep -E "^test |panicked|NMSE|NVVM|rror" | tee -a "$OUT/tests.txt"
done
for sh in ${SHAPES:-4096x14336 14336x4096 4096x4096}; do
    for f in ${FORMATS:-q4_K q6_K}; do
        echo "== kernels $f $sh" >>"$OUT/kernels.txt"
        timeout 90 $N --kernels --no-matvec --warm-ms 150 --formats $f --shape $sh \
            --coop-tiles "$TILES" 2>&1 | grep -v '^device' | tee -a "$OUT/kernels.txt"
    done
done
wait $WRITER
cat "$OUT/write.txt"
run() {
    echo "== $1 $(date +%T)" | tee -a "$OUT/models.txt"
    shift
    timeout 120 "$@" 2>&1 | grep -v XDG_RUNTIME | tee -a "$OUT/models.txt"
}
V=$BIN/llama-bench-vulkan
if [ "${LLAMA_VK:-0}" = 1 ] && [ -f "$V.xz" ]; then
    xz -dc "$V.xz" >/tmp/llama-bench-vulkan && chmod +x /tmp/llama-bench-vulkan
    V=/tmp/llama-bench-vulkan
fi
for r in $(seq 1 "${ROUNDS:-1}"); do
    for t in ${MODEL_TILES:-${TILES//,/ }}; do
        [ "$SECONDS" -lt 520 ] && run "round $r: orchard $t" env ORCHARD_GPU_COOP_TILE=$t $N -r 2 -n 16 $M8
    done
    if [ -x "$V" ] && [ "$SECONDS" -lt 520 ]; then
        for e in GGML_VK_NONE=1 GGML_VK_DISABLE_COOPMAT2=1 \
            GGML_VK_DISABLE_COOPMAT2=1,GGML_VK_DISABLE_INTEGER_DOT_PRODUCT=1; do
            [ "$SECONDS" -lt 520 ] && run "round $r: llama.cpp Vulkan $e" env ${e//,/ } \
                LD_LIBRARY_PATH="$BIN/lib" $V -m $M8 -ngl 99 -p 512 -n 0 -r 2
        done
    fi
done
echo "total ${SECONDS}s" | tee -a "$OUT/models.txt"
