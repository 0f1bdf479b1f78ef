#!/usr/bin/env bash
# Memory bandwidth of this machine, STREAM-style (triad and a pure read), at 1 and 2 threads:
# the bound for CPU token generation, which streams every weight once per token.
# usage: bench/stream/run.sh [MiB-elements per array, default 64 (512 MiB)] [passes, default 10]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${TMPDIR:-/tmp}/orchard-triad
gcc -O3 -ffast-math -march=native -fopenmp "$here/triad.c" -o "$bin"
for t in ${THREADS:-1 2}; do
  OMP_NUM_THREADS=$t OMP_PROC_BIND=spread "$bin" "${1:-64}" "${2:-10}"
done
