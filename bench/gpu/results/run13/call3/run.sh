#!/usr/bin/env bash
# h-gpu5 device run 10, call 3: the cooperative-matrix matmul software-pipelined (the next K
# step's weights and activations loaded into registers during the products: `TN/BK/p` tiles)
# against call 1's best (128/64); K/V-sized products now take 64-token tiles (so the 4096x1024
# lines of "128/64" run 64/64); the portable path with 128x128 tiles from 64 tiles up. Kernels: every format on a ragged 2304 x 1000 weight (parity against CpuBackend at
# n = 77 for every tile), the 8B layer's Q4_K/Q6_K shapes at n = 512 after warm-up; then the
# 8B and SmolLM2 synthetic models, alternating base / new. Clocks sampled throughout.
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
T=${T:-128/64,128/64/p,64/64/p,128/32/p}
echo "kernels all formats 2304x1000 $(date +%T)" >>$OUT/kernels.txt
timeout 90 $D/gpu_bench --kernels --no-matvec --warm-ms 100 --shape 2304x1000 --coop-tiles $T 2>&1 | grep -Ev XDG | tee -a $OUT/kernels.txt
for f in q4_K q6_K; do
    for sh in 4096x14336 14336x4096 4096x4096 4096x1024; do
        echo "kernels $f $sh $(date +%T)" >>$OUT/kernels.txt
        timeout 60 $D/gpu_bench --kernels --no-matvec --warm-ms 150 --formats $f --shape $sh --coop-tiles $T 2>&1 | grep -E 'matmul|refused|panic|rror' | tee -a $OUT/kernels.txt
    done
done
wait $W; cat $OUT/synth.txt
M="/tmp/smollm2.gguf /tmp/llama8b.gguf"
run() { # label env...
    local l=$1; shift
    echo "== $l $(date +%T)" | tee -a $OUT/models.txt
    env "$@" timeout 100 $D/gpu_bench -r 3 $M 2>&1 | grep -Ev XDG | tee -a $OUT/models.txt
}
base() {
    echo "== base: main HEAD f8bc432 $1 $(date +%T)" | tee -a $OUT/models.txt
    timeout 100 $D/gpu_bench_base -r 3 $M 2>&1 | grep -Ev XDG | tee -a $OUT/models.txt
}
base ""
run "new: defaults (coop 128/64)" X=1
for t in 128/64/p 64/64/p 128/32/p; do run "new: coop $t" ORCHARD_GPU_COOP_TILE=$t; done
run "new: ORCHARD_GPU_COOP=0 ORCHARD_GPU_MIN_BIG_TILES=64 (portable, 128x128 tiles from 64 up)" ORCHARD_GPU_COOP=0 ORCHARD_GPU_MIN_BIG_TILES=64
base "round 2"
run "new: defaults, round 2" X=1
run "new: coop 128/64/p, round 2" ORCHARD_GPU_COOP_TILE=128/64/p
kill $CLK
echo "total ${SECONDS}s" | tee -a $OUT/models.txt
