#!/usr/bin/env bash
# GPU benchmark on the lent NVIDIA machine, through Vulkan (orchard-gpu) side by side with
# llama.cpp's CUDA backend built there. Runs from the repository root ON THE DEVICE MACHINE.
#
# Prepared here first (nothing can be fetched there, and it has no Rust toolchain):
#   .gl/    Vulkan/GL loader .debs (recipe in the device README)
#   .bin/gpu_bench   cargo build --release -p orchard-gpu --example gpu_bench; strip
#   .llama/ llama.cpp sources pruned to ggml (CPU+CUDA), src, common, vendor, tools/llama-bench
#           (bench/gpu/prepare.sh makes .bin and .llama)
# Then: run(command="bash bench/gpu/run-h100.sh", carry=[".gl", ".bin", ".llama"]).
# Models: the real GGUFs are larger than what may travel (64 MiB), so the SmolLM2-135M and
# Llama-8B shapes are written there as Q4_K_M by our synthetic writer (same tensor types as
# llama-quantize's Q4_K_M); both engines read the same files.
set -u
OUT=${OUT:-/tmp/gpu-bench-out}
mkdir -p "$OUT"
REPO=$(pwd)
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=vulkan
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/card.txt"

# llama.cpp CUDA build, low priority, in parallel with our runs (about 4 minutes on 16 cores);
# SKIP_LLAMA=1 leaves it out (a rerun of our side only).
[ "${SKIP_LLAMA:-0}" = 1 ] || (
    cmake -S "$REPO/.llama" -B /tmp/lcb -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF &&
        nice -n 19 cmake --build /tmp/lcb -j 14 --target llama-bench
) >"$OUT/llama-build.log" 2>&1 &
BUILD=${!:-}
[ "${SKIP_LLAMA:-0}" = 1 ] && BUILD=

# The card's device-to-device copy bandwidth (bytes read + written), through PyTorch.
python3 - <<'EOF' 2>&1 | tee "$OUT/copy.txt"
import torch
x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record()
for _ in range(20): y.copy_(x)
e.record(); torch.cuda.synchronize()
ms = s.elapsed_time(e) / 20
print(f"torch copy 2 GiB: {ms:.3f} ms, {2 * x.numel() / ms / 1e6:.0f} GB/s (read + write)")
EOF

timeout 330 ./.bin/gpu_bench --kernels --synth smollm2=/tmp/smollm2-synth-q4km.gguf \
    --synth 8b=/tmp/llama8b-synth-q4km.gguf -r 3 2>&1 | tee "$OUT/orchard.txt"
# the same without rounding activations as the CPU does (f32 activations into the matmuls)
timeout 120 ./.bin/gpu_bench --f32-act -r 3 /tmp/smollm2-synth-q4km.gguf \
    /tmp/llama8b-synth-q4km.gguf 2>&1 | tee -a "$OUT/orchard.txt"

[ -n "$BUILD" ] && wait $BUILD && tail -3 "$OUT/llama-build.log"
if [ -n "$BUILD" ] && [ -x /tmp/lcb/bin/llama-bench ]; then
    timeout 150 /tmp/lcb/bin/llama-bench -m /tmp/smollm2-synth-q4km.gguf \
        -m /tmp/llama8b-synth-q4km.gguf -ngl 99 -p 512 -n 128 -r 3 2>&1 | tee "$OUT/llama-cuda.txt"
fi
