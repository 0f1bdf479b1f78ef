#!/usr/bin/env bash
# Run 18: split decode attention (flash-decoding, h-prof) against h-prof 49dafef (gpu_bench_before).
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=vulkan
D=./.bin/prof
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee $OUT/card.txt
$D/gpu_bench --write-only --synth smollm2=/tmp/smollm2.gguf --synth 8b=/tmp/llama8b.gguf 2>&1 | tail -2
echo "models written ${SECONDS}s"
for b in gpu_bench_before gpu_bench; do
    echo "== --decode-attn $b $(date +%T)" | tee -a $OUT/decode-attn.txt
    timeout 60 $D/$b --decode-attn 2>&1 | grep -v XDG_RUNTIME >>$OUT/decode-attn.txt
    grep -E "f32" $OUT/decode-attn.txt | grep "round 2" | grep -v "old ATT" | sed "s/^/$b: /" | tail -12
done
M="/tmp/llama8b.gguf /tmp/smollm2.gguf"
run() { echo "== $1 $(date +%T) ${SECONDS}s" | tee -a $OUT/models.txt; shift; timeout 40 "$@" 2>&1 | grep -v XDG_RUNTIME | tee -a $OUT/models.txt; }
for r in 1 2; do
    [ "$SECONDS" -lt 250 ] && run "before (49dafef) round $r" $D/gpu_bench_before -r 3 $M
    [ "$SECONDS" -lt 265 ] && run "after (split decode attention) round $r" $D/gpu_bench -r 3 $M
done
echo "total ${SECONDS}s" | tee -a $OUT/models.txt
