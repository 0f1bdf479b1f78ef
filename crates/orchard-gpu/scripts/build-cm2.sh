#!/usr/bin/env bash
# Compiles src/cm2/matmul_cm2.comp (one module per tile and format) and src/cm2/attn_cm2.comp
# (one per head dim) into the SPIR-V modules orchard-gpu embeds, and validates them. Needs a glslc that knows GL_NV_cooperative_matrix2
# (shaderc 2024 or newer; Debian 13's works, and bench/gpu/prepare-vulkan.sh sets one up for
# Debian 12 in /work/trixie): GLSLC and SPIRV_VAL name them (default: from PATH).
set -euo pipefail
DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../src/cm2" && pwd)
GLSLC=${GLSLC:-glslc}
SPIRV_VAL=${SPIRV_VAL:-spirv-val}
# The tiles `cm2::TILES` lists: weight rows x tokens x K step, `h` for f16 accumulators.
# Each for the two formats it reads (`cm2::has_format`).
for f in q4_K q6_K; do
  fmt=()
  [[ $f == q6_K ]] && fmt=(-DFORMAT_Q6_K)
  for t in 128x64x32 128x128x64 128x256x64h; do
    acc=()
    [[ $t == *h ]] && acc=(-DACC_F16)
    IFS=x read -r bm bn bk <<<"${t%h}"
    out="$DIR/matmul_cm2_${f}_${t}.spv"
    "$GLSLC" -fshader-stage=compute --target-env=vulkan1.3 -O -DBM="$bm" -DBN="$bn" -DBK="$bk" \
      "${acc[@]}" "${fmt[@]}" "$DIR/matmul_cm2.comp" -o "$out"
    "$SPIRV_VAL" --target-env vulkan1.3 "$out"
    echo "$(basename "$out"): $(stat -c %s "$out") bytes"
  done
done
# The prompt attention kernel, per head dim `cm2::attention_spirv` takes: 64 queries a
# workgroup, 64 cells a step (32 at head dim 256, as llama.cpp's: its f32 output tile is twice
# the size).
for d in 64 128 256; do
  bc=64
  [[ $d == 256 ]] && bc=32
  out="$DIR/attn_cm2_d${d}.spv"
  "$GLSLC" -fshader-stage=compute --target-env=vulkan1.3 -O -DD="$d" -DBR=64 -DBC="$bc" \
    "$DIR/attn_cm2.comp" -o "$out"
  "$SPIRV_VAL" --target-env vulkan1.3 "$out"
  echo "$(basename "$out"): $(stat -c %s "$out") bytes"
done
