#!/usr/bin/env bash
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=vulkan
D=./.bin/prof
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee $OUT/card.txt
$D/gpu_bench --write-only --synth smollm2=/tmp/smollm2.gguf --synth 8b=/tmp/llama8b.gguf 2>&1 | tail -3
timeout 200 $D/gpu_bench --profile -r 2 -p 512 -n 64 /tmp/llama8b.gguf /tmp/smollm2.gguf 2>&1 | grep -v XDG_RUNTIME | tee $OUT/profile.txt
echo "total ${SECONDS}s"
