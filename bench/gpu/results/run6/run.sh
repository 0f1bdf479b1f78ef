#!/usr/bin/env bash
# h-gpu2 device run: integer-dot matvec variant sweep (per-kernel GB/s), then 8B and SmolLM2
# shapes alternating before (main HEAD) / after (best variant by env) / llama.cpp CUDA.
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=vulkan
D=./.bin/h-gpu2
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee $OUT/card.txt
(
    cmake -S .llama -B /tmp/lcb -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF &&
        nice -n 19 cmake --build /tmp/lcb -j 13 --target llama-bench
) >$OUT/llama-build.log 2>&1 &
BUILD=$!
( $D/gpu_bench --write-only --synth smollm2=/tmp/smollm2.gguf --synth 8b=/tmp/llama8b.gguf >$OUT/synth.txt 2>&1 ) &
W=$!
# K NAME BINARY ENV...: q4_K and q6_K matvec, one process each
K() {
    local name=$1 bin=$2; shift 2
    for f in q4_K q6_K; do
        r=$(env "$@" timeout 60 $D/$bin --kernels --no-matmul --formats $f 2>&1 | grep matvec)
        echo "$name | $f | $r" | tee -a $OUT/kernels.txt
    done
}
K base gpu_bench_base X=1
K new gpu_bench X=1
K u2 gpu_bench ORCHARD_GPU_Q8K_UNROLL=2
K u4 gpu_bench ORCHARD_GPU_Q8K_UNROLL=4
K s16 gpu_bench ORCHARD_GPU_Q4K_UNIT=16
K s16u2 gpu_bench ORCHARD_GPU_Q4K_UNIT=16 ORCHARD_GPU_Q8K_UNROLL=2
K s16u4 gpu_bench ORCHARD_GPU_Q4K_UNIT=16 ORCHARD_GPU_Q8K_UNROLL=4
K s16u2wg64 gpu_bench ORCHARD_GPU_Q4K_UNIT=16 ORCHARD_GPU_Q8K_UNROLL=2 ORCHARD_GPU_Q8K_WG=64
K s16u2wg256 gpu_bench ORCHARD_GPU_Q4K_UNIT=16 ORCHARD_GPU_Q8K_UNROLL=2 ORCHARD_GPU_Q8K_WG=256
K s16u2tpr16 gpu_bench ORCHARD_GPU_Q4K_UNIT=16 ORCHARD_GPU_Q8K_UNROLL=2 ORCHARD_GPU_Q8K_TPR=16
K base gpu_bench_base X=1
# best: least q4 ms + 0.5 q6 ms among the new variants
BEST=$(awk -F' [|] ' '$1!="base" && $1!="new" { split($3,a," "); t=a[4]+0; if (t==0 || a[11]+0 > 1e-10) t=1000; if ($2=="q4_K") s[$1]+=t; else s[$1]+=0.5*t } END { m=1e9; for (k in s) if (s[k]<m) { m=s[k]; b=k } print b }' $OUT/kernels.txt)
echo "best: $BEST" | tee -a $OUT/kernels.txt
case $BEST in
    u2) E="ORCHARD_GPU_Q8K_UNROLL=2" ;;
    u4) E="ORCHARD_GPU_Q8K_UNROLL=4" ;;
    s16) E="ORCHARD_GPU_Q4K_UNIT=16" ;;
    s16u2) E="ORCHARD_GPU_Q4K_UNIT=16 ORCHARD_GPU_Q8K_UNROLL=2" ;;
    s16u4) E="ORCHARD_GPU_Q4K_UNIT=16 ORCHARD_GPU_Q8K_UNROLL=4" ;;
    s16u2wg64) E="ORCHARD_GPU_Q4K_UNIT=16 ORCHARD_GPU_Q8K_UNROLL=2 ORCHARD_GPU_Q8K_WG=64" ;;
    s16u2wg256) E="ORCHARD_GPU_Q4K_UNIT=16 ORCHARD_GPU_Q8K_UNROLL=2 ORCHARD_GPU_Q8K_WG=256" ;;
    *) E="ORCHARD_GPU_Q4K_UNIT=16 ORCHARD_GPU_Q8K_UNROLL=2 ORCHARD_GPU_Q8K_TPR=16" ;;
esac
for sh in 14336x4096 4096x1024; do
    for f in q4_K q6_K; do
        for b in gpu_bench_base gpu_bench; do
            r=$(env $E timeout 60 $D/$b --kernels --no-matmul --formats $f --shape $sh 2>&1 | grep matvec)
            echo "$b $sh | $f | $r" | tee -a $OUT/kernels.txt
        done
    done
done
wait $W; cat $OUT/synth.txt
M="/tmp/smollm2.gguf /tmp/llama8b.gguf"
echo "== before (main HEAD)" | tee -a $OUT/models.txt
timeout 100 $D/gpu_bench_base -r 2 $M 2>&1 | tee -a $OUT/models.txt
echo "== after ($E)" | tee -a $OUT/models.txt
env $E timeout 100 $D/gpu_bench -r 2 $M 2>&1 | tee -a $OUT/models.txt
while kill -0 "$BUILD" 2>/dev/null && [ "$SECONDS" -lt 400 ]; do sleep 2; done
tail -2 $OUT/llama-build.log
if [ -x /tmp/lcb/bin/llama-bench ]; then
    timeout 100 /tmp/lcb/bin/llama-bench -m /tmp/smollm2.gguf -m /tmp/llama8b.gguf -ngl 99 -p 512 -n 128 -r 3 2>&1 | tee $OUT/llama-cuda.txt
fi
echo "== before (main HEAD), round 2" | tee -a $OUT/models.txt
timeout 80 $D/gpu_bench_base -r 2 $M 2>&1 | tee -a $OUT/models.txt
echo "== after ($E), round 2" | tee -a $OUT/models.txt
env $E timeout 80 $D/gpu_bench -r 2 $M 2>&1 | tee -a $OUT/models.txt
echo "total ${SECONDS}s"
