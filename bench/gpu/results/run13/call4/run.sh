#!/usr/bin/env bash
# h-gpu5 device run 10, call 4: what naga's bounds checks cost the cooperative-matrix matmul
# (ORCHARD_GPU_SHADER_CHECKS=none, a measurement knob) on the committed kernels (h-gpu5
# 75b12ac): the 8B layer's big Q4_K products and the 8B model's pp512, alternating.
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
( nice -n 5 $D/gpu_bench --write-only --synth 8b=/tmp/llama8b.gguf >$OUT/synth.txt 2>&1 ) &
W=$!
for chk in default none default none; do
    for sh in 4096x14336 14336x4096; do
        echo "kernels checks=$chk q4_K $sh $(date +%T)" >>$OUT/kernels.txt
        ORCHARD_GPU_SHADER_CHECKS=$chk timeout 60 $D/gpu_bench --kernels --no-matvec --warm-ms 150 --formats q4_K --shape $sh --coop-tiles 128/64 2>&1 | grep -E 'matmul|panic|rror' | tee -a $OUT/kernels.txt
    done
done
wait $W; cat $OUT/synth.txt
for chk in default none default none; do
    echo "== checks=$chk $(date +%T)" | tee -a $OUT/models.txt
    ORCHARD_GPU_SHADER_CHECKS=$chk timeout 100 $D/gpu_bench -r 2 -n 16 /tmp/llama8b.gguf 2>&1 | grep -Ev XDG | tee -a $OUT/models.txt
done
kill $CLK
echo "total ${SECONDS}s" | tee -a $OUT/models.txt
