# Sourced by the device scripts (from the repository root on the lent machine): unpacks the
# carried Vulkan/GL loader .debs (.gl/, the device README's recipe), points the loader at
# NVIDIA's ICD where the image does not register it, and makes wgpu use Vulkan.
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=vulkan
