#!/usr/bin/env python3
"""Reference K-quant dequantization for orchard-quant's tests, using the `gguf` package's numpy
dequantizers (gguf.quants.dequantize), independent of our Rust code.

Usage: kquants_dequant_ref.py DIR
For every DIR/<stem>.<TYPE>.bin holding raw blocks of TYPE (Q2_K..Q6_K, Q8_K), writes
DIR/<stem>.f32: the dequantized values as little-endian float32.

The test hands over raw bytes rather than the GGUF path because gguf.GGUFReader parses all
metadata eagerly (a 262144-token vocabulary takes tens of seconds); dequantization is the part
under test.

Exits non-zero, with the reason on stderr, if numpy or gguf is missing, so the test fails loudly.
"""
import os
import sys

try:
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize
except ImportError as e:
    sys.stderr.write(f"kquants_dequant_ref.py: cannot import numpy/gguf: {e}\n")
    sys.exit(3)

KQUANTS = {"Q2_K": T.Q2_K, "Q3_K": T.Q3_K, "Q4_K": T.Q4_K, "Q5_K": T.Q5_K, "Q6_K": T.Q6_K, "Q8_K": T.Q8_K}


def dequant_q8_k(raw: np.ndarray) -> np.ndarray:
    # gguf has no Q8_K dequantizer (it is an activation-only format); ggml's is y = d * q with
    # d an f32, evaluated here in float32 exactly as the C code does.
    blocks = raw.reshape(-1, 292)
    d = blocks[:, 0:4].copy().view("<f4").astype(np.float32)
    q = blocks[:, 4:260].copy().view(np.int8).astype(np.float32)
    return (d * q).reshape(-1)


def dequant(raw: np.ndarray, qtype) -> np.ndarray:
    if qtype == T.Q8_K:
        return dequant_q8_k(raw)
    out = dequantize(raw, qtype)
    if out.dtype != np.float32:
        raise SystemExit(f"gguf returned {out.dtype}, expected float32")
    return out.reshape(-1)


def main() -> int:
    if len(sys.argv) != 2:
        sys.stderr.write(__doc__)
        return 2
    d = sys.argv[1]
    n = 0
    for fname in sorted(os.listdir(d)):
        if not fname.endswith(".bin"):
            continue
        stem, tname = fname[: -len(".bin")].rsplit(".", 1)
        if tname not in KQUANTS:
            raise SystemExit(f"{fname}: unknown type {tname}")
        raw = np.fromfile(os.path.join(d, fname), dtype=np.uint8)
        dequant(raw, KQUANTS[tname]).astype("<f4").tofile(os.path.join(d, f"{stem}.f32"))
        n += 1
    if n == 0:
        raise SystemExit(f"no .bin files in {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
