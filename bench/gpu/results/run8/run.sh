#!/usr/bin/env bash
# h-gpu3 device run 2 (run 8): the integer-dot kernels after a warm-up (run 7 showed the same
# dispatches running up to 4x faster after ~1 s of load), the per-matrix shape choice against
# the old fixed 128/32/4, then the 8B and SmolLM2 shapes: main HEAD / this branch (auto shapes
# + fusion) / fixed shape + fusion / auto shapes without fusion, llama.cpp CUDA, second round.
# Clocks are sampled (read-only nvidia-smi query) throughout.
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=vulkan
D=${D:-./.bin/h-gpu3}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee $OUT/card.txt
nvidia-smi --query-gpu=timestamp,pstate,clocks.sm,clocks.mem,utilization.gpu,power.draw --format=csv -lms 250 >$OUT/clocks.csv 2>&1 &
CLK=$!
(
    cmake -S .llama -B /tmp/lcb -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF &&
        nice -n 19 cmake --build /tmp/lcb -j 13 --target llama-bench
) >$OUT/llama-build.log 2>&1 &
BUILD=$!
( nice -n 5 $D/gpu_bench --write-only --synth smollm2=/tmp/smollm2.gguf --synth 8b=/tmp/llama8b.gguf >$OUT/synth.txt 2>&1 ) &
W=$!
S=128/32/4,128/64/4,128/128/4,64/64/4,128/64/2,128/128/2
for f in q4_K q6_K; do
    for sh in 4096x14336 14336x4096 4096x4096 4096x1024; do
        [ $f = q6_K ] && [ $sh = 4096x4096 ] && continue
        echo "kernels $f $sh $(date +%T.%N)" >>$OUT/kernels.txt
        timeout 60 $D/gpu_bench --kernels --no-matmul --warm-ms 150 --formats $f --shape $sh --q8k-shapes $S 2>&1 | grep -E 'matvec|q8k' | tee -a $OUT/kernels.txt
    done
done
wait $W; cat $OUT/synth.txt
M="/tmp/smollm2.gguf /tmp/llama8b.gguf"
run() { # label env...
    local l=$1; shift
    echo "== $l $(date +%T)" | tee -a $OUT/models.txt
    env "$@" timeout 100 $D/gpu_bench -r 2 $M 2>&1 | tee -a $OUT/models.txt
}
base() {
    echo "== base: main HEAD $1 $(date +%T)" | tee -a $OUT/models.txt
    timeout 100 $D/gpu_bench_base -r 2 $M 2>&1 | tee -a $OUT/models.txt
}
base ""
run "new: auto shapes + fusion (defaults)" X=1
run "new: fixed 128/32/4 + fusion" ORCHARD_GPU_Q8K_AUTO=0
run "new: auto shapes, no fusion" ORCHARD_GPU_FUSE=0
while kill -0 "$BUILD" 2>/dev/null && [ "$SECONDS" -lt 290 ]; do sleep 2; done
tail -2 $OUT/llama-build.log
if [ -x /tmp/lcb/bin/llama-bench ]; then
    echo "llama-bench $(date +%T)" >>$OUT/models.txt
    timeout 80 /tmp/lcb/bin/llama-bench -m /tmp/smollm2.gguf -m /tmp/llama8b.gguf -ngl 99 -p 512 -n 128 -r 3 2>&1 | tee $OUT/llama-cuda.txt
fi
if [ "$SECONDS" -lt 320 ]; then
    base "round 2"
    run "new: defaults, round 2" X=1
fi
kill $CLK
echo "total ${SECONDS}s" | tee -a $OUT/models.txt
