//! Weight formats as the GPU reads them. GGUF blocks are packed byte structs (a Q4_0 block is 18
//! bytes) that WGSL, having no 8- or 16-bit storage types, can only read with shifts across word
//! boundaries. At upload we therefore split every block into a 4-byte-aligned body (quants and,
//! for K-quants, their packed scales) and, where the block starts or ends with a lone f16 scale,
//! a separate array of scales; the kernels then issue aligned, coalesced word loads. The split
//! costs no extra bytes (unlike padding each block), so decode stays bandwidth-bound on the
//! quant bytes alone.
//!
//! Every format exposes the same WGSL function `deq(blk, sub)`: the 16 consecutive elements
//! `16*sub .. 16*sub+16` of block `blk` as four `vec4<f32>`. Matrix-vector and matrix-matrix
//! kernels are written once over it.

use orchard_core::DType;

/// Where the lone scale of a block goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scale {
    None,
    /// An f16 at this byte offset of the raw block, stored two per word.
    Half(usize),
    /// A 32-bit word (two f16: Q4_1's d and m) at this byte offset.
    Word(usize),
    /// K-quant super-block header (d, dmin and twelve bytes of packed 6-bit scales and mins
    /// at the start of the block), stored unpacked as five words: (d, dmin), scales 0..7 and
    /// mins 0..7 one byte each, so that a chunk reads its scale without branches.
    KHeader,
}

/// How one weight type is laid out on the GPU.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Format {
    pub dtype: DType,
    /// Elements per block (16 for F32/F16, whose rows are padded to a multiple of 16).
    pub block: usize,
    /// Bytes of one raw block in the GGUF.
    pub raw_bytes: usize,
    /// Byte range of the raw block copied into the body.
    pub body: (usize, usize),
    pub scale: Scale,
    /// WGSL defining `const CPB: u32` (16-element chunks per block) and `fn deq`.
    pub wgsl: &'static str,
}

impl Format {
    pub fn body_words(&self) -> usize {
        (self.body.1 - self.body.0) / 4
    }

    /// Words of the scale region for `n_blocks` blocks.
    pub fn scale_words(&self, n_blocks: usize) -> usize {
        match self.scale {
            Scale::None => 0,
            Scale::Half(_) => n_blocks.div_ceil(2),
            Scale::Word(_) => n_blocks,
            Scale::KHeader => 5 * n_blocks,
        }
    }

    /// Elements of one row as stored on the GPU (F32/F16 rows are padded to whole blocks).
    pub fn padded_cols(&self, cols: usize) -> usize {
        cols.div_ceil(self.block) * self.block
    }

