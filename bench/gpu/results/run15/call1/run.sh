#!/usr/bin/env bash
# Run 15 (round 6, prefill attention): branch h-gpu6 (`gpu_bench`) against main HEAD 06e825e
# (`gpu_bench_base` = .bin/final/gpu_bench), alternating, `-r 3` each, synthetic Q4_K_M models
# written on the card; the attention micro-benchmark (tiled vs per-token kernel, 512-token
# prompt, 8B and SmolLM2 head shapes, checked against the CPU); then the backend_ops test
# binary of the branch on the card.
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=vulkan
D=./.bin/h-gpu6
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee $OUT/card.txt
nvidia-smi --query-gpu=timestamp,pstate,clocks.sm,clocks.mem,utilization.gpu,power.draw --format=csv -lms 500 >$OUT/clocks.csv 2>&1 &
CLK=$!
( nice -n 5 $D/gpu_bench --write-only --synth smollm2=/tmp/smollm2.gguf --synth 8b=/tmp/llama8b.gguf >$OUT/synth.txt 2>&1 )
cat $OUT/synth.txt
echo "== attn $(date +%T)" | tee -a $OUT/attn.txt
timeout 120 $D/gpu_bench --attn -p 512 --warm-ms 150 2>&1 | grep -v XDG_RUNTIME | tee -a $OUT/attn.txt
M="/tmp/smollm2.gguf /tmp/llama8b.gguf"
run() { # label binary [env]
    echo "== $1 $(date +%T)" | tee -a $OUT/models.txt
    env ${3:-X=1} timeout 100 $D/$2 -r 3 $M 2>&1 | grep -v XDG_RUNTIME | tee -a $OUT/models.txt
}
run "base: main 06e825e" gpu_bench_base
run "new: h-gpu6" gpu_bench
run "base: main 06e825e, round 2" gpu_bench_base
run "new: h-gpu6, round 2" gpu_bench
run "new: h-gpu6, ORCHARD_GPU_ATTN_TILE=0" gpu_bench ORCHARD_GPU_ATTN_TILE=0
echo "== backend_ops $(date +%T)" | tee -a $OUT/tests.txt
timeout 240 $D/backend_ops --test-threads=1 --nocapture >$OUT/tests-raw.txt 2>&1
echo "rc=$?" >>$OUT/tests-raw.txt
grep -v XDG_RUNTIME $OUT/tests-raw.txt >>$OUT/tests.txt; rm $OUT/tests-raw.txt
grep -E "NMSE|test |panicked|result" $OUT/tests.txt | tail -60
kill $CLK
echo "total ${SECONDS}s" | tee -a $OUT/models.txt
