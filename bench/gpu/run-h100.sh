#!/usr/bin/env bash
# GPU benchmark on the lent NVIDIA machine, through Vulkan (orchard-gpu) side by side with
# llama.cpp's CUDA backend built there. Runs from the repository root ON THE DEVICE MACHINE.
#
# Prepared here first (nothing can be fetched there, and it has no Rust toolchain):
#   .gl/    Vulkan/GL loader .debs (recipe in the device README)
#   $BIN/gpu_bench       this tree's cargo build --release -p orchard-gpu --example gpu_bench; strip
#   $BIN/gpu_bench_base  the same example built from an earlier commit (the "before" column;
#                        optional)
#   $BIN/llama-bench-vulkan(.xz)  llama.cpp's llama-bench with its Vulkan backend, built here
#                        by bench/gpu/prepare-vulkan.sh (optional; the device cannot build it),
#                        with $BIN/lib: the libgomp/libssl/libcrypto it links
#   .llama/ llama.cpp sources pruned to ggml (CPU+CUDA), src, common, vendor, tools/llama-bench
#           (bench/gpu/prepare.sh makes .bin and .llama)
# Then: run(command="bash bench/gpu/run-h100.sh", carry=[".gl", ".bin", ".llama"]).
# Models: the real GGUFs are larger than what may travel (64 MiB), so the SmolLM2-135M and
# Llama-8B shapes are written there as Q4_K_M by our synthetic writer (same tensor types as
# llama-quantize's Q4_K_M); all engines read the same files. After the build, two quiet rounds
# alternate the engines: orchard, the earlier binary, llama.cpp CUDA, llama.cpp Vulkan.
set -u
REPO=$(pwd)
. bench/gpu/vulkan-env.sh
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/card.txt"

# llama.cpp CUDA build, low priority, in parallel with our runs (about 4 minutes on 16 cores);
# SKIP_LLAMA=1 leaves it out (a rerun of our side only).
# The sources travel as .llama/ or, smaller, as $BIN/llama-src.tar.xz (of .llama/).
SRC=$REPO/.llama
if [ ! -d "$SRC" ] && [ -f "$BIN/llama-src.tar.xz" ]; then
    tar -xJf "$BIN/llama-src.tar.xz" -C /tmp && SRC=/tmp/.llama
fi
BUILD=
if [ "${SKIP_LLAMA:-0}" != 1 ]; then
    (
        cmake -S "$SRC" -B /tmp/lcb -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
            -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
            -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF &&
            nice -n 19 cmake --build /tmp/lcb -j 14 --target llama-bench
    ) >"$OUT/llama-build.log" 2>&1 &
    BUILD=$!
fi

# The card's device-to-device copy bandwidth (bytes read + written), through PyTorch.
python3 - <<'PY' 2>&1 | tee "$OUT/copy.txt"
import torch
x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record()
for _ in range(20): y.copy_(x)
e.record(); torch.cuda.synchronize()
ms = s.elapsed_time(e) / 20
print(f"torch copy 2 GiB: {ms:.3f} ms, {2 * x.numel() / ms / 1e6:.0f} GB/s (read + write)")
PY

B=$BIN/gpu_bench_base
# A llama-bench built here with llama.cpp's Vulkan backend (bench/gpu/prepare-vulkan.sh), if
# carried: the third engine of the rounds.
# Carried xz-compressed with the shared libraries it links besides Vulkan ($BIN/lib), to stay
# under what may travel.
V=$BIN/llama-bench-vulkan
if [ -f "$V.xz" ]; then
    xz -dc "$V.xz" >/tmp/llama-bench-vulkan && chmod +x /tmp/llama-bench-vulkan
    V=/tmp/llama-bench-vulkan
fi
VLIB=$REPO/$BIN/lib
M="/tmp/smollm2-synth-q4km.gguf /tmp/gemma3-synth-q4km.gguf /tmp/llama8b-synth-q4km.gguf"
LM=""
for m in $M; do LM="$LM -m $m"; done
timeout 120 $N --write-only --synth smollm2=/tmp/smollm2-synth-q4km.gguf \
    --synth gemma3=/tmp/gemma3-synth-q4km.gguf \
    --synth 8b=/tmp/llama8b-synth-q4km.gguf 2>&1 | tee "$OUT/orchard.txt"
