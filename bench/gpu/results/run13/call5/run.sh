#!/usr/bin/env bash
# h-gpu5 device run 10, call 5: the final kernels (cooperative-matrix matmul without naga's
# bounds checks, h-gpu5 HEAD): parity of every format against CpuBackend (ragged 2304 x 1000,
# n = 77), then the 8B and SmolLM2 synthetic models, base / new alternating, two rounds.
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=vulkan
D=${D:-./.bin/h-gpu5}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee $OUT/card.txt
nvidia-smi --query-gpu=timestamp,pstate,clocks.sm,clocks.mem,utilization.gpu,power.draw --format=csv -lms 250 >$OUT/clocks.csv 2>&1 &
CLK=$!
( nice -n 5 $D/gpu_bench --write-only --synth smollm2=/tmp/smollm2.gguf --synth 8b=/tmp/llama8b.gguf >$OUT/synth.txt 2>&1 ) &
W=$!
echo "kernels all formats 2304x1000 $(date +%T)" >>$OUT/kernels.txt
timeout 60 $D/gpu_bench --kernels --no-matvec --warm-ms 50 --shape 2304x1000 2>&1 | grep -Ev XDG | tee -a $OUT/kernels.txt
for sh in 4096x14336 14336x4096 4096x4096 4096x1024; do
    echo "kernels q4_K $sh $(date +%T)" >>$OUT/kernels.txt
    timeout 60 $D/gpu_bench --kernels --no-matvec --warm-ms 150 --formats q4_K --shape $sh 2>&1 | grep -E 'matmul|panic|rror' | tee -a $OUT/kernels.txt
done
wait $W; cat $OUT/synth.txt
M="/tmp/smollm2.gguf /tmp/llama8b.gguf"
for r in 1 2; do
    echo "== base: main HEAD f8bc432, round $r $(date +%T)" | tee -a $OUT/models.txt
    timeout 100 $D/gpu_bench_base -r 3 $M 2>&1 | grep -Ev XDG | tee -a $OUT/models.txt
    echo "== new: h-gpu5 defaults, round $r $(date +%T)" | tee -a $OUT/models.txt
    timeout 100 $D/gpu_bench -r 3 $M 2>&1 | grep -Ev XDG | tee -a $OUT/models.txt
done
kill $CLK
echo "total ${SECONDS}s" | tee -a $OUT/models.txt
