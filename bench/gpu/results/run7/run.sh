#!/usr/bin/env bash
# h-gpu3 device run 1 (run 7): integer-dot matvec shape sweep (in-process, every shape timed
# twice, forward then reverse order) against main HEAD's kernel, then the 8B and SmolLM2
# shapes: main HEAD / this branch without fusion / with fusion / with fusion and the best
# shapes, llama.cpp CUDA in the same call, then a second round. Runs from the repository root
# on the device machine with .gl, .llama and $D carried.
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=vulkan
D=${D:-./.bin/h-gpu3}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee $OUT/card.txt
(
    cmake -S .llama -B /tmp/lcb -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF &&
        nice -n 19 cmake --build /tmp/lcb -j 13 --target llama-bench
) >$OUT/llama-build.log 2>&1 &
BUILD=$!
( nice -n 5 $D/gpu_bench --write-only --synth smollm2=/tmp/smollm2.gguf --synth 8b=/tmp/llama8b.gguf >$OUT/synth.txt 2>&1 ) &
W=$!
timeout 60 python3 - <<'PY' 2>&1 | tail -1 | tee -a $OUT/card.txt
import torch
x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record()
for _ in range(20): y.copy_(x)
e.record(); torch.cuda.synchronize()
ms = s.elapsed_time(e) / 20
print(f"torch copy 2 GiB: {ms:.3f} ms, {2 * x.numel() / ms / 1e6:.0f} GB/s (read + write)")
PY
S=${SHAPES:-128/32/4,64/32/4,256/32/4,64/64/4,128/64/4,128/128/4,128/32/2,64/64/2,128/64/2,128/128/2,128/32/1,64/64/1,256/256/1,128/32/8,256/64/8,64/16/4,128/16/2,256/16/8}
for f in q4_K q6_K; do
    for sh in 4096x14336 14336x4096 4096x4096 4096x1024; do
        [ $f = q6_K ] && [ $sh = 4096x4096 ] && continue
        timeout 60 $D/gpu_bench_base --kernels --no-matmul --formats $f --shape $sh 2>&1 | grep matvec | sed 's/^/base /' | tee -a $OUT/kernels.txt
        timeout 90 $D/gpu_bench --kernels --no-matmul --formats $f --shape $sh --q8k-shapes $S 2>&1 | grep -E 'matvec|q8k' | tee -a $OUT/kernels.txt
    done
done
# best shape per format: weighted sum of ms over the 8B layer's matrices (both orders)
pick() {
    awk -v F=$1 '$1=="q8k" && $2==F && $5+0>0 {
        s=$4; sub(":","",s); nm=$0; sub(/.*CPU /,"",nm); sub(/\)/,"",nm);
        if (nm+0 > 1e-10) bad[s]=1;
        w=0;
        if (F=="q4_K") { if ($3=="4096x14336") w=2; else if ($3=="14336x4096") w=0.6; else if ($3=="4096x4096") w=2; else w=1.6 }
        else { if ($3=="4096x14336") w=0.1; else if ($3=="14336x4096") w=0.4; else w=0.4 }
        t[s]+=w*$5 }
        END { m=1e9; for (k in t) if (!(k in bad) && t[k]<m) { m=t[k]; b=k } print b }' $OUT/kernels.txt
}
Q4=$(pick q4_K); Q6=$(pick q6_K)
echo "best: q4_K $Q4, q6_K $Q6" | tee -a $OUT/kernels.txt
wait $W; cat $OUT/synth.txt
M="/tmp/smollm2.gguf /tmp/llama8b.gguf"
run() { # label env...
    local l=$1; shift
    echo "== $l" | tee -a $OUT/models.txt
    env "$@" timeout 100 $D/gpu_bench -r 2 $M 2>&1 | tee -a $OUT/models.txt
}
echo "== base: main HEAD" | tee -a $OUT/models.txt
timeout 100 $D/gpu_bench_base -r 2 $M 2>&1 | tee -a $OUT/models.txt
run "new, no fusion, default shape" ORCHARD_GPU_FUSE=0
run "new, fusion, default shape" X=1
run "new, fusion, best shapes" ORCHARD_GPU_Q8K_SHAPE=$Q4 ORCHARD_GPU_Q6K_SHAPE=$Q6
while kill -0 "$BUILD" 2>/dev/null && [ "$SECONDS" -lt 420 ]; do sleep 2; done
tail -2 $OUT/llama-build.log
if [ -x /tmp/lcb/bin/llama-bench ]; then
    timeout 100 /tmp/lcb/bin/llama-bench -m /tmp/smollm2.gguf -m /tmp/llama8b.gguf -ngl 99 -p 512 -n 128 -r 3 2>&1 | tee $OUT/llama-cuda.txt
fi
echo "== base: main HEAD, round 2" | tee -a $OUT/models.txt
timeout 80 $D/gpu_bench_base -r 2 $M 2>&1 | tee -a $OUT/models.txt
run "new, fusion, best shapes, round 2" ORCHARD_GPU_Q8K_SHAPE=$Q4 ORCHARD_GPU_Q6K_SHAPE=$Q6
echo "total ${SECONDS}s" | tee -a $OUT/models.txt
