#!/usr/bin/env python3
"""Reference (de)quantization of ggml's legacy block formats and float types for orchard-quant's
tests, computed by the `gguf` package's numpy code (gguf.quants) and independent of our Rust.

Usage:
  dequant_reference.py dequant JOBS
      JOBS is a tab-separated file, one job a line:  TYPE  SRC  OFFSET  NBYTES  OUT
      Reads NBYTES raw bytes of TYPE at byte OFFSET of SRC (a GGUF file or a file of random
      blocks) and writes OUT: the dequantized values as little-endian float32.
  dequant_reference.py quantize JOBS
      JOBS lines:  TYPE  SRC  OUT
      Reads little-endian float32 values from SRC and writes OUT: the quantized bytes.

TYPE is one of F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1.

The Rust side locates tensors in the GGUF (orchard-gguf) and hands over offsets, because
gguf.GGUFReader parses all metadata eagerly and takes tens of seconds on a 262144-token vocab.

gguf has no Q8_1 code (ggml only ever produces Q8_1 as a dot-product activation format); the two
Q8_1 functions below are our numpy emulation of ggml's C and are labelled as such.

Exits non-zero, with the reason on stderr, if numpy or gguf is missing, so the tests fail loudly.
"""
import sys

try:
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize, quantize, np_roundf
except ImportError as e:
    sys.stderr.write(f"dequant_reference.py: cannot import numpy/gguf: {e}\n")
    sys.exit(3)

TYPES = {
    "F32": T.F32, "F16": T.F16, "BF16": T.BF16,
    "Q4_0": T.Q4_0, "Q4_1": T.Q4_1, "Q5_0": T.Q5_0, "Q5_1": T.Q5_1, "Q8_0": T.Q8_0, "Q8_1": T.Q8_1,
}
Q8_1_BYTES = 36


def dequant_q8_1(raw: np.ndarray) -> np.ndarray:
    # Our emulation (see module doc): y = d * q in float32, `s` unused, as for Q8_0.
    blocks = raw.reshape(-1, Q8_1_BYTES)
    d = blocks[:, 0:2].copy().view("<f2").astype(np.float32)
    q = blocks[:, 4:].copy().view(np.int8).astype(np.float32)
    return (q * d).reshape(-1)


def quant_q8_1(x: np.ndarray) -> np.ndarray:
    # Our emulation of quantize_row_q8_1_ref, on the same float32 steps gguf uses for Q8_0; `s` is
    # the f16 of (float)sum(qs) * d with d the unrounded float32 scale.
    blocks = x.reshape(-1, 32).astype(np.float32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    qs = np_roundf(blocks * inv).astype(np.int8)
    s = qs.astype(np.int32).sum(axis=1, keepdims=True).astype(np.float32) * d
    out = np.concatenate(
        [d.astype("<f2").view(np.uint8), s.astype("<f2").view(np.uint8), qs.view(np.uint8)], axis=1
    )
    return out.reshape(-1)


def dequant(raw: np.ndarray, tname: str) -> np.ndarray:
    if tname == "Q8_1":
        return dequant_q8_1(raw)
    out = np.asarray(dequantize(raw, TYPES[tname]), dtype=np.float32)
    return out.reshape(-1)


def quant(x: np.ndarray, tname: str) -> np.ndarray:
    if tname == "Q8_1":
        return quant_q8_1(x)
    out = np.asarray(quantize(x.reshape(1, -1), TYPES[tname]))
    return out.reshape(-1).view(np.uint8)


def jobs(path: str, n_fields: int):
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != n_fields:
                raise SystemExit(f"{path}: expected {n_fields} fields, got {line!r}")
            if fields[0] not in TYPES:
                raise SystemExit(f"{path}: unknown type {fields[0]}")
            yield fields


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in ("dequant", "quantize"):
        sys.stderr.write(__doc__)
        return 2
    mode, path = sys.argv[1], sys.argv[2]
    n = 0
    if mode == "dequant":
        for tname, src, offset, nbytes, out in jobs(path, 5):
            raw = np.fromfile(src, dtype=np.uint8, count=int(nbytes), offset=int(offset))
            if raw.size != int(nbytes):
                raise SystemExit(f"{src}: short read at {offset}")
            np.asarray(dequant(raw, tname), dtype="<f4").tofile(out)
            n += 1
    else:
        for tname, src, out in jobs(path, 3):
            x = np.fromfile(src, dtype="<f4").astype(np.float32)
            quant(x, tname).tofile(out)
            n += 1
    if n == 0:
        raise SystemExit(f"no jobs in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
