#!/usr/bin/env bash
# Final side-by-side of this stop (run 16), after round 6 (tiled prefill attention): main with rounds 4 (decode fusion, h-gpu4) and 5
# (cooperative-matrix prompts, h-gpu5) merged, against main f8bc432 (before both) and
# llama.cpp's CUDA llama-bench built on this machine in the same call; copy bandwidth through
# PyTorch. Binaries: .bin/final/gpu_bench (merged main), .bin/final/gpu_bench_base (f8bc432).
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=vulkan
D=./.bin/final2
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee $OUT/card.txt
nvidia-smi --query-gpu=timestamp,pstate,clocks.sm,clocks.mem,utilization.gpu,power.draw --format=csv -lms 500 >$OUT/clocks.csv 2>&1 &
CLK=$!
(
    cmake -S .llama -B /tmp/lcb -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF &&
        nice -n 19 cmake --build /tmp/lcb -j 13 --target llama-bench
) >$OUT/llama-build.log 2>&1 &
BUILD=$!
python3 - <<'PY' 2>&1 | tee $OUT/copy.txt
import torch
x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
torch.cuda.synchronize(); s.record()
for _ in range(10): y.copy_(x)
e.record(); torch.cuda.synchronize()
ms = s.elapsed_time(e) / 10
print(f"torch copy 2 GiB: {ms:.3f} ms, {2 * x.numel() / ms / 1e6:.0f} GB/s (read + write)")
PY
( nice -n 5 $D/gpu_bench --write-only --synth smollm2=/tmp/smollm2.gguf --synth 8b=/tmp/llama8b.gguf >$OUT/synth.txt 2>&1 )
cat $OUT/synth.txt
M="/tmp/smollm2.gguf /tmp/llama8b.gguf"
run() { # label binary
    echo "== $1 $(date +%T)" | tee -a $OUT/models.txt
    timeout 100 $D/$2 -r 3 $M 2>&1 | grep -v XDG_RUNTIME | tee -a $OUT/models.txt
}
run "base: main f8bc432" gpu_bench_base
run "new: merged main" gpu_bench
run "base: main f8bc432, round 2" gpu_bench_base
run "new: merged main, round 2" gpu_bench
while kill -0 "$BUILD" 2>/dev/null && [ "$SECONDS" -lt 500 ]; do sleep 2; done
tail -2 $OUT/llama-build.log
if [ -x /tmp/lcb/bin/llama-bench ]; then
    echo "== llama-bench $(date +%T)" | tee -a $OUT/models.txt
    timeout 90 /tmp/lcb/bin/llama-bench -m /tmp/smollm2.gguf -m /tmp/llama8b.gguf -ngl 99 -p 512 -n 128 -r 3 2>&1 | tee $OUT/llama-cuda.txt | tee -a $OUT/models.txt
fi
[ "$SECONDS" -lt 540 ] && run "new: merged main, round 3" gpu_bench
kill $CLK
echo "total ${SECONDS}s" | tee -a $OUT/models.txt
