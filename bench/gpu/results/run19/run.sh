#!/usr/bin/env bash
# Run 19: merged main (profiler, ATTN_DECODE, f32 + split decode attention) = .bin/final3/gpu_bench
# against main before this session (83da41f GPU code) = .bin/final3/gpu_bench_base, llama.cpp CUDA built in the same call.
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=vulkan
N=./.bin/final3/gpu_bench; B=./.bin/final3/gpu_bench_base
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee $OUT/card.txt
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
nice -n 5 $N --write-only --synth smollm2=/tmp/smollm2.gguf --synth 8b=/tmp/llama8b.gguf 2>&1 | tail -2
M="/tmp/smollm2.gguf /tmp/llama8b.gguf"
run() { echo "== $1 $(date +%T)" | tee -a $OUT/models.txt; shift; timeout 100 "$@" 2>&1 | grep -v XDG_RUNTIME | tee -a $OUT/models.txt; }
run "base: main 83da41f" $B -r 3 $M
run "new: merged main" $N -r 3 $M
run "base round 2" $B -r 3 $M
run "new round 2" $N -r 3 $M
timeout 60 $N --profile -r 1 -p 512 -n 128 /tmp/llama8b.gguf 2>&1 | grep -v XDG_RUNTIME | tee $OUT/profile.txt
while kill -0 "$BUILD" 2>/dev/null && [ "$SECONDS" -lt 480 ]; do sleep 2; done
tail -2 $OUT/llama-build.log
if [ -x /tmp/lcb/bin/llama-bench ]; then
    echo "== llama-bench $(date +%T)" | tee -a $OUT/models.txt
    timeout 80 /tmp/lcb/bin/llama-bench -m /tmp/smollm2.gguf -m /tmp/llama8b.gguf -ngl 99 -p 512 -n 128 -r 3 2>&1 | tee $OUT/llama-cuda.txt | tee -a $OUT/models.txt
fi
[ "$SECONDS" -lt 540 ] && run "new round 3" $N -r 3 $M
echo "total ${SECONDS}s" | tee -a $OUT/models.txt
