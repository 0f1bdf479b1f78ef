#!/usr/bin/env bash
# Builds llama.cpp's llama-bench with its Vulkan backend on THIS machine (Debian 12), to be
# carried to the device machine as $BIN/llama-bench-vulkan (bench/gpu/run-h100.sh runs it as a
# third engine). The device cannot build it, and neither can Debian 12's packages alone: their
# Vulkan headers (1.3.239) lack what ggml-vulkan.cpp uses (vk::LayerSettingEXT) and their glslc
# (shaderc 2023.2) none of the cooperative-matrix or integer-dot extensions. So Debian 13's
# headers, SPIR-V headers and glslc are fetched from the Debian archive into $WORK (nothing is
# installed system-wide); that glslc needs glibc 2.38, so it runs through Debian 13's own
# dynamic loader and libraries, also unpacked there. The binary links Vulkan dynamically (the
# loader from .gl on the device) and everything else statically; GGML_NATIVE=OFF so that its
# CPU code runs on the device's host. About 40 minutes on 2 cores.
# LLAMA_SRC: a llama.cpp checkout (default /work/llama.cpp-src); BIN: where the binary goes.
set -eu
LLAMA_SRC=${LLAMA_SRC:-/work/llama.cpp-src}
WORK=${WORK:-/work/trixie}
BIN=${BIN:-.bin}
BUILD=${BUILD:-/work/llama-vk}
mkdir -p "$WORK/apt/lists" "$WORK/apt/cache" "$WORK/debs" "$WORK/root" "$WORK/rt"
echo "deb http://deb.debian.org/debian trixie main" >"$WORK/apt/sources.list"
APT=(-o "Dir::Etc::SourceList=$WORK/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$WORK/apt/lists" -o "Dir::Cache=$WORK/apt/cache" -o Debug::NoLocking=1)
apt-get "${APT[@]}" update >/dev/null
(cd "$WORK/debs" && apt-get "${APT[@]}" download libvulkan-dev spirv-headers glslc libshaderc1 \
    libc6 libstdc++6 libgcc-s1 spirv-tools)
for d in "$WORK"/debs/libvulkan-dev_*.deb "$WORK"/debs/spirv-headers_*.deb; do
    dpkg-deb -x "$d" "$WORK/root"
done
for d in "$WORK"/debs/{glslc,libshaderc1,libc6,libstdc++6,libgcc-s1,spirv-tools}_*.deb; do
    dpkg-deb -x "$d" "$WORK/rt"
done
# glslc, and spirv-val for our own shaders (ORCHARD_SPV_DUMP in orchard-gpu's coop test)
for tool in glslc spirv-val; do
    cat >"$WORK/$tool" <<SH
#!/bin/sh
R=\$(dirname "\$(readlink -f "\$0")")/rt
exec "\$R/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "\$R/usr/lib/x86_64-linux-gnu" "\$R/usr/bin/$tool" "\$@"
SH
    chmod +x "$WORK/$tool"
done
"$WORK/glslc" --version | head -1
T=$WORK/root/usr
cmake -S "$LLAMA_SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_VULKAN=ON -DGGML_NATIVE=OFF \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DVulkan_INCLUDE_DIR="$T/include" -DVulkan_LIBRARY=/usr/lib/x86_64-linux-gnu/libvulkan.so.1 \
    -DVulkan_GLSLC_EXECUTABLE="$WORK/glslc" -DCMAKE_CXX_FLAGS="-I$T/include" \
    -DCMAKE_PREFIX_PATH="$T" -DSPIRV-Headers_DIR="$T/share/cmake/SPIRV-Headers" |
    grep -E "GL_|Vulkan"
make -C "$BUILD" -j"$(nproc)" llama-bench
mkdir -p "$BIN"
cp "$BUILD/bin/llama-bench" "$BIN/llama-bench-vulkan"
strip "$BIN/llama-bench-vulkan"
# 51 MB stripped (the SPIR-V it embeds) -> 7 MB: the carry limit is 64 MiB in all.
xz -f -T0 "$BIN/llama-bench-vulkan"
mkdir -p "$BIN/lib"
for l in libgomp.so.1 libssl.so.3 libcrypto.so.3; do cp "/lib/x86_64-linux-gnu/$l" "$BIN/lib/"; done
ls -la "$BIN/llama-bench-vulkan.xz" "$BIN/lib"
