#!/usr/bin/env bash
# Installs what building and testing Orchard needs on a fresh Debian machine with a Rust toolchain
# (system packages, the Python reference packages, the two real models). Idempotent.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
if command -v apt-get >/dev/null; then
  need=()
  for p in python3-venv pkg-config mesa-vulkan-drivers postgresql cmake; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if ((${#need[@]})); then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
  fi
fi
# The numpy dequantizers of the `gguf` package are the independent reference of the quant tests.
python3 -c 'import gguf, numpy' 2>/dev/null || python3 -m pip install -q gguf numpy
# Lets pip fetch llama-cpp-python's sdist (llama.cpp's source, for its server test suite).
python3 -c 'import scikit_build_core' 2>/dev/null || python3 -m pip install -q scikit-build-core
bash "$ROOT/scripts/fetch-models.sh"
