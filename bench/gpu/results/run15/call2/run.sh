#!/usr/bin/env bash
# Run 15, call 2: the unrolled register tiles (`gpu_bench`, final) against call 1's kernel
# (`gpu_bench_arrays`: private arrays indexed in loops) on the attention micro-benchmark, tile
# shape and bounds-check knobs; pp512/tg128 of the final binary against main (`gpu_bench_base`,
# main HEAD 06e825e), alternating; the backend_ops test binary with the new limits on the card.
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
( nice -n 5 $D/gpu_bench --write-only --synth smollm2=/tmp/smollm2.gguf --synth 8b=/tmp/llama8b.gguf >$OUT/synth.txt 2>&1 ) &
SYN=$!
attn() { # label binary [env]
    echo "== attn $1 $(date +%T)" | tee -a $OUT/attn.txt
    env ${3:-X=1} timeout 60 $D/$2 --attn -p 512 --warm-ms 150 2>&1 | grep -v XDG_RUNTIME | grep -v "^device" | tee -a $OUT/attn.txt
}
attn "final (unrolled registers)" gpu_bench
attn "call 1 kernel (arrays)" gpu_bench_arrays
attn "final, 16-query tiles" gpu_bench ORCHARD_GPU_ATTN_TILE_SHAPE=1
attn "final, no bounds checks" gpu_bench ORCHARD_GPU_SHADER_CHECKS=none
wait $SYN
cat $OUT/synth.txt
M="/tmp/smollm2.gguf /tmp/llama8b.gguf"
run() { # label binary [env]
    echo "== $1 $(date +%T)" | tee -a $OUT/models.txt
    env ${3:-X=1} timeout 100 $D/$2 -r 3 $M 2>&1 | grep -v XDG_RUNTIME | tee -a $OUT/models.txt
}
run "base: main 06e825e" gpu_bench_base
run "new: h-gpu6 final" gpu_bench
run "base: main 06e825e, round 2" gpu_bench_base
run "new: h-gpu6 final, round 2" gpu_bench
echo "== backend_ops $(date +%T)" | tee -a $OUT/tests.txt
timeout 200 $D/backend_ops --test-threads=1 --nocapture >$OUT/tests-raw.txt 2>&1
echo "rc=$?" >>$OUT/tests-raw.txt
grep -v XDG_RUNTIME $OUT/tests-raw.txt >>$OUT/tests.txt; rm $OUT/tests-raw.txt
grep -E "attention|test |panicked|result|rc=" $OUT/tests.txt | tail -40
kill $CLK
echo "total ${SECONDS}s" | tee -a $OUT/models.txt
