# Sourced by the device scripts (from the repository root on the lent machine): unpacks the
# carried Vulkan/GL loader .debs (.gl/, the device README's recipe), points the loader at
# NVIDIA's ICD where the image does not register it, and makes wgpu use Vulkan. Also the
# scripts' common names: OUT (results, made here; the device run sets it), BIN (the carried
# binaries) and N (gpu_bench in it).
OUT=${OUT:-/tmp/gpu-bench-out}
mkdir -p "$OUT"
BIN=${BIN:-.bin}
N=$BIN/gpu_bench
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=vulkan
