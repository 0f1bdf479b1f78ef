#!/usr/bin/env bash
# Run 15, call 3: final branch (16-query tiles first, ATTN_TILE without bounds checks) against
# main (`gpu_bench_base`, main HEAD 06e825e): attention micro-benchmark (and the 32-query shape
# by knob), pp512/tg128 alternating; every backend_ops test in its own process (in one process
# the NVIDIA adapter stops being found after 14 tests, calls 1-2).
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
attn "final (16-query tiles, unchecked)" gpu_bench
attn "final, 32-query tiles" gpu_bench ORCHARD_GPU_ATTN_TILE_SHAPE=1
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
for t in $($D/backend_ops --list 2>/dev/null | sed -n 's/: test$//p'); do
    echo "== $t" >>$OUT/tests.txt
    timeout 60 $D/backend_ops --exact "$t" --nocapture >>$OUT/tests.txt 2>&1
    echo "$t rc=$?" | tee -a $OUT/tests.txt
done
grep -v XDG_RUNTIME $OUT/tests.txt > $OUT/t && mv $OUT/t $OUT/tests.txt
grep -E "NMSE [0-9.]+e-0?[0-8]\b|panicked" $OUT/tests.txt | head -20
kill $CLK
echo "total ${SECONDS}s" | tee -a $OUT/models.txt
