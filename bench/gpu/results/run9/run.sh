#!/usr/bin/env bash
# h-gpu4 device run (run 9): round-4 decode fusions (add+norm, RoPE+KV store, merged
# integer-dot products of one input). Parity tests on the card first (backend_ops and
# model_ops_dual built here, so the NVIDIA subgroup paths are checked), then the 8B and
# SmolLM2 synthetic shapes, alternating: main HEAD f8bc432 (gpu_bench_base) / h-gpu4 defaults /
# h-gpu4 with ORCHARD_GPU_FUSE=0 / part-submission sizes. Clocks sampled throughout. No
# llama.cpp build here (the lead runs the final side by side).
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=vulkan
D=${D:-./.bin/h-gpu4}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee $OUT/card.txt
nvidia-smi --query-gpu=timestamp,pstate,clocks.sm,clocks.mem,utilization.gpu,power.draw --format=csv -lms 250 >$OUT/clocks.csv 2>&1 &
CLK=$!
( nice -n 5 $D/gpu_bench --write-only --synth smollm2=/tmp/smollm2.gguf --synth 8b=/tmp/llama8b.gguf >$OUT/synth.txt 2>&1 ) &
W=$!
( timeout 120 $D/backend_ops --test-threads 4 2>&1; echo "backend_ops exit $?";
  timeout 60 $D/model_ops_dual 2>&1; echo "model_ops_dual exit $?" ) | grep -v XDG_RUNTIME >$OUT/tests.txt
grep -E "^test |exit|panicked|NMSE" $OUT/tests.txt
wait $W; cat $OUT/synth.txt
M="/tmp/smollm2.gguf /tmp/llama8b.gguf"
run() { # label binary env...
    local l=$1 b=$2; shift 2
    echo "== $l $(date +%T)" | tee -a $OUT/models.txt
    env "$@" timeout 100 $D/$b -r 2 $M 2>&1 | grep -v XDG_RUNTIME | tee -a $OUT/models.txt
}
run "base: main HEAD f8bc432" gpu_bench_base X=1
run "new: h-gpu4 defaults" gpu_bench X=1
run "new: ORCHARD_GPU_FUSE=0 (round-3 kernels, no fusion at all)" gpu_bench ORCHARD_GPU_FUSE=0
run "base: main HEAD, round 2" gpu_bench_base X=1
run "new: defaults, round 2" gpu_bench X=1
run "new: part submissions every 80 dispatches" gpu_bench ORCHARD_GPU_FLUSH_EVERY=80
run "new: part submissions every 320 dispatches" gpu_bench ORCHARD_GPU_FLUSH_EVERY=320
run "base: main HEAD, round 3" gpu_bench_base X=1
run "new: defaults, round 3" gpu_bench X=1
kill $CLK
echo "total ${SECONDS}s" | tee -a $OUT/models.txt
