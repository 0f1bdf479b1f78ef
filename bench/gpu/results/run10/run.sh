#!/usr/bin/env bash
# h-gpu4 device run 2 (run 10): after run 9 showed the 8B decode slower with the fusions
# (device wait up), ADD_NORM_Q8K quantizes a row in one pass (16 blocks at a time) instead of
# block after block in one workgroup; each fusion has its own off knob. Parity tests of main
# HEAD and of this branch on the card (run 9's tests failed on NVIDIA: are those failures new?),
# then the 8B and SmolLM2 synthetic shapes, alternating base / new / one fusion off.
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
for t in backend_ops_base model_ops_dual_base backend_ops model_ops_dual; do
    echo "=== $t"; timeout 100 $D/$t --test-threads 4 2>&1; echo "$t exit $?"
done | grep -v XDG_RUNTIME >$OUT/tests.txt
grep -E "^===|^test .*FAILED|exit|NMSE [0-9]" $OUT/tests.txt
wait $W; cat $OUT/synth.txt
M="/tmp/smollm2.gguf /tmp/llama8b.gguf"
run() { # label binary env...
    local l=$1 b=$2; shift 2
    echo "== $l $(date +%T)" | tee -a $OUT/models.txt
    env "$@" timeout 100 $D/$b -r 2 $M 2>&1 | grep -v XDG_RUNTIME | tee -a $OUT/models.txt
}
run "base: main HEAD f8bc432" gpu_bench_base X=1
run "new: h-gpu4 defaults" gpu_bench X=1
run "new: without add+norm (ORCHARD_GPU_FUSE_ADD_NORM=0)" gpu_bench ORCHARD_GPU_FUSE_ADD_NORM=0
run "new: without RoPE+KV (ORCHARD_GPU_FUSE_ROPE_KV=0)" gpu_bench ORCHARD_GPU_FUSE_ROPE_KV=0
run "new: without merged products (ORCHARD_GPU_FUSE_MULTI=0)" gpu_bench ORCHARD_GPU_FUSE_MULTI=0
run "base: main HEAD, round 2" gpu_bench_base X=1
run "new: defaults, round 2" gpu_bench X=1
run "new: ORCHARD_GPU_FUSE=0" gpu_bench ORCHARD_GPU_FUSE=0
run "new: part submissions every 80" gpu_bench ORCHARD_GPU_FLUSH_EVERY=80
run "base: main HEAD, round 3" gpu_bench_base X=1
run "new: defaults, round 3" gpu_bench X=1
kill $CLK
echo "total ${SECONDS}s" | tee -a $OUT/models.txt