run() {
    echo "== $1 $(date +%T)" | tee -a "$OUT/models.txt"
    shift
    timeout 150 "$@" 2>&1 | grep -v XDG_RUNTIME | tee -a "$OUT/models.txt"
}
# While llama.cpp compiles (it takes 13 of the 16 cores: host-bound figures, kept apart):
# kernels, a profile and one round of ours.
# TESTS="BINARY FILTER": a carried test binary (cargo test --no-run, stripped) run first, one
# test per process (the NVIDIA driver drops the adapter after ~15-20 backends in one process).
# KERNEL_ENVS: space-separated settings (VAR=value, several joined by commas) under which the
# tests and kernel timings run, one after another (a shader the driver fails to compile
# poisons the device for the rest of its process).
for ke in ${KERNEL_ENVS:-ORCHARD_NONE=1}; do
    ke=${ke//,/ }
    if [ -n "${TESTS:-}" ]; then
        set -- $TESTS
        tb=$1
        shift
        for t in $("$tb" --list "$@" 2>/dev/null | sed -n 's/: test$//p'); do
            echo "== $t $ke" >>"$OUT/tests.txt"
            timeout 120 env $ke "$tb" --exact "$t" --test-threads 1 2>&1 |
                grep -E "^test |panicked|NMSE|NVVM" | tee -a "$OUT/tests.txt"
        done
    fi
    if [ "${KERNELS:-0}" = 1 ]; then
        # One process per format (and --shape in KERNEL_SHAPES), each timing after a warm-up
        # (--warm-ms; run 8: the SM clock idles at 345 MHz and the same dispatches ran up to
        # 4x slower until it rose). KERNEL_ARGS adds options (e.g. --no-matvec).
        for sh in ${KERNEL_SHAPES:-4096x14336}; do
            for f in ${FORMATS:-q4_K q6_K q5_K q8_0 q4_0 q5_0 f16}; do
                echo "== kernels $f $sh $ke" >>"$OUT/orchard.txt"
                timeout "${KERNEL_TIMEOUT:-60}" env $ke $N --kernels --warm-ms 150 --formats $f --shape $sh ${KERNEL_ARGS:-} 2>&1 |
                    grep -v '^device' | tee -a "$OUT/orchard.txt"
            done
        done
    fi
done
# PROFILE_ENV: settings (comma-joined VAR=value) for the profile run.
pe=${PROFILE_ENV:-ORCHARD_NONE=1}
[ "${PROFILE:-1}" = 1 ] && timeout 90 env ${pe//,/ } $N --profile -r 1 -p 512 -n 128 /tmp/llama8b-synth-q4km.gguf 2>&1 | grep -v XDG_RUNTIME | tee "$OUT/profile.txt"
# The A/B of this tree against the earlier binary, alternating under the same contention.
for r in 1 2; do
    { [ -z "$BUILD" ] || ! kill -0 "$BUILD" 2>/dev/null; } && break
    run "during the build $r: orchard (this tree)" $N -r 2 $M
    [ -x "$B" ] && run "during the build $r: orchard before (gpu_bench_base)" $B -r 2 $M
done
if [ -n "$BUILD" ]; then
    # the lent machine allows 10 minutes a command: give up on llama.cpp past 6.5
    while kill -0 "$BUILD" 2>/dev/null && [ "$SECONDS" -lt 390 ]; do sleep 2; done
    tail -2 "$OUT/llama-build.log"
fi
# Quiet rounds, engines alternating on the same files (ROUNDS=0: none).
C=/tmp/lcb/bin/llama-bench
for r in $(seq 1 "${ROUNDS:-2}"); do
    [ "$SECONDS" -lt 560 ] && run "round $r: orchard (this tree)" $N -r 3 $M
    [ -x "$C" ] && [ "$SECONDS" -lt 560 ] &&
        run "round $r: llama.cpp CUDA" $C $LM -ngl 99 -p 512 -n 128 -r 3
    [ -x "$V" ] && [ "$SECONDS" -lt 560 ] &&
        run "round $r: llama.cpp Vulkan" env LD_LIBRARY_PATH="$VLIB" $V $LM -ngl 99 -p 512 -n 128 -r 3
    # VARIANTS: space-separated VAR=value settings (ORCHARD_GPU_* knobs; several joined by
    # commas), each one more run.
    for v in ${VARIANTS:-}; do
        [ "$SECONDS" -lt 560 ] && run "round $r: orchard (this tree), $v" env ${v//,/ } $N -r 3 $M
    done
done
if [ "${ROUNDS:-2}" != 0 ]; then
    [ -x "$B" ] && [ "$SECONDS" -lt 540 ] && run "quiet: orchard before (gpu_bench_base)" $B -r 3 $M
    [ "$SECONDS" -lt 540 ] && run "quiet: orchard (this tree) again" $N -r 3 $M
fi
echo "total ${SECONDS}s" | tee -a "$OUT/models.txt"