    /// Repacks `n_rows` rows of `cols` elements from GGUF bytes into body words followed by the
    /// scale region. Returns the words and the word offset of the scale region.
    pub fn repack(&self, raw: &[u8], cols: usize, n_rows: usize) -> (Vec<u32>, u32) {
        let bw = self.body_words();
        let pcols = self.padded_cols(cols);
        let bpr = pcols / self.block;
        let n_blocks = bpr * n_rows;
        let scale_off = n_blocks * bw;
        let mut out = vec![0u32; scale_off + self.scale_words(n_blocks)];
        match self.dtype {
            DType::F32 | DType::F16 => {
                // Elementwise types: copy each row's bytes, zero padding to the block multiple.
                let es = if self.dtype == DType::F32 { 4 } else { 2 };
                let row_words = pcols * es / 4;
                let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
                for r in 0..n_rows {
                    let src = &raw[r * cols * es..(r + 1) * cols * es];
                    bytes[r * row_words * 4..r * row_words * 4 + src.len()].copy_from_slice(src);
                }
            }
            _ => {
                let (b0, b1) = self.body;
                for b in 0..n_blocks {
                    let blk = &raw[b * self.raw_bytes..(b + 1) * self.raw_bytes];
                    let body = &blk[b0..b1];
                    for (i, w) in body.chunks_exact(4).enumerate() {
                        out[b * bw + i] = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                    }
                    match self.scale {
                        Scale::None => {}
                        Scale::Half(o) => {
                            let h = u16::from_le_bytes([blk[o], blk[o + 1]]) as u32;
                            out[scale_off + b / 2] |= h << (16 * (b % 2));
                        }
                        Scale::Word(o) => {
                            out[scale_off + b] =
                                u32::from_le_bytes([blk[o], blk[o + 1], blk[o + 2], blk[o + 3]]);
                        }
                        Scale::KHeader => {
                            let h = &mut out[scale_off + 5 * b..scale_off + 5 * b + 5];
                            h[0] = u32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
                            let q = &blk[4..16];
                            let mut sc = [0u8; 8];
                            let mut mn = [0u8; 8];
                            for j in 0..8 {
                                (sc[j], mn[j]) = if j < 4 {
                                    (q[j] & 63, q[j + 4] & 63)
                                } else {
                                    (
                                        (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                                        (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
                                    )
                                };
                            }
                            h[1] = u32::from_le_bytes([sc[0], sc[1], sc[2], sc[3]]);
                            h[2] = u32::from_le_bytes([sc[4], sc[5], sc[6], sc[7]]);
                            h[3] = u32::from_le_bytes([mn[0], mn[1], mn[2], mn[3]]);
                            h[4] = u32::from_le_bytes([mn[4], mn[5], mn[6], mn[7]]);
                        }
                    }
                }
            }
        }
        (out, scale_off as u32)
    }
}

/// The GPU layout of `dtype`, or `None` when no kernel reads it (the layer stays on the CPU).
pub(crate) fn format(dtype: DType) -> Option<Format> {
    let f = |block, raw_bytes, body, scale, wgsl| Format {
        dtype,
        block,
        raw_bytes,
        body,
        scale,
        wgsl,
    };
    Some(match dtype {
        DType::F32 => f(16, 64, (0, 64), Scale::None, F32),
        DType::F16 => f(16, 32, (0, 32), Scale::None, F16),
        DType::Q4_0 => f(32, 18, (2, 18), Scale::Half(0), Q4_0),
        DType::Q4_1 => f(32, 20, (4, 20), Scale::Word(0), Q4_1),
        DType::Q5_0 => f(32, 22, (2, 22), Scale::Half(0), Q5_0),
        DType::Q8_0 => f(32, 34, (2, 34), Scale::Half(0), Q8_0),
        DType::Q4_K => f(256, 144, (16, 144), Scale::KHeader, Q4_K),
        DType::Q5_K => f(256, 176, (16, 176), Scale::KHeader, Q5_K),
        DType::Q6_K => f(256, 210, (0, 208), Scale::Half(208), Q6_K),
        _ => return None,
    })
}

/// Shared helpers for the `deq` functions: `W` is the weight binding, `P.b.y` the word offset of
/// the scale region.
pub(crate) const DEQ_COMMON: &str = r#"
fn half_scale(b: u32) -> f32 {
    let w = W[P.b.y + (b >> 1u)];
    return unpack2x16float(w)[b & 1u];
}
// Four 4-bit values, one from each byte of `w`, at bit `sh` of the byte.
fn nib4(w: u32, sh: u32) -> vec4<f32> {
    let v = (w >> sh) & 0x0F0F0F0Fu;
    return vec4<f32>(f32(v & 0xFFu), f32((v >> 8u) & 0xFFu), f32((v >> 16u) & 0xFFu), f32(v >> 24u));
}
// Four 2-bit values, one from each byte of `w`, at bit `sh` of the byte.
fn crumb4(w: u32, sh: u32) -> vec4<f32> {
    let v = (w >> sh) & 0x03030303u;
    return vec4<f32>(f32(v & 0xFFu), f32((v >> 8u) & 0xFFu), f32((v >> 16u) & 0xFFu), f32(v >> 24u));
}
// Four single bits, one from each byte of `w`, at bit `sh` of the byte.
fn bit4(w: u32, sh: u32) -> vec4<f32> {
    let v = (w >> sh) & 0x01010101u;
    return vec4<f32>(f32(v & 0xFFu), f32((v >> 8u) & 0xFFu), f32((v >> 16u) & 0xFFu), f32(v >> 24u));
}
// Four signed bytes.
fn i8x4(w: u32) -> vec4<f32> {
    return vec4<f32>(f32(bitcast<i32>(w << 24u) >> 24u), f32(bitcast<i32>(w << 16u) >> 24u),
                     f32(bitcast<i32>(w << 8u) >> 24u), f32(bitcast<i32>(w) >> 24u));
}
// K-quant header (Scale::KHeader) at P.b.y + 5 b: scale and min of 32-element group `is`.
fn k_scale_min(b: u32, is: u32) -> vec2<f32> {
    let h = P.b.y + 5u * b;
    let dm = unpack2x16float(W[h]);
    let sh = 8u * (is & 3u);
    let sc = f32((W[h + 1u + (is >> 2u)] >> sh) & 0xFFu);
    let m = f32((W[h + 3u + (is >> 2u)] >> sh) & 0xFFu);
    return vec2<f32>(dm.x * sc, dm.y * m);
}
fn byte_at(base: u32, i: u32) -> u32 {
    return (W[base + (i >> 2u)] >> (8u * (i & 3u))) & 0xFFu;
}
"#;

const F32: &str = r#"
const CPB: u32 = 1u;
fn deq(b: u32, s: u32) -> array<vec4<f32>, 4> {
    let o = b * 16u;
    var r: array<vec4<f32>, 4>;
    for (var k = 0u; k < 4u; k++) {
        let i = o + 4u * k;
        r[k] = vec4<f32>(bitcast<f32>(W[i]), bitcast<f32>(W[i + 1u]), bitcast<f32>(W[i + 2u]), bitcast<f32>(W[i + 3u]));
    }
    return r;
}
"#;

const F16: &str = r#"
const CPB: u32 = 1u;
fn deq(b: u32, s: u32) -> array<vec4<f32>, 4> {
    let o = b * 8u;
    var r: array<vec4<f32>, 4>;
    for (var k = 0u; k < 4u; k++) {
        r[k] = vec4<f32>(unpack2x16float(W[o + 2u * k]), unpack2x16float(W[o + 2u * k + 1u]));
    }
    return r;
}
"#;

// Q4_0: element j < 16 is the low nibble of byte j, element j + 16 the high nibble.
const Q4_0: &str = r#"
const CPB: u32 = 2u;
fn deq(b: u32, s: u32) -> array<vec4<f32>, 4> {
    let o = b * 4u;
    let d = half_scale(b);
    var r: array<vec4<f32>, 4>;
    for (var k = 0u; k < 4u; k++) {
        r[k] = (nib4(W[o + k], 4u * s) - 8.0) * d;
    }
    return r;
}
"#;

const Q4_1: &str = r#"
const CPB: u32 = 2u;
fn deq(b: u32, s: u32) -> array<vec4<f32>, 4> {
    let o = b * 4u;
    let dm = unpack2x16float(W[P.b.y + b]);
    var r: array<vec4<f32>, 4>;
    for (var k = 0u; k < 4u; k++) {
        r[k] = nib4(W[o + k], 4u * s) * dm.x + dm.y;
    }
    return r;
}
"#;

// Q5_0: body word 0 holds the 32 high bits (bit j for element j), words 1..4 the nibbles.
const Q5_0: &str = r#"
const CPB: u32 = 2u;
fn deq(b: u32, s: u32) -> array<vec4<f32>, 4> {
    let o = b * 5u;
    let d = half_scale(b);
    let qh = W[o];
    var r: array<vec4<f32>, 4>;
    for (var k = 0u; k < 4u; k++) {
        let h = (qh >> (16u * s + 4u * k)) & 0xFu;
        let hv = vec4<f32>(f32(h & 1u), f32((h >> 1u) & 1u), f32((h >> 2u) & 1u), f32(h >> 3u));
        r[k] = (nib4(W[o + 1u + k], 4u * s) + hv * 16.0 - 16.0) * d;
    }
    return r;
}
"#;

const Q8_0: &str = r#"
const CPB: u32 = 2u;
fn deq(b: u32, s: u32) -> array<vec4<f32>, 4> {
    let o = b * 8u + 4u * s;
    let d = half_scale(b);
    var r: array<vec4<f32>, 4>;
    for (var k = 0u; k < 4u; k++) {
        r[k] = i8x4(W[o + k]) * d;
    }
    return r;
}
"#;

// Q4_K body: 32 words of nibbles. Group j (64 elements) uses bytes 32j..32j+32: low nibbles
// are elements 64j..64j+32 (scale 2j), high nibbles 64j+32..64j+64 (scale 2j+1).
const Q4_K: &str = r#"
const CPB: u32 = 16u;
fn deq(b: u32, s: u32) -> array<vec4<f32>, 4> {
    let j = s >> 2u;
    let hi = (s >> 1u) & 1u;
    let sm = k_scale_min(b, 2u * j + hi);
    let q = b * 32u + 8u * j + 4u * (s & 1u);
    var r: array<vec4<f32>, 4>;
    for (var k = 0u; k < 4u; k++) {
        r[k] = nib4(W[q + k], 4u * hi) * sm.x - sm.y;
    }
    return r;
}
"#;

// Q5_K body: 8 words of high bits, then 32 words of nibbles as Q4_K; bit 2j+hi of byte l of
// the high bits is the fifth bit of element l of group j's half `hi`.
const Q5_K: &str = r#"
const CPB: u32 = 16u;
fn deq(b: u32, s: u32) -> array<vec4<f32>, 4> {
    let j = s >> 2u;
    let hi = (s >> 1u) & 1u;
    let part = s & 1u;
    let sm = k_scale_min(b, 2u * j + hi);
    let o = b * 40u;
    let q = o + 8u + 8u * j + 4u * part;
    let h = o + 4u * part;
    var r: array<vec4<f32>, 4>;
    for (var k = 0u; k < 4u; k++) {
        r[k] = (nib4(W[q + k], 4u * hi) + bit4(W[h + k], 2u * j + hi) * 16.0) * sm.x - sm.y;
    }
    return r;
}
"#;

// Q6_K: words 0..31 low nibbles (ql), 32..47 high crumbs (qh), 48..51 int8 scales; d separate.
// Half n (128 elements), quarter r (32 elements): ql bytes 64n + 32(r&1) + l at nibble r>>1,
// qh bytes 32n + l at bit 2r, scale 8n + 2r + l/16.
const Q6_K: &str = r#"
const CPB: u32 = 16u;
fn deq(b: u32, s: u32) -> array<vec4<f32>, 4> {
    let o = b * 52u;
    let n = s >> 3u;
    let rq = (s >> 1u) & 3u;
    let part = s & 1u;
    let si = 8u * n + 2u * rq + part;
    let sc = f32(bitcast<i32>(byte_at(o + 48u, si) << 24u) >> 24u);
    let d = half_scale(b) * sc;
    let ql = o + 16u * n + 8u * (rq & 1u) + 4u * part;
    let qh = o + 32u + 8u * n + 4u * part;
    var r: array<vec4<f32>, 4>;
    for (var k = 0u; k < 4u; k++) {
        r[k] = (nib4(W[ql + k], 4u * (rq >> 1u)) + crumb4(W[qh + k], 2u * rq) * 16.0 - 32.0) * d;
    }
    return r;
}
"#;
