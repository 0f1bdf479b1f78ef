//! WGSL sources of every kernel. Each op's parameters arrive in one 64-byte uniform block
//! (`Params`, bound with a dynamic offset into a per-step arena) whose fields are named per
//! kernel in the comments; per-step tables (KV cell lists, RoPE cos/sin) live in the `Aux`
//! arena. Workgroup sizes and tile shapes are constants spliced in by `source`.

use crate::formats::{Format, DEQ_COMMON};

pub(crate) const PARAMS: &str = r#"
struct Params { a: vec4<u32>, b: vec4<u32>, c: vec4<u32>, f: vec4<f32> }
@group(0) @binding(0) var<uniform> P: Params;
"#;

/// Matrix-vector product for decode (and for float rows that are not whole 16-element chunks,
/// or matrices of few rows): one workgroup per output row (and per token in `z`), its
/// threads striding over the row's 16-element chunks, then a shared-memory tree reduction.
/// a = (rows, blocks per row, x row stride (= cols), out row stride)
/// b = (out column offset, scale word offset, cols when rows are padded else 0, grid x)
pub(crate) const MATVEC_RAGGED: &str = r#"
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
var<workgroup> red: array<f32, WG>;

fn xload4(i: u32, e: u32) -> vec4<f32> {
    if (P.b.z != 0u) {
        var v = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j++) {
            if (e + j < P.b.z) { v[j] = X[i + j]; }
        }
        return v;
    }
    return vec4<f32>(X[i], X[i + 1u], X[i + 2u], X[i + 3u]);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = g.y * P.b.w + g.x;
    let tok = g.z;
    let live = row < P.a.x;
    var acc = 0.0;
    if (live) {
        let nch = P.a.y * CPB;
        let wrow = row * P.a.y;
        let xb = tok * P.a.z;
        for (var c = lid; c < nch; c += WG) {
            let w = deq(wrow + c / CPB, c % CPB);
            let e = c * 16u;
            acc += dot(w[0], xload4(xb + e, e));
            acc += dot(w[1], xload4(xb + e + 4u, e + 4u));
            acc += dot(w[2], xload4(xb + e + 8u, e + 8u));
            acc += dot(w[3], xload4(xb + e + 12u, e + 12u));
        }
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (lid < st) { red[lid] += red[lid + st]; }
        workgroupBarrier();
    }
    if (lid == 0u && live) {
        O[tok * P.a.w + P.b.x + row] = red[0];
    }
}
"#;

/// Tiled matrix-matrix product for prompt processing (and for small products and ragged float
/// rows): a 16x16 workgroup computes a TM x TN
/// tile (weight rows x tokens), each thread 4x4 outputs; per K step of 32 the weight tile is
/// dequantized once into shared memory and the activation tile copied beside it.
/// a = (rows, blocks per row, x row stride (= cols), out row stride)
/// b = (out column offset, scale word offset, _, _), c = (n_tokens, chunks per row, _, _)
pub(crate) const MATMUL_RAGGED: &str = r#"
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
const TM: u32 = 64u;
const TN: u32 = 64u;
const BK: u32 = 32u;
var<workgroup> As: array<vec4<f32>, 512>; // [BK][TM / 4]
var<workgroup> Bs: array<vec4<f32>, 512>; // [BK][TN / 4]

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let m0 = g.x * TM;
    let n0 = g.y * TN;
    let rows = P.a.x;
    let nblk = P.a.y;
    let cols = P.a.z;
    let ntok = P.c.x;
    let nch = P.c.y;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < nch * 16u; k0 += BK) {
        if (lid < TM * 2u) {
            let r = lid >> 1u;
            let sc = lid & 1u;
            let ch = (k0 >> 4u) + sc;
            let row = m0 + r;
            var w: array<vec4<f32>, 4>;
            if (row < rows && ch < nch) {
                w = deq(row * nblk + ch / CPB, ch % CPB);
            }
            for (var k = 0u; k < 4u; k++) {
                for (var j = 0u; j < 4u; j++) {
                    let kk = sc * 16u + 4u * k + j;
                    As[kk * (TM / 4u) + (r >> 2u)][r & 3u] = w[k][j];
                }
            }
        }
        for (var i = lid; i < TN * BK; i += 256u) {
            let t = i / BK;
            let kk = i % BK;
            let e = k0 + kk;
            let tok = n0 + t;
            var v = 0.0;
            if (tok < ntok && e < cols) { v = X[tok * cols + e]; }
            Bs[kk * (TN / 4u) + (t >> 2u)][t & 3u] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a = As[kk * (TM / 4u) + l.x];
            let b = Bs[kk * (TN / 4u) + l.y];
            acc[0] += a * b.x;
            acc[1] += a * b.y;
            acc[2] += a * b.z;
            acc[3] += a * b.w;
        }
        workgroupBarrier();
    }
    for (var j = 0u; j < 4u; j++) {
        let tok = n0 + l.y * 4u + j;
        if (tok < ntok) {
            for (var i = 0u; i < 4u; i++) {
                let row = m0 + l.x * 4u + i;
                if (row < rows) {
                    O[tok * P.a.w + P.b.x + row] = acc[j][i];
                }
            }
        }
    }
}
"#;

/// Matrix-vector product for decode, for rows of whole 16-element chunks: a workgroup computes
/// NR rows of one token; each thread walks the chunks of the row with stride WG, loads the
/// activation chunk once (four vec4) and dots it with the NR weight chunks, so activation
/// traffic is amortised over NR rows; a shared-memory tree reduces the NR partial sums.
/// a = (rows, blocks per row, x row stride (= cols), out row stride)
/// b = (out column offset, scale word offset, _, grid x)
pub(crate) const MATVEC: &str = r#"
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
const NR: u32 = 4u;
var<workgroup> red: array<f32, NR * WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = (g.y * P.b.w + g.x) * NR;
    let tok = g.z;
    let rows = P.a.x;
    let nblk = P.a.y;
    let nch = nblk * CPB;
    let xb = tok * (P.a.z / 4u);
    var acc: array<f32, NR>;
    for (var c = lid; c < nch; c += WG) {
        let xo = xb + 4u * c;
        let x0 = X[xo];
        let x1 = X[xo + 1u];
        let x2 = X[xo + 2u];
        let x3 = X[xo + 3u];
        let blk = c / CPB;
        let sub = c % CPB;
        for (var r = 0u; r < NR; r++) {
            let row = row0 + r;
            if (row < rows) {
                let w = deq(row * nblk + blk, sub);
                acc[r] += dot(w[0], x0) + dot(w[1], x1) + dot(w[2], x2) + dot(w[3], x3);
            }
        }
    }
    for (var r = 0u; r < NR; r++) { red[r * WG + lid] = acc[r]; }
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (lid < st) {
            for (var r = 0u; r < NR; r++) { red[r * WG + lid] += red[r * WG + lid + st]; }
        }
        workgroupBarrier();
    }
    if (lid < NR && row0 + lid < rows) {
        O[tok * P.a.w + P.b.x + row0 + lid] = red[lid * WG];
    }
}
"#;

/// Tiled matrix-matrix product for prompt processing, for rows of whole 16-element chunks:
/// a 256-thread workgroup computes a 128 x 128 tile (weight rows x tokens), each thread 8 x 8
/// outputs from two row quads and two token quads; per K step of 32 every thread dequantizes
/// one 16-element chunk of the weight tile into shared memory and copies four vec4 of
/// activations beside it.
/// a = (rows, blocks per row, x row stride (= cols), out row stride)
/// b = (out column offset, scale word offset, _, _), c = (n_tokens, chunks per row, _, _)
pub(crate) const MATMUL: &str = r#"
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
const TM: u32 = 128u;
const TN: u32 = 128u;
const BK: u32 = 32u;
var<workgroup> As: array<vec4<f32>, 1024>; // [BK][TM / 4]
var<workgroup> Bs: array<vec4<f32>, 1024>; // [BK][TN / 4]

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let m0 = g.x * TM;
    let n0 = g.y * TN;
    let rows = P.a.x;
    let nblk = P.a.y;
    let cols4 = P.a.z / 4u;
    let ntok = P.c.x;
    let nch = P.c.y;
    let tx = lid & 15u;
    let ty = lid >> 4u;
    var acc: array<vec4<f32>, 16>;
    for (var k0 = 0u; k0 < nch * 16u; k0 += BK) {
        {
            let r = lid >> 1u;
            let sc = lid & 1u;
            let ch = (k0 >> 4u) + sc;
            let row = m0 + r;
            var w: array<vec4<f32>, 4>;
            if (row < rows && ch < nch) {
                w = deq(row * nblk + ch / CPB, ch % CPB);
            }
            for (var k = 0u; k < 4u; k++) {
                for (var j = 0u; j < 4u; j++) {
                    let kk = sc * 16u + 4u * k + j;
                    As[kk * (TM / 4u) + (r >> 2u)][r & 3u] = w[k][j];
                }
            }
        }
        for (var q = 0u; q < 4u; q++) {
            let i = lid + 256u * q;
            let t = i >> 3u;
            let kq = i & 7u;
            let tok = n0 + t;
            let e4 = (k0 >> 2u) + kq;
            var v = vec4<f32>(0.0);
            if (tok < ntok && e4 < cols4) { v = X[tok * cols4 + e4]; }
            for (var c = 0u; c < 4u; c++) {
                Bs[(4u * kq + c) * (TN / 4u) + (t >> 2u)][t & 3u] = v[c];
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = As[kk * 32u + tx];
            let a1 = As[kk * 32u + 16u + tx];
            let b0 = Bs[kk * 32u + ty];
            let b1 = Bs[kk * 32u + 16u + ty];
            acc[0] += a0 * b0.x; acc[1] += a0 * b0.y; acc[2] += a0 * b0.z; acc[3] += a0 * b0.w;
            acc[4] += a0 * b1.x; acc[5] += a0 * b1.y; acc[6] += a0 * b1.z; acc[7] += a0 * b1.w;
            acc[8] += a1 * b0.x; acc[9] += a1 * b0.y; acc[10] += a1 * b0.z; acc[11] += a1 * b0.w;
            acc[12] += a1 * b1.x; acc[13] += a1 * b1.y; acc[14] += a1 * b1.z; acc[15] += a1 * b1.w;
        }
        workgroupBarrier();
    }
    for (var j = 0u; j < 8u; j++) {
        // token quad ty (j < 4) or 16 + ty (j >= 4)
        let tok = n0 + 4u * (ty + 16u * (j >> 2u)) + (j & 3u);
        if (tok < ntok) {
            for (var h = 0u; h < 2u; h++) {
                let v = acc[8u * h + j];
                let rbase = m0 + 4u * (tx + 16u * h);
                for (var i = 0u; i < 4u; i++) {
                    if (rbase + i < rows) {
                        O[tok * P.a.w + P.b.x + rbase + i] = v[i];
                    }
                }
            }
        }
    }
}
"#;

/// Tiled matrix-matrix product, second layout: the same 128 x 128 tile and K step of 32 as
/// `MATMUL`, but shared memory holds rows (weights) and tokens with k contiguous (`[128][8]`
/// vec4, padded to 9 so that 8 consecutive rows fall in distinct banks): the dequantized
/// chunk and the activations are stored as whole vec4 (no scalar transposing stores), and
/// thread (tx, ty) owns rows tx + 16 i and tokens ty + 16 j, so each inner step is 16 vec4
/// loads for 64 four-term dots, and output stores of a warp cover consecutive rows.
/// Parameters as `MATMUL`.
pub(crate) const MATMUL_KMAJOR: &str = r#"
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
const TM: u32 = 128u;
const TN: u32 = 128u;
const BK: u32 = 32u;
const LS: u32 = 9u; // vec4 per tile row: BK / 4 + 1 of padding
var<workgroup> As: array<vec4<f32>, 1152>; // [TM][LS]
var<workgroup> Bs: array<vec4<f32>, 1152>; // [TN][LS]

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let m0 = g.x * TM;
    let n0 = g.y * TN;
    let rows = P.a.x;
    let nblk = P.a.y;
    let cols4 = P.a.z / 4u;
    let ntok = P.c.x;
    let nch = P.c.y;
    let tx = lid & 15u;
    let ty = lid >> 4u;
    var acc: array<f32, 64>; // [i][j]: row tx + 16 i, token ty + 16 j
    for (var k0 = 0u; k0 < nch * 16u; k0 += BK) {
        {
            let r = lid >> 1u;
            let sc = lid & 1u;
            let ch = (k0 >> 4u) + sc;
            let row = m0 + r;
            var w: array<vec4<f32>, 4>;
            if (row < rows && ch < nch) {
                w = deq(row * nblk + ch / CPB, ch % CPB);
            }
            for (var k = 0u; k < 4u; k++) { As[r * LS + sc * 4u + k] = w[k]; }
        }
        for (var q = 0u; q < 4u; q++) {
            let i = lid + 256u * q;
            let t = i >> 3u;
            let kq = i & 7u;
            let tok = n0 + t;
            let e4 = (k0 >> 2u) + kq;
            var v = vec4<f32>(0.0);
            if (tok < ntok && e4 < cols4) { v = X[tok * cols4 + e4]; }
            Bs[t * LS + kq] = v;
        }
        workgroupBarrier();
        for (var kq = 0u; kq < BK / 4u; kq++) {
            var b: array<vec4<f32>, 8>;
            for (var j = 0u; j < 8u; j++) { b[j] = Bs[(ty + 16u * j) * LS + kq]; }
            for (var i = 0u; i < 8u; i++) {
                let a = As[(tx + 16u * i) * LS + kq];
                for (var j = 0u; j < 8u; j++) { acc[i * 8u + j] += dot(a, b[j]); }
            }
        }
        workgroupBarrier();
    }
    for (var j = 0u; j < 8u; j++) {
        let tok = n0 + ty + 16u * j;
        if (tok < ntok) {
            for (var i = 0u; i < 8u; i++) {
                let row = m0 + tx + 16u * i;
                if (row < rows) { O[tok * P.a.w + P.b.x + row] = acc[i * 8u + j]; }
            }
        }
    }
}
"#;

/// Tiled matrix-matrix product on cooperative matrices (tensor cores where the device has
/// them; only used when the adapter reports 16x16x16 f16 x f16 -> f32 products and subgroups
/// of 32). A workgroup of SGM x SGN subgroups computes a TM x TN tile (weight rows x tokens);
/// per K step of BK the threads dequantize the weight tile's 16-element chunks and convert the
/// activations to f16 into shared memory (k contiguous, rows padded by 8 halves), then each
/// subgroup multiplies its WM x WN corner as (WM/16) x (WN/16) accumulators of 16 x 16 (f32).
/// With two buffers (`CoopTile::double`) step k+1 is staged into the other pair of tiles while
/// step k multiplies, one barrier a step instead of two. Outputs go through a per-subgroup
/// 16 x 16 f32 scratch so that ragged edges are masked. Weights and activations are rounded to
/// f16 (11-bit significand; the CPU rounds activations of K-quant products to 8-bit Q8_K
/// levels, which this kernel reads when exact activations are on), products accumulate in f32.
/// Parameters as `MATMUL`. `coop_source` writes the body for one `CoopTile`.
const MATMUL_COOP_HEAD: &str = r#"
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
const LD: u32 = BK + 8u; // halves per tile row
var<workgroup> As: array<f16, NBUF * TM * LD>; // [buffer][TM][LD]
var<workgroup> Bs: array<f16, NBUF * TN * LD>; // [buffer][TN][LD]
var<workgroup> Cs: array<f32, NSG * 256u>; // [subgroup][16 tokens][16 rows]

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let m0 = g.x * TM;
    let n0 = g.y * TN;
    let rows = P.a.x;
    let nblk = P.a.y;
    let cols4 = P.a.z / 4u;
    let ntok = P.c.x;
    let nch = P.c.y;
    let sm = (sg % SGM) * WM; // this subgroup's rows within the tile
    let sn = (sg / SGM) * WN; // and tokens
    let steps = (nch * 16u + BK - 1u) / BK;
ACC_DECL
LOOP
STORE
}
"#;

/// Stages K step `STEP` into shared buffer `BUF`: the weight tile dequantized, the activation
/// tile converted, both to f16.
const COOP_STAGE: &str = r#"
        {
            let k0 = STEP * BK;
            let ao = BUF * TM * LD;
            let bo = BUF * TN * LD;
            for (var q = 0u; q < TM * BK / 16u / WG; q++) {
                let c = lid + WG * q;
                let r = c / (BK / 16u);
                let sc = c % (BK / 16u);
                let ch = (k0 >> 4u) + sc;
                let row = m0 + r;
                var w: array<vec4<f32>, 4>;
                if (row < rows && ch < nch) {
                    w = deq(row * nblk + ch / CPB, ch % CPB);
                }
                let base = ao + r * LD + sc * 16u;
                for (var k = 0u; k < 4u; k++) {
                    let h = vec4<f16>(w[k]);
                    As[base + 4u * k] = h.x;
                    As[base + 4u * k + 1u] = h.y;
                    As[base + 4u * k + 2u] = h.z;
                    As[base + 4u * k + 3u] = h.w;
                }
            }
            for (var q = 0u; q < TN * BK / 4u / WG; q++) {
                let i = lid + WG * q;
                let t = i / (BK / 4u);
                let kq = i % (BK / 4u);
                let tok = n0 + t;
                let e4 = (k0 >> 2u) + kq;
                var v = vec4<f32>(0.0);
                if (tok < ntok && e4 < cols4) { v = X[tok * cols4 + e4]; }
                let h = vec4<f16>(v);
                let base = bo + t * LD + 4u * kq;
                Bs[base] = h.x;
                Bs[base + 1u] = h.y;
                Bs[base + 2u] = h.z;
                Bs[base + 3u] = h.w;
            }
        }
"#;

/// The 16 x 16 accumulator `c{i}{j}` (rows 16 i, tokens 16 j of the subgroup's corner) written
/// out through the subgroup's scratch.
const COOP_STORE_ONE: &str = r#"
    coopStore(cIJ, &Cs[sg * 256u], 16u);
    workgroupBarrier();
    for (var e = lane; e < 256u; e += 32u) {
        let row = m0 + sm + 16u * I + (e & 15u);
        let tok = n0 + sn + 16u * J + (e >> 4u);
        if (row < rows && tok < ntok) { O[tok * P.a.w + P.b.x + row] = Cs[sg * 256u + e]; }
    }
    workgroupBarrier();
"#;

/// A `MATMUL_COOP` configuration: a `tm` x `tn` (weight rows x tokens) workgroup tile in K
/// steps of `bk`, over `sgm` x `sgn` subgroups of 32, each owning a (tm / sgm) x (tn / sgn)
/// corner; `double` stages the next K step into a second pair of shared tiles while the
/// current one multiplies, after its products (`/db`) or before them (`/dbs`, `stage_first`).
/// Written `TMxTNxBK/SGMxSGN[/db|/dbs]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoopTile {
    pub tm: u32,
    pub tn: u32,
    pub bk: u32,
    pub sgm: u32,
    pub sgn: u32,
    pub double: bool,
    pub stage_first: bool,
}

impl CoopTile {
    /// Threads of a workgroup.
    pub const fn threads(&self) -> u32 {
        32 * self.sgm * self.sgn
    }

    /// Whether `coop_source` can write this tile: corners of whole 16 x 16 matrices, K steps
    /// of whole chunks, and staging loops that give every thread the same count.
    pub fn valid(&self) -> bool {
        // Bounds first: the products below stay far from overflow for any parsed input.
        if !(1..=8).contains(&self.sgm)
            || !(1..=8).contains(&self.sgn)
            || !(16..=512).contains(&self.tm)
            || !(16..=512).contains(&self.tn)
            || (self.bk != 32 && self.bk != 64)
            || (self.stage_first && !self.double)
        {
            return false;
        }
        let (t, wm, wn) = (self.threads(), self.tm / self.sgm, self.tn / self.sgn);
        self.tm.is_multiple_of(self.sgm)
            && self.tn.is_multiple_of(self.sgn)
            && wm % 16 == 0
            && wn % 16 == 0
            && (1..=4).contains(&(wm / 16))
            && (1..=4).contains(&(wn / 16))
            && (self.tm * self.bk / 16).is_multiple_of(t)
            && (self.tn * self.bk / 4).is_multiple_of(t)
    }

    /// Shared memory of the tile, in bytes.
    pub fn shared_bytes(&self) -> u32 {
        let bufs = if self.double { 2 } else { 1 };
        bufs * (self.tm + self.tn) * (self.bk + 8) * 2 + self.sgm * self.sgn * 256 * 4
    }

    /// The same tile with half the tokens (twice the workgroups for products with few tiles),
    /// if its corners stay whole matrices.
    pub fn narrower(&self) -> Option<CoopTile> {
        let t = CoopTile {
            tn: self.tn / 2,
            ..*self
        };
        t.valid().then_some(t)
    }
}

impl std::fmt::Display for CoopTile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{}x{}/{}x{}{}",
            self.tm,
            self.tn,
            self.bk,
            self.sgm,
            self.sgn,
            match (self.double, self.stage_first) {
                (false, _) => "",
                (true, false) => "/db",
                (true, true) => "/dbs",
            }
        )
    }
}

impl std::str::FromStr for CoopTile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("coop tile {s:?}: want TMxTNxBK/SGMxSGN[/db|/dbs]");
        let mut parts = s.split('/');
        let mut numbers = || -> Result<Vec<u32>, String> {
            let part = parts.next().ok_or_else(bad)?;
            part.split('x')
                .map(|v| v.parse().map_err(|_| bad()))
                .collect()
        };
        let (dims, sgs) = (numbers()?, numbers()?);
        let (double, stage_first) = match parts.next() {
            None => (false, false),
            Some("db") => (true, false),
            Some("dbs") => (true, true),
            Some(_) => return Err(bad()),
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        let (&[tm, tn, bk], &[sgm, sgn]) = (dims.as_slice(), sgs.as_slice()) else {
            return Err(bad());
        };
        let t = CoopTile {
            tm,
            tn,
            bk,
            sgm,
            sgn,
            double,
            stage_first,
        };
        if t.valid() {
            Ok(t)
        } else {
            Err(format!(
                "coop tile {s}: not a tile MATMUL_COOP is written for"
            ))
        }
    }
}

/// The `MATMUL_COOP` module for a tile and a weight format (`enable` directives first).
/// F16 weights are read eight halves a load instead of through `deq`'s one-word loads (runs 29
/// and 30, the 8B prompt's products on f16 copies of their weights: 367 -> 340 us each).
pub(crate) fn coop_source(t: CoopTile, fmt: Option<&Format>) -> String {
    assert!(t.valid(), "coop tile {t}");
    let f16_rows = fmt.is_some_and(|f| f.dtype == orchard_core::DType::F16);
    let (wm, wn) = (t.tm / t.sgm, t.tn / t.sgn);
    let (ni, nj) = (wm / 16, wn / 16); // accumulators per subgroup
    let mut decl = String::new();
    let mut mma = String::new();
    let mut store = String::new();
    for i in 0..ni {
        mma.push_str(&format!(
            "            let a{i} = coopLoadT<coop_mat16x16<f16, A>>(&As[ao + (sm + {}u) * LD + kk], LD);\n",
            16 * i
        ));
    }
    for j in 0..nj {
        mma.push_str(&format!(
            "            let b{j} = coopLoad<coop_mat16x16<f16, B>>(&Bs[bo + (sn + {}u) * LD + kk], LD);\n",
            16 * j
        ));
    }
    for i in 0..ni {
        for j in 0..nj {
            decl.push_str(&format!("    var c{i}{j} = coop_mat16x16<f32, C>();\n"));
            mma.push_str(&format!(
                "            c{i}{j} = coopMultiplyAdd(a{i}, b{j}, c{i}{j});\n"
            ));
            store.push_str(
                &COOP_STORE_ONE
                    .replace("cIJ", &format!("c{i}{j}"))
                    .replace("16u * I", &format!("{}u", 16 * i))
                    .replace("16u * J", &format!("{}u", 16 * j)),
            );
        }
    }
    let multiply = |buf: &str| {
        format!(
            "        {{\n            let ao = {buf} * TM * LD;\n            let bo = {buf} * TN * LD;\n\
             \x20           for (var kk = 0u; kk < BK; kk += 16u) {{\n{mma}            }}\n        }}\n"
        )
    };
    let stage = |step: &str, buf: &str| COOP_STAGE.replace("STEP", step).replace("BUF", buf);
    let lp = if t.double {
        // Step s multiplies buffer s & 1 while step s + 1 is staged into the other; the one
        // barrier a step both publishes the staged tiles and retires the reads of the buffer
        // the next step overwrites. The products are issued first so that the staging's
        // loads are in flight while the tensor cores work.
        let next = format!(
            "        if (s + 1u < steps) {{\n{}        }}\n",
            stage("(s + 1u)", "((s + 1u) & 1u)")
        );
        let (first, second) = if t.stage_first {
            (next, multiply("(s & 1u)"))
        } else {
            (multiply("(s & 1u)"), next)
        };
        format!(
            "{}    workgroupBarrier();\n    for (var s = 0u; s < steps; s++) {{\n{first}{second}        \
             workgroupBarrier();\n    }}\n",
            stage("0u", "0u"),
        )
    } else {
        format!(
            "    for (var s = 0u; s < steps; s++) {{\n{}        workgroupBarrier();\n{}        workgroupBarrier();\n    }}\n",
            stage("s", "0u"),
            multiply("0u")
        )
    };
    let mut body = MATMUL_COOP_HEAD
        .replace("ACC_DECL\n", &decl)
        .replace("LOOP\n", &lp)
        .replace("STORE\n", &store);
    if f16_rows {
        body = body
            .replace(
                "var<storage, read> W: array<u32>;",
                "var<storage, read> W4: array<vec4<u32>>;",
            )
            .replace(
                "                    w = deq(row * nblk + ch / CPB, ch % CPB);\n",
                "                    let v0 = W4[2u * (row * nblk + ch)];\n\
                 let v1 = W4[2u * (row * nblk + ch) + 1u];\n\
                 w = array<vec4<f32>, 4>(\n\
                     vec4<f32>(unpack2x16float(v0.x), unpack2x16float(v0.y)),\n\
                     vec4<f32>(unpack2x16float(v0.z), unpack2x16float(v0.w)),\n\
                     vec4<f32>(unpack2x16float(v1.x), unpack2x16float(v1.y)),\n\
                     vec4<f32>(unpack2x16float(v1.z), unpack2x16float(v1.w)));\n",
            );
        assert!(body.contains("W4[2u"), "the f16 load replaced deq");
    }
    format!(
        "enable f16;\nenable wgpu_cooperative_matrix;\nconst TM: u32 = {}u;\nconst TN: u32 = {}u;\n\
         const BK: u32 = {}u;\nconst SGM: u32 = {}u;\nconst WM: u32 = {wm}u;\nconst WN: u32 = {wn}u;\n\
         const NSG: u32 = {}u;\nconst NBUF: u32 = {}u;\n{}",
        t.tm,
        t.tn,
        t.bk,
        t.sgm,
        t.sgm * t.sgn,
        if t.double { 2 } else { 1 },
        source(&body, t.threads(), if f16_rows { None } else { fmt })
    )
}

/// The RMS norm kernels, generated by `norm_source` from one body.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum NormKind {
    /// `NORM`: RMS norm over segments of `len` values (whole rows, or heads for Q/K norms):
    /// one workgroup per segment. a = (len, n segments, has weight, grid x), f.x = eps.
    Plain,
    /// `NORM_INPLACE`: as `Plain`, but X is bound read-write and the result written back into it.
    Inplace,
    /// `ADD_NORM`: a residual add folded into the RMS norm that follows it (`x += y; o =
    /// norm(x) * w`): one workgroup per row, each thread adding, writing back and squaring the
    /// elements it later normalizes (`NORM`'s summation order, so X and O are bit-identical to
    /// `ELEMENTWISE` add then `NORM`). a = (len, n rows, has weight, grid x), f.x = eps.
    Add,
    /// `NORM_Q8K`: `NORM` fused with `ACT_Q8K` on its output, for rows of whole 256-value
    /// blocks: workgroup (x, y) normalizes block x of row y (every workgroup of a row sums the
    /// whole row's squares in `NORM`'s order, so O is bit-identical to `NORM`'s) and quantizes
    /// it (`q8k_block`). a = (len, word offset of the Q8_K scales, has weight, _), f.x = eps.
    Q8K,
    /// `ADD_NORM_F16`: `Add` that also writes O in f16 to F (what `matmul_cm2.comp` reads
    /// where its inputs are plain f16). Bindings X, Y, Wn, O, F; parameters as `Add`.
    AddF16,
    /// `ADD_NORM_Q8K`: `Add` with the packed Q8_K copy of O, for decode rows of whole
    /// 256-value blocks. The add and the sum of squares run as in `Add` (strided, `NORM`'s
    /// order); the normalizing and quantizing then give each block to 16 threads of 16
    /// consecutive values (16 blocks at a time), so that one workgroup quantizes a row in one
    /// pass instead of block after block. Quantization follows `ACT_Q8K` (first signed
    /// extreme; levels by `q8k_level`). a = (len, n rows, has weight, grid x), b.x = word
    /// offset of the Q8_K scales, f.x = eps.
    AddQ8K,
}

/// The sum of squares of the norm kernels' thread-strided loop (`NORM`'s summation order),
/// sixteen loads issued before they are summed (in the same order): one at a time, the
/// 4096-wide rows of an 8B model took ~10 us per norm on an H200, mostly load latency.
const NORM_SUM: &str = r#"
    var s = 0.0;
    for (var i0 = lid; i0 < n; i0 += 4096u) {
        var xv: array<f32, 16>;
        for (var k = 0u; k < 16u; k++) {
            if (i0 + k * 256u < n) { xv[k] = X[base + i0 + k * 256u]; }
        }
        for (var k = 0u; k < 16u; k++) {
            if (i0 + k * 256u < n) { s += xv[k] * xv[k]; }
        }
    }
"#;

/// `NormKind::Add`'s sum of squares: the same order, adding Y into X on the way. The sums
/// and, for rows of up to 4096 values (one pass of the loop), the norm weights stay in
/// registers for `ADD_NORM_APPLY`, the weights loaded before the reduction.
const ADD_NORM_SUM: &str = r#"
    var s = 0.0;
    var xv: array<f32, 16>;
    var wv: array<f32, 16>;
    for (var i0 = lid; i0 < n; i0 += 4096u) {
        for (var k = 0u; k < 16u; k++) {
            let i = base + i0 + k * 256u;
            if (i0 + k * 256u < n) { xv[k] = X[i] + Y[i]; }
        }
        for (var k = 0u; k < 16u; k++) {
            if (i0 + k * 256u < n) {
                X[base + i0 + k * 256u] = xv[k];
                s += xv[k] * xv[k];
            }
        }
    }
    if (n <= 4096u && P.a.z != 0u) {
        for (var k = 0u; k < 16u; k++) {
            if (lid + k * 256u < n) { wv[k] = Wn[lid + k * 256u]; }
        }
    }
"#;

/// `NormKind::Add`'s normalizing: from the registers `ADD_NORM_SUM` left where the row took
/// one pass (the same values and products as `NORM_APPLY`, without reading X back after the
/// reduction), else as `NORM_APPLY`.
const ADD_NORM_APPLY: &str = r#"    if (n <= 4096u) {
        for (var k = 0u; k < 16u; k++) {
            let i = lid + k * 256u;
            if (i < n) {
                var v = xv[k] * scale;
                if (P.a.z != 0u) { v = v * wv[k]; }
                O[base + i] = v;
            }
        }
        return;
    }
"#;

/// `NormKind::AddQ8K`'s sum of squares: 16 values per thread at a time, all loads issued
/// before the first use (a loop over the row one value at a time waits out a memory round trip
/// per value); the sum runs in `NORM`'s order all the same.
const ADD_NORM_Q8K_SUM: &str = r#"
    let nb = n / 256u;
    var s = 0.0;
    for (var b0 = 0u; b0 < nb; b0 += 16u) {
        var xv: array<f32, 16>;
        for (var k = 0u; k < 16u; k++) {
            if (b0 + k < nb) {
                let i = base + (b0 + k) * 256u + lid;
                xv[k] = X[i] + Y[i];
            }
        }
        for (var k = 0u; k < 16u; k++) {
            if (b0 + k < nb) {
                X[base + (b0 + k) * 256u + lid] = xv[k];
                s += xv[k] * xv[k];
            }
        }
    }
"#;

/// The norm kernels' tree reduction of the thread sums `s` and the row's scale. BARRIER is
/// where `AddQ8K` makes its X writes visible before other threads read them.
const NORM_REDUCE: &str = r#"    red[lid] = s;
BARRIER    workgroupBarrier();
    for (var st = 128u; st > 0u; st >>= 1u) {
        if (lid < st) { red[lid] += red[lid + st]; }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(red[0] / f32(n) + P.f.x);
"#;

/// Normalizing of the thread-strided elements into OUT (O, or X in place).
const NORM_APPLY: &str = r#"    for (var i = lid; i < n; i += 256u) {
        var v = X[base + i] * scale;
        if (P.a.z != 0u) { v = v * Wn[i]; }
        OUT[base + i] = v;
    }
"#;

/// `NormKind::Q8K`: normalizing of this workgroup's block, then its quantization.
const NORM_Q8K_APPLY: &str = r#"    let i = g.x * 256u + lid;
    var v = X[base + i] * scale;
    if (P.a.z != 0u) { v = v * Wn[i]; }
    O[base + i] = v;
    q8k_block(lid, v, g.y * (n / 256u) + g.x, P.a.y);
"#;

/// `NormKind::AddQ8K`: normalizing and quantizing 16 blocks at a time, 16 threads a block.
const ADD_NORM_Q8K_APPLY: &str = r#"    let sub = lid & 15u;
    for (var b0 = 0u; b0 < nb; b0 += 16u) {
        let blk = b0 + (lid >> 4u);
        let live = blk < nb;
        var v: array<f32, 16>;
        var m = 0.0;
        var mv = 0.0;
        if (live) {
            let i0 = blk * 256u + sub * 16u;
            for (var k = 0u; k < 16u; k++) { v[k] = X[base + i0 + k] * scale; }
            if (P.a.z != 0u) {
                for (var k = 0u; k < 16u; k++) { v[k] = v[k] * Wn[i0 + k]; }
            }
            for (var k = 0u; k < 16u; k++) {
                O[base + i0 + k] = v[k];
                if (abs(v[k]) > m) { m = abs(v[k]); mv = v[k]; }
            }
        }
        am[lid] = m;
        sv[lid] = mv;
        workgroupBarrier();
        for (var st = 8u; st > 0u; st >>= 1u) {
            if (sub < st && am[lid + st] > am[lid]) { am[lid] = am[lid + st]; sv[lid] = sv[lid + st]; }
            workgroupBarrier();
        }
        let amax = am[lid & ~15u];
        let smax = sv[lid & ~15u];
        workgroupBarrier();
        if (live) {
            var iscale = 0.0;
            var d = 0.0;
            if (amax != 0.0) {
                iscale = q8k_iscale(smax);
                d = 1.0 / iscale;
            }
            let qb = (seg * nb + blk) * 64u + sub * 4u;
            for (var w = 0u; w < 4u; w++) {
                var word = 0u;
                for (var j = 0u; j < 4u; j++) {
                    var q = 0u;
                    if (amax != 0.0) { q = q8k_level(iscale, v[4u * w + j]); }
                    word |= q << (8u * j);
                }
                Q[qb + w] = word;
            }
            if (sub == 0u) { Q[P.b.x + seg * nb + blk] = bitcast<u32>(d); }
        }
    }
"#;

/// The source of one RMS norm kernel (`NormKind`): bindings, then the segment, the sum of
/// squares, `NORM_REDUCE` and the normalizing, each piece written once for all kinds.
pub(crate) fn norm_source(kind: NormKind) -> String {
    use std::fmt::Write;
    use NormKind::*;
    let add = matches!(kind, Add | AddQ8K | AddF16);
    let mut s = String::new();
    if kind == AddF16 {
        s.push_str("enable f16;\n");
    }
    s.push_str(PARAMS);
    let x = if matches!(kind, Plain | Q8K) {
        "read"
    } else {
        "read_write"
    };
    let mut names = vec![("X", x)];
    if add {
        names.push(("Y", "read"));
    }
    names.push(("Wn", "read"));
    if kind != Inplace {
        names.push(("O", "read_write"));
    }
    let f32_bindings = names.len();
    for (i, (name, access)) in names.into_iter().enumerate() {
        let _ = writeln!(
            s,
            "@group(0) @binding({}) var<storage, {access}> {name}: array<f32>;",
            i + 1
        );
    }
    if kind == AddF16 {
        let _ = writeln!(
            s,
            "@group(0) @binding({}) var<storage, read_write> F: array<f16>;",
            f32_bindings + 1
        );
    }
    if matches!(kind, Q8K | AddQ8K) {
        let q = if add { 5 } else { 4 };
        let _ = writeln!(
            s,
            "@group(0) @binding({q}) var<storage, read_write> Q: array<u32>;"
        );
    }
    s.push_str("var<workgroup> red: array<f32, 256>;\n");
    if kind == AddQ8K {
        s.push_str("var<workgroup> am: array<f32, 256>;\nvar<workgroup> sv: array<f32, 256>;\n");
    }
    s.push_str(
        "@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
",
    );
    if kind == Q8K {
        s.push_str("    let n = P.a.x;\n    let base = g.y * n;");
    } else {
        s.push_str(
            "    let seg = g.y * P.a.w + g.x;
    if (seg >= P.a.y) { return; }
    let n = P.a.x;
    let base = seg * n;",
        );
    }
    s.push_str(match kind {
        Add | AddF16 => ADD_NORM_SUM,
        AddQ8K => ADD_NORM_Q8K_SUM,
        _ => NORM_SUM,
    });
    let barrier = if kind == AddQ8K {
        "    storageBarrier();\n"
    } else {
        ""
    };
    s.push_str(&NORM_REDUCE.replace("BARRIER", barrier));
    match kind {
        Q8K => s.push_str(NORM_Q8K_APPLY),
        AddQ8K => s.push_str(ADD_NORM_Q8K_APPLY),
        Inplace => s.push_str(&NORM_APPLY.replace("OUT[", "X[")),
        Add => {
            s.push_str(ADD_NORM_APPLY);
            s.push_str(&NORM_APPLY.replace("OUT[", "O["));
        }
        AddF16 => {
            let f16 = "O[base + i] = v;\n                F[base + i] = f16(v);";
            s.push_str(&ADD_NORM_APPLY.replace("O[base + i] = v;", f16));
            s.push_str(&NORM_APPLY.replace("OUT[base + i] = v;", f16));
        }
        _ => s.push_str(&NORM_APPLY.replace("OUT[", "O[")),
    }
    s.push_str("}\n");
    match kind {
        Q8K => push_q8k_block(&mut s),
        AddQ8K => s.push_str(Q8K_LEVEL),
        _ => {}
    }
    s
}

/// `NormKind::Add` (or `AddF16` with `f16`) taking Y as `matmul_cm2.comp`'s split-K partial
/// products (S: b.y slices of b.z values, in Y's layout) in place of the `SPLIT_SUM` pass that
/// would add them: each value summed over its slices in `SPLIT_SUM`'s order and written to Y as
/// that pass would have, then added into X as `Add` does. The last binding is S.
pub(crate) fn add_norm_split_source(f16: bool) -> String {
    let kind = if f16 { NormKind::AddF16 } else { NormKind::Add };
    let s = norm_source(kind);
    let last = if f16 { 5 } else { 4 };
    let decl = "var<storage, read> Y: array<f32>;";
    assert!(s.contains(decl) && s.contains("xv[k] = X[i] + Y[i];"));
    s.replacen(
        decl,
        &format!(
            "var<storage, read_write> Y: array<f32>;
@group(0) @binding({}) var<storage, read> S: array<f32>;
fn yin(i: u32) -> f32 {{
    var s = S[i];
    for (var z = 1u; z < P.b.y; z++) {{ s += S[z * P.b.z + i]; }}
    Y[i] = s;
    return s;
}}",
            last + 1
        ),
        1,
    )
    .replace("xv[k] = X[i] + Y[i];", "xv[k] = X[i] + yin(i);")
}

/// In-place element-wise ops on X with an optional second operand Y.
/// a = (n elements, mode, width (bias), grid x), f.x = scalar.
/// modes: 0 add (x += y), 1 bias (x += y[i % width]), 2 scale, 3 softcap.
pub(crate) const ELEMENTWISE: &str = r#"
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read> Y: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (g.y * P.a.w + g.x) * 256u + lid;
    if (i >= P.a.x) { return; }
    let x = X[i];
    switch P.a.y {
        case 0u: { X[i] = x + Y[i]; }
        case 1u: { X[i] = x + Y[i % P.a.z]; }
        case 2u: { X[i] = x * P.f.x; }
        default: { X[i] = tanh(x / P.f.x) * P.f.x; }
    }
}
"#;

/// `act(g) * u` of one element (SwiGLU for kind 0, else GeGLU, which rounds the input and the
/// GELU result through f16 as ggml's CPU table does).
const GLU_ELEM: &str = r#"
fn round_f16(x: f32) -> f32 { return unpack2x16float(pack2x16float(vec2<f32>(x, 0.0))).x; }
fn glu_elem(x: f32, u: f32, kind: u32) -> f32 {
    var a: f32;
    if (kind == 0u) {
        a = x / (1.0 + exp(-x));
    } else if (x <= -10.0) {
        a = 0.0;
    } else if (x >= 10.0) {
        a = x;
    } else {
        let h = round_f16(x);
        a = round_f16(0.5 * h * (1.0 + tanh(0.7978845608 * h * (1.0 + 0.044715 * h * h))));
    }
    return a * u;
}
"#;

/// `O = act(G) * U`. a = (n elements, kind (0 SwiGLU, 1 GeGLU), _, grid x).
pub(crate) const GLU: &str = r#"
@group(0) @binding(1) var<storage, read> G: array<f32>;
@group(0) @binding(2) var<storage, read> U: array<f32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (g.y * P.a.w + g.x) * 256u + lid;
    if (i >= P.a.x) { return; }
    O[i] = glu_elem(G[i], U[i], P.a.y);
}
"#;

/// Q8_K's rule, as the CPU backend's `quantize_row_q8_K`: the inverse scale is -127 over the
/// block's first signed extreme (`d` = its inverse), levels are rounded half to even and capped
/// at 127; `q8k_level` returns a level as the low byte of its word.
const Q8K_LEVEL: &str = r#"
fn q8k_iscale(smax: f32) -> f32 { return -127.0 / smax; }
fn q8k_level(iscale: f32, v: f32) -> u32 { return bitcast<u32>(i32(min(round(iscale * v), 127.0))) & 0xFFu; }
"#;

/// `Q8K_BLOCK` with the `Q8K_LEVEL` it calls.
fn push_q8k_block(s: &mut String) {
    push_q8k_block_to(s, "Q");
}

/// `push_q8k_block` storing into the binding named `out` instead of `Q`.
fn push_q8k_block_to(s: &mut String, out: &str) {
    s.push_str(Q8K_LEVEL);
    let body = Q8K_BLOCK
        .replace("Q[blk", &format!("{out}[blk"))
        .replace("Q[d_off", &format!("{out}[d_off"));
    s.push_str(&body);
}

/// Shared memory `Q8K_BLOCK` adds to a kernel.
pub(crate) const Q8K_BLOCK_SHARED_BYTES: u32 = 4 * 4 * 256;

/// Q8_K quantization of one 256-value block held one value per thread (`Q8K_LEVEL`'s rule),
/// for `ACT_Q8K` and the fused kernels: the packed words go to `Q[64 blk ..]`, the scale to
/// `Q[d_off + blk]`. Every thread of the workgroup must call it.
const Q8K_BLOCK: &str = r#"
var<workgroup> am: array<f32, 256>;
var<workgroup> ai: array<u32, 256>;
var<workgroup> av: array<f32, 256>;
var<workgroup> qv: array<u32, 256>;
fn q8k_block(lid: u32, v: f32, blk: u32, d_off: u32) {
    am[lid] = abs(v);
    ai[lid] = lid;
    av[lid] = v;
    workgroupBarrier();
    for (var st = 128u; st > 0u; st >>= 1u) {
        if (lid < st) {
            let o = lid + st;
            if (am[o] > am[lid]) { am[lid] = am[o]; ai[lid] = ai[o]; }
        }
        workgroupBarrier();
    }
    let amax = am[0];
    var q = 0u;
    var d = 0.0;
    if (amax != 0.0) {
        let iscale = q8k_iscale(av[ai[0]]);
        q = q8k_level(iscale, v);
        d = 1.0 / iscale;
    }
    qv[lid] = q;
    workgroupBarrier();
    if (lid < 64u) {
        let k = 4u * lid;
        Q[blk * 64u + lid] = qv[k] | (qv[k + 1u] << 8u) | (qv[k + 2u] << 16u) | (qv[k + 3u] << 24u);
    }
    if (lid == 0u) { Q[d_off + blk] = bitcast<u32>(d); }
}
"#;

/// `GLU` fused with `ACT_Q8K` on its output (decode, for the integer-dot matrix-vector product
/// that reads it next): one workgroup per 256-value block. a = (n elements, kind, word offset
/// of the Q8_K scales, _).
pub(crate) const GLU_Q8K: &str = r#"
@group(0) @binding(1) var<storage, read> G: array<f32>;
@group(0) @binding(2) var<storage, read> U: array<f32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
@group(0) @binding(4) var<storage, read_write> Q: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = g.x * 256u + lid;
    let v = glu_elem(G[i], U[i], P.a.y);
    O[i] = v;
    q8k_block(lid, v, g.x, P.a.z);
}
"#;

/// RoPE of Q and K (in place, as `ROPE`) fused with `KV_STORE2` (the rotated K and V stored in
/// their cells as f16 pairs): items below the Q pair count rotate one Q pair; then one item
/// per K word (for NeoX rotation the item of a word in the first rotated half also rotates its
/// partner word, so that every value is read and written by one thread; requires n_rot % 4 ==
/// 0); then one item per V word.
/// a = (n tokens, Q row width, K row width, head dim), b = (n_rot, table word offset, neox,
/// grid x), c = (cell list word offset, V words per row, _, _).
pub(crate) const ROPE_KV: &str = r#"
@group(0) @binding(1) var<storage, read_write> Q: array<f32>;
@group(0) @binding(2) var<storage, read_write> K: array<f32>;
@group(0) @binding(3) var<storage, read> V: array<f32>;
@group(0) @binding(4) var<storage, read_write> Ck: array<u32>;
@group(0) @binding(5) var<storage, read_write> Cv: array<u32>;
@group(0) @binding(6) var<storage, read> A: array<u32>;
fn kin(i: u32) -> f32 { return K[i]; }
fn vin(i: u32) -> f32 { return V[i]; }
fn cs(t: u32, p: u32) -> vec2<f32> {
    let o = P.b.y + t * P.b.x + 2u * p;
    return vec2<f32>(bitcast<f32>(A[o]), bitcast<f32>(A[o + 1u]));
}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (g.y * P.b.w + g.x) * 256u + lid;
    let n = P.a.x;
    let hd = P.a.w;
    let half_rot = P.b.x / 2u;
    let neox = P.b.z != 0u;
    let q_per_tok = (P.a.y / hd) * half_rot;
    let nq = n * q_per_tok;
    if (i < nq) {
        let t = i / q_per_tok;
        let r = i % q_per_tok;
        let h = r / half_rot;
        let p = r % half_rot;
        let c = cs(t, p);
        let base = t * P.a.y + h * hd;
        var i0: u32;
        var i1: u32;
        if (neox) { i0 = base + p; i1 = base + p + half_rot; } else { i0 = base + 2u * p; i1 = i0 + 1u; }
        let x0 = Q[i0];
        let x1 = Q[i1];
        Q[i0] = x0 * c.x - x1 * c.y;
        Q[i1] = x0 * c.y + x1 * c.x;
        return;
    }
    let j = i - nq;
    let kwpr = P.a.z / 2u;
    let nk = n * kwpr;
    if (j < nk) {
        let t = j / kwpr;
        let w = j % kwpr;
        let e0 = 2u * (w % (hd / 2u));
        let base = t * P.a.z + (w / (hd / 2u)) * hd;
        let dst = A[P.c.x + t] * kwpr + w;
        if (e0 >= P.b.x) {
            let k0 = kin(base + e0);
            let k1 = kin(base + e0 + 1u);
//@KOUT
            Ck[dst] = pack2x16float(vec2<f32>(k0, k1));
            return;
        }
        if (neox) {
            if (e0 >= half_rot) { return; }
            let a0 = kin(base + e0);
            let a1 = kin(base + e0 + 1u);
            let b0 = kin(base + e0 + half_rot);
            let b1 = kin(base + e0 + 1u + half_rot);
            let c0 = cs(t, e0);
            let c1 = cs(t, e0 + 1u);
            let ya0 = a0 * c0.x - b0 * c0.y;
            let yb0 = a0 * c0.y + b0 * c0.x;
            let ya1 = a1 * c1.x - b1 * c1.y;
            let yb1 = a1 * c1.y + b1 * c1.x;
            K[base + e0] = ya0;
            K[base + e0 + 1u] = ya1;
            K[base + e0 + half_rot] = yb0;
            K[base + e0 + 1u + half_rot] = yb1;
            Ck[dst] = pack2x16float(vec2<f32>(ya0, ya1));
            Ck[dst + half_rot / 2u] = pack2x16float(vec2<f32>(yb0, yb1));
        } else {
            let x0 = kin(base + e0);
            let x1 = kin(base + e0 + 1u);
            let c = cs(t, e0 / 2u);
            let y0 = x0 * c.x - x1 * c.y;
            let y1 = x0 * c.y + x1 * c.x;
            K[base + e0] = y0;
            K[base + e0 + 1u] = y1;
            Ck[dst] = pack2x16float(vec2<f32>(y0, y1));
        }
        return;
    }
    let l = j - nk;
    let vwpr = P.c.y;
    if (l >= n * vwpr) { return; }
    let t = l / vwpr;
    let w = l % vwpr;
    let cell = A[P.c.x + t];
    let vi = t * vwpr * 2u + 2u * w;
    let v0 = vin(vi);
    let v1 = vin(vi + 1u);
//@VOUT
    Cv[cell * vwpr + w] = pack2x16float(vec2<f32>(v0, v1));
}
"#;

/// `ROPE_KV` taking K and V as `matmul_cm2.comp`'s split-K partial products (Ks, Vs: c.z and
/// c.w slices of tokens x width each) in place of the `SPLIT_SUM` passes that would add them:
/// each value summed over its slices in `SPLIT_SUM`'s order, and written to K and V as those
/// passes would have (the rotated K as `ROPE_KV` writes it), besides the cache.
pub(crate) fn rope_kv_source(split: bool) -> String {
    if !split {
        return source(
            &ROPE_KV.replace("//@KOUT\n", "").replace("//@VOUT\n", ""),
            256,
            None,
        );
    }
    let body = ROPE_KV
        .replace(
            "var<storage, read> V: array<f32>;",
            "var<storage, read_write> V: array<f32>;
@group(0) @binding(7) var<storage, read> Ks: array<f32>;
@group(0) @binding(8) var<storage, read> Vs: array<f32>;",
        )
        .replace(
            "fn kin(i: u32) -> f32 { return K[i]; }
fn vin(i: u32) -> f32 { return V[i]; }",
            "fn kin(i: u32) -> f32 {
    var s = Ks[i];
    for (var z = 1u; z < P.c.z; z++) { s += Ks[z * P.a.x * P.a.z + i]; }
    return s;
}
fn vin(i: u32) -> f32 {
    var s = Vs[i];
    for (var z = 1u; z < P.c.w; z++) { s += Vs[z * P.a.x * 2u * P.c.y + i]; }
    return s;
}",
        )
        .replace(
            "//@KOUT\n",
            "            K[base + e0] = k0;\n            K[base + e0 + 1u] = k1;\n",
        )
        .replace("//@VOUT\n", "    V[vi] = v0;\n    V[vi + 1u] = v1;\n");
    source(&body, 256, None)
}

/// The fused kernels' sources with their helpers.
pub(crate) fn glu_source(body: &str, q8k: bool) -> String {
    let mut s = String::from(PARAMS);
    s.push_str(body);
    if body.contains("glu_elem(") {
        s.push_str(GLU_ELEM);
    }
    if q8k {
        push_q8k_block(&mut s);
    }
    s
}

/// RoPE in place with a host-computed cos/sin table per token (so the angles round exactly as
/// the CPU's `rope_cache` does). One thread per rotated pair.
/// a = (n tokens, row width, head dim, n_rot), b = (table word offset, neox, _, grid x).
pub(crate) const ROPE: &str = r#"
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read> A: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (g.y * P.b.w + g.x) * 256u + lid;
    let half_rot = P.a.w / 2u;
    let n_heads = P.a.y / P.a.z;
    let per_tok = n_heads * half_rot;
    if (i >= P.a.x * per_tok) { return; }
    let t = i / per_tok;
    let r = i % per_tok;
    let h = r / half_rot;
    let p = r % half_rot;
    let c = bitcast<f32>(A[P.b.x + t * P.a.w + 2u * p]);
    let s = bitcast<f32>(A[P.b.x + t * P.a.w + 2u * p + 1u]);
    let base = t * P.a.y + h * P.a.z;
    var i0: u32;
    var i1: u32;
    if (P.b.y != 0u) { i0 = base + p; i1 = base + p + half_rot; } else { i0 = base + 2u * p; i1 = i0 + 1u; }
    let x0 = X[i0];
    let x1 = X[i1];
    X[i0] = x0 * c - x1 * s;
    X[i1] = x0 * s + x1 * c;
}
"#;

/// Stores a step's K or V rows as f16 pairs into their KV cells.
/// a = (n tokens, words per row, aux offset of the per-token cell list, grid x).
pub(crate) const KV_STORE: &str = r#"
@group(0) @binding(1) var<storage, read> S: array<f32>;
@group(0) @binding(2) var<storage, read_write> C: array<u32>;
@group(0) @binding(3) var<storage, read> A: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (g.y * P.a.w + g.x) * 256u + lid;
    let wpr = P.a.y;
    if (i >= P.a.x * wpr) { return; }
    let t = i / wpr;
    let w = i % wpr;
    let cell = A[P.a.z + t];
    C[cell * wpr + w] = pack2x16float(vec2<f32>(S[t * wpr * 2u + 2u * w], S[t * wpr * 2u + 2u * w + 1u]));
}
"#;

/// `KV_STORE` for K and V in one dispatch: items below n * (K words per row) store K, the
/// rest V. a = (n tokens, K words per row, cell table word offset, grid x), b.x = V words per
/// row.
pub(crate) const KV_STORE2: &str = r#"
@group(0) @binding(1) var<storage, read> Sk: array<f32>;
@group(0) @binding(2) var<storage, read> Sv: array<f32>;
@group(0) @binding(3) var<storage, read_write> Ck: array<u32>;
@group(0) @binding(4) var<storage, read_write> Cv: array<u32>;
@group(0) @binding(5) var<storage, read> A: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (g.y * P.a.w + g.x) * 256u + lid;
    let nk = P.a.x * P.a.y;
    if (i < nk) {
        let wpr = P.a.y;
        let t = i / wpr;
        let w = i % wpr;
        let cell = A[P.a.z + t];
        Ck[cell * wpr + w] = pack2x16float(vec2<f32>(Sk[t * wpr * 2u + 2u * w], Sk[t * wpr * 2u + 2u * w + 1u]));
        return;
    }
    let wpr = P.b.x;
    let j = i - nk;
    if (j >= P.a.x * wpr) { return; }
    let t = j / wpr;
    let w = j % wpr;
    let cell = A[P.a.z + t];
    Cv[cell * wpr + w] = pack2x16float(vec2<f32>(Sv[t * wpr * 2u + 2u * w], Sv[t * wpr * 2u + 2u * w + 1u]));
}
"#;

/// Attention of one (query head, token) per workgroup over its visible cells, split over the
/// KV length in tiles of WG cells: each thread scores one cell of the tile, the tile's softmax
/// terms are merged into a running (max, sum), and each thread accumulates its own V dims.
/// The visible range is the token's (cell-list offset, count) in Aux: causal and sliding-window
/// masks are expressed by the range the host computes.
/// a = (n_head, group, dk, dv), b = (q row stride, K words per cell, V words per cell, out row
/// stride), c = (aux offset of per-token ranges (count's top bit: f16 mode), _, _, _),
/// f = (scale, softcap or 0).
pub(crate) const ATTENTION: &str = r#"
@group(0) @binding(1) var<storage, read> Q: array<f32>;
@group(0) @binding(2) var<storage, read> K: array<u32>;
@group(0) @binding(3) var<storage, read> V: array<u32>;
@group(0) @binding(4) var<storage, read> A: array<u32>;
@group(0) @binding(5) var<storage, read_write> O: array<f32>;
const MAXD: u32 = 512u;
const DPT: u32 = MAXD / WG;
var<workgroup> qs: array<f32, MAXD>;
var<workgroup> ps: array<f32, WG>;
var<workgroup> cl: array<u32, WG>;
var<workgroup> red: array<f32, WG>;
var<workgroup> range: vec2<u32>;
fn round_f16(x: f32) -> f32 { return unpack2x16float(pack2x16float(vec2<f32>(x, 0.0))).x; }

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (lid < st) { red[lid] = max(red[lid], red[lid + st]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}
fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (lid < st) { red[lid] += red[lid + st]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = g.x;
    let t = g.y;
    let dk = P.a.z;
    let dv = P.a.w;
    let kvh = h / P.a.y;
    if (lid == 0u) { range = vec2<u32>(A[P.c.x + 2u * t], A[P.c.x + 2u * t + 1u]); }
    let rg = workgroupUniformLoad(&range);
    let off = rg.x;
    let cnt = rg.y & 0x7fffffffu;
    // When the token's sequence has fewer than 64 queries in the step, the CPU (as ggml) rounds
    // Q to f16 and keeps an f16 V accumulator updated cell by cell; we follow it so that logits
    // agree (the top bit of the token's range count).
    let f16_mode = (rg.y >> 31u) != 0u;
    for (var i = lid; i < dk; i += WG) {
        let qv = Q[t * P.b.x + h * dk + i];
        if (f16_mode) { qs[i] = round_f16(qv); } else { qs[i] = qv; }
    }
    workgroupBarrier();
    var m = -3.0e38;
    var lsum = 0.0;
    var acc: array<f32, DPT>;
    let kbase = kvh * (dk / 2u);
    for (var t0 = 0u; t0 < cnt; t0 += WG) {
        let j = t0 + lid;
        var s = -3.0e38;
        var cell = 0u;
        if (j < cnt) {
            cell = A[off + j];
            let kb = cell * P.b.y + kbase;
            var d = 0.0;
            for (var w = 0u; w < dk / 2u; w++) {
                let kv = unpack2x16float(K[kb + w]);
                d += qs[2u * w] * kv.x + qs[2u * w + 1u] * kv.y;
            }
            if (P.f.y != 0.0) {
                s = P.f.y * tanh(d * (P.f.x / P.f.y));
            } else {
                s = d * P.f.x;
            }
        }
        cl[lid] = cell;
        let n_in = min(WG, cnt - t0);
        if (f16_mode) {
            ps[lid] = s;
            workgroupBarrier();
            for (var jj = 0u; jj < n_in; jj++) {
                let sj = ps[jj];
                var ms = 1.0;
                var vs = 1.0;
                if (sj > m) {
                    ms = exp(m - sj);
                    m = sj;
                } else {
                    vs = exp(sj - m);
                }
                let hi0 = cl[jj] * P.b.z * 2u + kvh * dv;
                for (var q = 0u; q < DPT; q++) {
                    let dim = lid + q * WG;
                    if (dim < dv) {
                        var a = acc[q];
                        if (ms != 1.0) { a = round_f16(a * ms); }
                        let hi = hi0 + dim;
                        let vv = unpack2x16float(V[hi >> 1u])[hi & 1u];
                        acc[q] = round_f16(fma(vv, vs, a));
                    }
                }
                lsum = fma(lsum, ms, vs);
            }
            workgroupBarrier();
            continue;
        }
        let mx = reduce_max(lid, s);
        let mn = max(m, mx);
        var p = 0.0;
        if (j < cnt) { p = exp(s - mn); }
        ps[lid] = p;
        let corr = exp(m - mn);
        let tsum = reduce_sum(lid, p);
        lsum = lsum * corr + tsum;
        for (var q = 0u; q < DPT; q++) {
            let dim = lid + q * WG;
            if (dim < dv) {
                var a = acc[q] * corr;
                let vo = kvh * dv + dim;
                for (var jj = 0u; jj < n_in; jj++) {
                    let hi = cl[jj] * P.b.z * 2u + vo;
                    let vv = unpack2x16float(V[hi >> 1u])[hi & 1u];
                    a += ps[jj] * vv;
                }
                acc[q] = a;
            }
        }
        m = mn;
        workgroupBarrier();
    }
    var inv = 0.0;
    if (lsum != 0.0) { inv = 1.0 / lsum; }
    for (var q = 0u; q < DPT; q++) {
        let dim = lid + q * WG;
        if (dim < dv) { O[t * P.b.w + h * dv + dim] = acc[q] * inv; }
    }
}
"#;

/// Shared-memory words of `ATTN_DECODE`'s staging buffer for head dims up to `dmax`: a full
/// 64-cell tile of K rows (padded by a word) where that fits 16.25 KiB, else sub-tiles.
pub(crate) fn attn_decode_stage_words(dmax: u32) -> u32 {
    (64 * (dmax / 2 + 1)).min(64 * 65)
}

/// Shared memory of `ATTN_DECODE` with `hg` query heads per workgroup.
pub(crate) fn attn_decode_shared_bytes(hg: u32, dmax: u32) -> u32 {
    4 * (hg * dmax + attn_decode_stage_words(dmax) + 4 * 64 * hg + 64 + 2)
}

/// `ATTENTION` with the same arithmetic in the same order (bit-identical results in both of its
/// modes), restructured for latency: `hg` query heads of one KV head per workgroup (64 threads
/// each; K and V rows staged once for the group) and the tile's K rows, then its V rows, loaded
/// into shared memory by all threads with coalesced reads before the loops that use them. In
/// the f16 mode the running max before each cell is an inclusive prefix max (a scan over the
/// tile's scores, then max with the carried max, which is the sequential `if s > m { m = s }`),
/// so the exps of the tile are taken in parallel and the per-cell loop, which must stay
/// sequential (an f16 accumulator rounded cell by cell, as ggml's CPU path), reads only shared
/// memory. Grid (n_head / hg, tokens). a, b, f as `ATTENTION`; c = (aux offset of per-token
/// ranges (count's top bit: f16 mode), K cells per staged sub-tile, V cells per staged sub-tile,
/// _). Needs an even V head dim.
///
/// Split (flash-decoding, `split`): the grid is (n_head / hg, work items) instead, item i the
/// aux words c.w + 3i = (token, first cell of its range, cells); each workgroup attends its
/// item's cells only and writes, per query head, (max, sum, unnormalised acc[dv]) to row
/// (i * n_head + h) of O (`dv + 2` floats a row), which `ATTN_COMBINE` merges. f32 mode only.
///
/// With `q8k` (unsplit, 256 threads, `hg` heads of whole 256-value blocks), the workgroup also
/// writes the packed Q8_K copy of its output to binding 6 (`q8k_block` into `QO`, scales at
/// word `bitcast<u32>(P.f.z)`), so that the product reading the output needs no `ACT_Q8K`.
///
/// With `rope` (steps where no sequence has two tokens), the RoPE of Q and of the step's K
/// and the K/V store (`ROPE_KV`'s arithmetic) are folded in: Q is rotated as it is loaded
/// (the Q buffer keeps the unrotated values), and the workgroups whose range ends at a
/// token's own cell rotate that token's K row of their KV head and store it and its V row in
/// the cell before reading the cache. Extra bindings (after `QO`): the step's K and V rows;
/// aux words at `bitcast<u32>(P.f.w)`: (n_rot, rope table offset, neox, cell list offset).
pub(crate) fn attn_decode_source(kind: AttnDecodeKind) -> String {
    use std::fmt::Write;
    let AttnDecodeKind {
        hg,
        dmax,
        split,
        q8k,
        rope,
    } = kind;
    let sb = attn_decode_stage_words(dmax);
    let mut s = String::with_capacity(8192);
    s.push_str(PARAMS);
    s.push_str(&format!(
        "const WG: u32 = {}u;\nconst HG: u32 = {hg}u;\nconst DMAX: u32 = {dmax}u;\nconst SB: u32 = {sb}u;\nconst QS: u32 = {}u;\nconst SPLIT: bool = {split};\n",
        64 * hg,
        hg * dmax
    ));
    let mut body = ATTN_DECODE.to_string();
    let mut next = 6;
    if q8k {
        debug_assert!(hg == 4 && !split);
        body = body.replace("    // Q8K_TAIL\n", ATTN_DECODE_Q8K_TAIL);
        let _ = writeln!(
            s,
            "@group(0) @binding({next}) var<storage, read_write> QO: array<u32>;"
        );
        next += 1;
        push_q8k_block_to(&mut s, "QO");
    }
    if rope {
        body = body
            .replace("var<storage, read> K:", "var<storage, read_write> K:")
            .replace("var<storage, read> V:", "var<storage, read_write> V:")
            .replace("let qv = Q[qrow + i];", "let qv = qload(qrow, i, t);")
            .replace("    // ROPE_STORE\n", ATTN_DECODE_ROPE_STORE);
        let _ = writeln!(
            s,
            "@group(0) @binding({next}) var<storage, read> KR: array<f32>;\n@group(0) @binding({}) var<storage, read> VR: array<f32>;",
            next + 1
        );
        s.push_str(ATTN_DECODE_ROPE_FNS);
    }
    s.push_str(&body);
    s
}

/// What an `ATTN_DECODE` pipeline is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct AttnDecodeKind {
    /// Query heads per workgroup (64 threads each).
    pub hg: u32,
    /// Largest head dim, a power of two of at least 64.
    pub dmax: u32,
    /// Partials for `ATTN_COMBINE` (flash-decoding).
    pub split: bool,
    /// Also writes the output's packed Q8_K copy.
    pub q8k: bool,
    /// RoPE and the K/V store of the step folded in.
    pub rope: bool,
}

/// `ATTN_DECODE`'s rotated Q load and rope table lookup (`ROPE_KV`'s arithmetic).
const ATTN_DECODE_ROPE_FNS: &str = r#"
fn rope_cs(tab: u32, nrot: u32, t: u32, p: u32) -> vec2<f32> {
    let o = tab + t * nrot + 2u * p;
    return vec2<f32>(bitcast<f32>(A[o]), bitcast<f32>(A[o + 1u]));
}
// Element i of the Q rows from qrow, rotated as `ROPE_KV` rotates it in place.
fn qload(qrow: u32, i: u32, t: u32) -> f32 {
    let ro = bitcast<u32>(P.f.w);
    let nrot = A[ro];
    let dk = P.a.z;
    let e = i % dk;
    if (e >= nrot) { return Q[qrow + i]; }
    let hb = qrow + i - e;
    let half = nrot / 2u;
    var p: u32;
    var i0: u32;
    var i1: u32;
    var first: bool;
    if (A[ro + 2u] != 0u) {
        p = e % half;
        i0 = hb + p;
        i1 = i0 + half;
        first = e < half;
    } else {
        p = e / 2u;
        i0 = hb + 2u * p;
        i1 = i0 + 1u;
        first = (e & 1u) == 0u;
    }
    let c = rope_cs(A[ro + 1u], nrot, t, p);
    let x0 = Q[i0];
    let x1 = Q[i1];
    if (first) { return x0 * c.x - x1 * c.y; }
    return x0 * c.y + x1 * c.x;
}
"#;

/// `ATTN_DECODE`'s store of the token's own K (rotated) and V rows of this KV head, by the
/// workgroups whose range ends at the token's cell, made visible to the workgroup's reads.
const ATTN_DECODE_ROPE_STORE: &str = r#"    if (hdr[1].z >= (rg.y & 0x7fffffffu)) {
        let ro = bitcast<u32>(P.f.w);
        let nrot = A[ro];
        let tab = A[ro + 1u];
        let neox = A[ro + 2u] != 0u;
        let cell = A[A[ro + 3u] + t];
        let half = nrot / 2u;
        let kraw = t * 2u * P.b.y + kvh * dk;
        let kdst = cell * P.b.y + kvh * kw;
        for (var w = lid; w < kw; w += WG) {
            let e0 = 2u * w;
            if (e0 >= nrot) {
                K[kdst + w] = pack2x16float(vec2<f32>(KR[kraw + e0], KR[kraw + e0 + 1u]));
            } else if (neox) {
                if (e0 < half) {
                    let a0 = KR[kraw + e0];
                    let a1 = KR[kraw + e0 + 1u];
                    let b0 = KR[kraw + e0 + half];
                    let b1 = KR[kraw + e0 + 1u + half];
                    let c0 = rope_cs(tab, nrot, t, e0);
                    let c1 = rope_cs(tab, nrot, t, e0 + 1u);
                    let ya0 = a0 * c0.x - b0 * c0.y;
                    let yb0 = a0 * c0.y + b0 * c0.x;
                    let ya1 = a1 * c1.x - b1 * c1.y;
                    let yb1 = a1 * c1.y + b1 * c1.x;
                    K[kdst + w] = pack2x16float(vec2<f32>(ya0, ya1));
                    K[kdst + w + half / 2u] = pack2x16float(vec2<f32>(yb0, yb1));
                }
            } else {
                let x0 = KR[kraw + e0];
                let x1 = KR[kraw + e0 + 1u];
                let c = rope_cs(tab, nrot, t, e0 / 2u);
                let y0 = x0 * c.x - x1 * c.y;
                let y1 = x0 * c.y + x1 * c.x;
                K[kdst + w] = pack2x16float(vec2<f32>(y0, y1));
            }
        }
        let vraw = t * 2u * P.b.z + kvh * dv;
        let vdst = cell * P.b.z + kvh * vw;
        for (var w = lid; w < vw; w += WG) {
            V[vdst + w] = pack2x16float(vec2<f32>(VR[vraw + 2u * w], VR[vraw + 2u * w + 1u]));
        }
    }
    storageBarrier();
"#;

/// `ATTN_DECODE`'s Q8_K tail: the workgroup's normalised outputs (its heads' rows, adjacent in
/// O) staged in `qs`, then quantized a 256-value block at a time.
const ATTN_DECODE_Q8K_TAIL: &str = r#"    workgroupBarrier();
    for (var q = 0u; q < DPT; q++) {
        let dim = l + q * 64u;
        if (dim < dv) { qs[hb * dv + dim] = acc[q] * inv; }
    }
    workgroupBarrier();
    let nb = HG * dv / 256u;
    let blk0 = (t * P.a.x * dv + h0 * dv) / 256u;
    for (var b = 0u; b < nb; b++) {
        q8k_block(lid, qs[b * 256u + lid], blk0 + b, bitcast<u32>(P.f.z));
    }
"#;

const ATTN_DECODE: &str = r#"
@group(0) @binding(1) var<storage, read> Q: array<f32>;
@group(0) @binding(2) var<storage, read> K: array<u32>;
@group(0) @binding(3) var<storage, read> V: array<u32>;
@group(0) @binding(4) var<storage, read> A: array<u32>;
@group(0) @binding(5) var<storage, read_write> O: array<f32>;
const DPT: u32 = DMAX / 64u;
var<workgroup> qs: array<f32, QS>;
var<workgroup> sb: array<u32, SB>;
var<workgroup> ps: array<f32, WG>;
var<workgroup> red: array<f32, WG>;
var<workgroup> msv: array<f32, WG>;
var<workgroup> vsv: array<f32, WG>;
var<workgroup> cl: array<u32, 64>;
var<workgroup> range: array<vec4<u32>, 2>;
fn round_f16(x: f32) -> f32 { return unpack2x16float(pack2x16float(vec2<f32>(x, 0.0))).x; }

// Tree reductions over each head's 64 threads, in `ATTENTION`'s order.
fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var st = 32u; st > 0u; st >>= 1u) {
        if ((lid & 63u) < st) { red[lid] = max(red[lid], red[lid + st]); }
        workgroupBarrier();
    }
    let r = red[lid & ~63u];
    workgroupBarrier();
    return r;
}
fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var st = 32u; st > 0u; st >>= 1u) {
        if ((lid & 63u) < st) { red[lid] += red[lid + st]; }
        workgroupBarrier();
    }
    let r = red[lid & ~63u];
    workgroupBarrier();
    return r;
}

// V rows of cells cl[v0..] into sb (n words, vw per row), eight loads in flight per thread.
fn stage_v(lid: u32, v0: u32, n: u32, vw: u32, vbase: u32) {
    for (var i0 = lid; i0 < n; i0 += 8u * WG) {
        var r: array<u32, 8>;
        for (var u = 0u; u < 8u; u++) {
            let i = i0 + u * WG;
            if (i < n) {
                let c = i / vw;
                r[u] = V[cl[v0 + c] * P.b.z + vbase + i - c * vw];
            }
        }
        for (var u = 0u; u < 8u; u++) {
            let i = i0 + u * WG;
            if (i < n) { sb[i] = r[u]; }
        }
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let hb = lid >> 6u;
    let l = lid & 63u;
    let h0 = g.x * HG;
    let h = h0 + hb;
    let dk = P.a.z;
    let dv = P.a.w;
    let kvh = h0 / P.a.y;
    let kw = dk / 2u;
    let kst = kw + 1u;
    let vw = dv / 2u;
    let ck = P.c.y;
    let cv = P.c.z;
    if (lid == 0u) {
        // (token, first cell, end cell) of this workgroup's work.
        var it = vec4<u32>(g.y, 0u, 0x7fffffffu, 0u);
        if (SPLIT) {
            let w = P.c.w + 3u * g.y;
            it = vec4<u32>(A[w], A[w + 1u], A[w + 1u] + A[w + 2u], 0u);
        }
        let r0 = A[P.c.x + 2u * it.x];
        let r1 = A[P.c.x + 2u * it.x + 1u];
        range[0] = vec4<u32>(r0, r1, 0u, 0u);
        range[1] = it;
    }
    let hdr = workgroupUniformLoad(&range);
    let rg = hdr[0];
    let t = hdr[1].x;
    let first = hdr[1].y;
    let off = rg.x;
    let cnt = min(rg.y & 0x7fffffffu, hdr[1].z);
    let f16_mode = (rg.y >> 31u) != 0u;
    let qrow = t * P.b.x + h0 * dk;
    for (var i = lid; i < HG * dk; i += WG) {
        let qv = Q[qrow + i];
        let at = (i / dk) * DMAX + i % dk;
        if (f16_mode) { qs[at] = round_f16(qv); } else { qs[at] = qv; }
    }
    // ROPE_STORE
    var m = -3.0e38;
    var lsum = 0.0;
    var acc: array<f32, DPT>;
    let kbase = kvh * kw;
    let vbase = kvh * vw;
    let qb = hb * DMAX;
    let pb = hb * 64u;
    for (var t0 = first; t0 < cnt; t0 += 64u) {
        let n_in = min(64u, cnt - t0);
        if (lid < 64u) {
            var c = 0u;
            if (lid < n_in) { c = A[off + t0 + lid]; }
            cl[lid] = c;
        }
        workgroupBarrier();
        // Scores: K rows staged ck cells at a time, one cell per thread of each head.
        var s = -3.0e38;
        for (var k0 = 0u; k0 < n_in; k0 += ck) {
            let nk = min(ck, n_in - k0);
            // Eight loads in flight per thread before their stores.
            for (var i0 = lid; i0 < nk * kw; i0 += 8u * WG) {
                var r: array<u32, 8>;
                for (var u = 0u; u < 8u; u++) {
                    let i = i0 + u * WG;
                    if (i < nk * kw) {
                        let c = i / kw;
                        r[u] = K[cl[k0 + c] * P.b.y + kbase + i - c * kw];
                    }
                }
                for (var u = 0u; u < 8u; u++) {
                    let i = i0 + u * WG;
                    if (i < nk * kw) {
                        let c = i / kw;
                        sb[c * kst + i - c * kw] = r[u];
                    }
                }
            }
            workgroupBarrier();
            if (l >= k0 && l < k0 + nk) {
                let rb = (l - k0) * kst;
                var d = 0.0;
                for (var w = 0u; w < kw; w++) {
                    let kv = unpack2x16float(sb[rb + w]);
                    d += qs[qb + 2u * w] * kv.x + qs[qb + 2u * w + 1u] * kv.y;
                }
                if (P.f.y != 0.0) {
                    s = P.f.y * tanh(d * (P.f.x / P.f.y));
                } else {
                    s = d * P.f.x;
                }
            }
            workgroupBarrier();
        }
        if (f16_mode) {
            // Running max before each cell: inclusive prefix max of the scores, then the
            // carried max; each cell's (ms, vs) as `ATTENTION`'s sequential loop takes them.
            var mx = s;
            for (var st = 1u; st < 64u; st <<= 1u) {
                red[lid] = mx;
                workgroupBarrier();
                if (l >= st) { mx = max(mx, red[lid - st]); }
                workgroupBarrier();
            }
            red[lid] = mx;
            workgroupBarrier();
            var ms = 1.0;
            var vs = 1.0;
            if (l < n_in) {
                var prev = m;
                if (l > 0u) { prev = max(m, red[lid - 1u]); }
                if (s > prev) {
                    ms = exp(prev - s);
                } else {
                    vs = exp(s - prev);
                }
            }
            msv[lid] = ms;
            vsv[lid] = vs;
            m = max(m, red[pb + n_in - 1u]);
            for (var v0 = 0u; v0 < n_in; v0 += cv) {
                let nv = min(cv, n_in - v0);
                stage_v(lid, v0, nv * vw, vw, vbase);
                workgroupBarrier();
                for (var jj = 0u; jj < nv; jj++) {
                    let mj = msv[pb + v0 + jj];
                    let vj = vsv[pb + v0 + jj];
                    let vr = jj * vw;
                    for (var q = 0u; q < DPT; q++) {
                        let dim = l + q * 64u;
                        if (dim < dv) {
                            var a = acc[q];
                            if (mj != 1.0) { a = round_f16(a * mj); }
                            let vv = unpack2x16float(sb[vr + (dim >> 1u)])[dim & 1u];
                            acc[q] = round_f16(fma(vv, vj, a));
                        }
                    }
                    lsum = fma(lsum, mj, vj);
                }
                workgroupBarrier();
            }
            continue;
        }
        let mx = reduce_max(lid, s);
        let mn = max(m, mx);
        var p = 0.0;
        if (l < n_in) { p = exp(s - mn); }
        ps[lid] = p;
        let corr = exp(m - mn);
        let tsum = reduce_sum(lid, p);
        lsum = lsum * corr + tsum;
        for (var q = 0u; q < DPT; q++) { acc[q] = acc[q] * corr; }
        for (var v0 = 0u; v0 < n_in; v0 += cv) {
            let nv = min(cv, n_in - v0);
            stage_v(lid, v0, nv * vw, vw, vbase);
            workgroupBarrier();
            for (var q = 0u; q < DPT; q++) {
                let dim = l + q * 64u;
                if (dim < dv) {
                    var a = acc[q];
                    for (var jj = 0u; jj < nv; jj++) {
                        let vv = unpack2x16float(sb[jj * vw + (dim >> 1u)])[dim & 1u];
                        a += ps[pb + v0 + jj] * vv;
                    }
                    acc[q] = a;
                }
            }
            workgroupBarrier();
        }
        m = mn;
    }
    if (SPLIT) {
        let row = (g.y * P.a.x + h) * (dv + 2u);
        if (l == 0u) {
            O[row] = m;
            O[row + 1u] = lsum;
        }
        for (var q = 0u; q < DPT; q++) {
            let dim = l + q * 64u;
            if (dim < dv) { O[row + 2u + dim] = acc[q]; }
        }
        return;
    }
    var inv = 0.0;
    if (lsum != 0.0) { inv = 1.0 / lsum; }
    for (var q = 0u; q < DPT; q++) {
        let dim = l + q * 64u;
        if (dim < dv) { O[t * P.b.w + h * dv + dim] = acc[q] * inv; }
    }
    // Q8K_TAIL
}
"#;

/// `ATTN_COMBINE`, or with `q8k` its twin `ATTN_COMBINE_Q8K`, both over `COMBINE_FNS`.
pub(crate) fn attn_combine_source(q8k: bool) -> String {
    let mut s = String::from(PARAMS);
    s.push_str(COMBINE_FNS);
    if q8k {
        s.push_str(ATTN_COMBINE_Q8K);
        push_q8k_block(&mut s);
    } else {
        s.push_str(ATTN_COMBINE);
    }
    s
}

/// Merges `ATTN_DECODE`'s split partials: per (query head, token), the rows of the token's
/// work items (max m_i, sum l_i, unnormalised acc_i) into O = sum_i e^(m_i - M) acc_i /
/// sum_i e^(m_i - M) l_i, M the largest m_i. a = (n_head, dv, out row stride, aux offset of
/// per-token (first item, items)). `combine_scale` gives a head's (M, 1 / sum), then
/// `combine_value` one output value; both combine kernels call them.
const COMBINE_FNS: &str = r#"
@group(0) @binding(1) var<storage, read> A: array<u32>;
@group(0) @binding(2) var<storage, read> S: array<f32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;

// The partial rows of token t, head h: row i at ((i0 + i) * n_head + h) * (dv + 2).
fn combine_row(t: u32, h: u32, i: u32) -> u32 {
    return ((A[P.a.w + 2u * t] + i) * P.a.x + h) * (P.a.y + 2u);
}
fn combine_scale(t: u32, h: u32) -> vec2<f32> {
    let ni = A[P.a.w + 2u * t + 1u];
    var mx = -3.0e38;
    for (var i = 0u; i < ni; i++) { mx = max(mx, S[combine_row(t, h, i)]); }
    var sum = 0.0;
    for (var i = 0u; i < ni; i++) {
        let r = combine_row(t, h, i);
        sum += exp(S[r] - mx) * S[r + 1u];
    }
    var inv = 0.0;
    if (sum != 0.0) { inv = 1.0 / sum; }
    return vec2<f32>(mx, inv);
}
fn combine_value(t: u32, h: u32, d: u32, sc: vec2<f32>) -> f32 {
    let ni = A[P.a.w + 2u * t + 1u];
    var a = 0.0;
    for (var i = 0u; i < ni; i++) {
        let r = combine_row(t, h, i);
        a += exp(S[r] - sc.x) * S[r + 2u + d];
    }
    return a * sc.y;
}
"#;

/// Grid (n_head, tokens), 64 threads over the head dims.
const ATTN_COMBINE: &str = r#"
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let sc = combine_scale(g.y, g.x);
    for (var d = l; d < P.a.y; d += 64u) {
        O[g.y * P.a.z + g.x * P.a.y + d] = combine_value(g.y, g.x, d, sc);
    }
}
"#;

/// `ATTN_COMBINE` over 256-value blocks of a token's output, one value per thread (the same
/// functions, so the same bits), which also writes the block's packed Q8_K copy (`q8k_block`;
/// scales at word `P.b.x`) for the product that reads the output. Grid (n_head * dv / 256,
/// tokens).
const ATTN_COMBINE_Q8K: &str = r#"
@group(0) @binding(4) var<storage, read_write> Q: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = g.y;
    let idx = g.x * 256u + lid;
    let h = idx / P.a.y;
    let v = combine_value(t, h, idx % P.a.y, combine_scale(t, h));
    O[t * P.a.z + idx] = v;
    q8k_block(lid, v, t * (P.a.x * P.a.y / 256u) + g.x, P.b.x);
}
"#;

/// Prefill attention, tiled (flash-attention style): a workgroup takes a block of up to BQ
/// consecutive query tokens of one sequence and one head, stages BK cells of K (then of V) of
/// the block's union visible range in shared memory at a time, and keeps a running (max, sum)
/// per query. Each query masks the tile by its own range (causal and sliding windows, as the
/// host computes them for `ATTENTION`). Each thread scores 2 queries x SC cells of the tile
/// (scores kept cell-major in shared memory), one thread per query updates its running max and
/// sum and turns the scores into probabilities, then each thread accumulates 4 queries x VW
/// words of V (register tiles: fewer shared-memory reads per FMA). Used when every sequence of
/// the step has at least 64 queries (the CPU's f32 path; the f16 path stays on `ATTENTION`).
/// a, b, f as `ATTENTION`; c = (aux offset of per-token ranges, aux offset of per-block
/// (first token, tokens, lo, hi), _, _). Grid (n_head, blocks).
pub(crate) const ATTN_TILE: &str = r#"
@group(0) @binding(1) var<storage, read> Q: array<f32>;
@group(0) @binding(2) var<storage, read> K: array<u32>;
@group(0) @binding(3) var<storage, read> V: array<u32>;
@group(0) @binding(4) var<storage, read> A: array<u32>;
@group(0) @binding(5) var<storage, read_write> O: array<f32>;
// Scores: each thread takes 2 query rows x SC cells (cells c, c + CG, ...).
const SC: u32 = BQ * BK / (WG * 2u);
const CG: u32 = BK / SC;
// P.V: each thread takes 4 query rows x VW words of V (words wc, wc + TW, ...).
const TW: u32 = WG * 4u / BQ;
const VW: u32 = DMAX / 2u / TW;
// Padded strides (in vec2) so that the rows read together fall in different banks.
const QS: u32 = DMAX / 2u + 1u;
const KS: u32 = DMAX / 2u + 1u;
const MASKED: f32 = -3.0e38;
var<workgroup> qs: array<vec2<f32>, BQ * QS>;
// K, then V, of the tile's cells as f32 (converted once when staged: f16 -> f32 conversions
// run at a quarter of the FMA rate on NVIDIA, and every staged value is read by BQ queries).
var<workgroup> kv: array<vec2<f32>, BK * KS>;
// Scores, then probabilities, cell-major: ss[cell][query] (4 queries read as one vec4).
var<workgroup> ss: array<vec4<f32>, BQ * BK / 4u>;
var<workgroup> cl: array<u32, BK>;
var<workgroup> rm: array<f32, BQ>;
var<workgroup> rl: array<f32, BQ>;
var<workgroup> rc: array<f32, BQ>;

fn ss_set(i: u32, v: f32) {
    ss[i / 4u][i % 4u] = v;
}
fn ss_get(i: u32) -> f32 {
    return ss[i / 4u][i % 4u];
}
// Scaled, soft-capped and masked scores of cell jj of the tile for queries r0 and r0 + 1.
fn score_put(jj: u32, j0: u32, r0: u32, qoff: vec2<u32>, qend: vec2<u32>, d0: f32, d1: f32) {
    let j = j0 + jj;
    for (var x = 0u; x < 2u; x++) {
        var d = d0;
        if (x == 1u) { d = d1; }
        var sv = MASKED;
        if (j >= qoff[x] && j < qend[x]) {
            if (P.f.y != 0.0) {
                sv = P.f.y * tanh(d * (P.f.x / P.f.y));
            } else {
                sv = d * P.f.x;
            }
        }
        ss_set(jj * BQ + r0 + x, sv);
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = g.x;
    let bo = P.c.y + 4u * g.y;
    let t0 = A[bo];
    let nt = A[bo + 1u];
    let lo = A[bo + 2u];
    let hi = A[bo + 3u];
    let dk2 = P.a.z / 2u;
    let dv2 = P.a.w / 2u;
    let kvh = h / P.a.y;
    // score rows (r0, r0 + 1) and their visible table ranges
    let r0 = (lid / CG) * 2u;
    let c = lid % CG;
    var qoff = vec2<u32>(0u);
    var qend = vec2<u32>(0u);
    for (var x = 0u; x < 2u; x++) {
        if (r0 + x < nt) {
            let tok = t0 + r0 + x;
            qoff[x] = A[P.c.x + 2u * tok];
            qend[x] = qoff[x] + (A[P.c.x + 2u * tok + 1u] & 0x7fffffffu);
        }
    }
    // P.V rows (v0 .. v0 + 3) and first word
    let v0 = (lid / TW) * 4u;
    let wc = lid % TW;
    for (var i = lid; i < BQ * dk2; i += WG) {
        let rr = i / dk2;
        let w = i % dk2;
        var qv = vec2<f32>(0.0);
        if (rr < nt) {
            let qi = (t0 + rr) * P.b.x + h * P.a.z + 2u * w;
            qv = vec2<f32>(Q[qi], Q[qi + 1u]);
        }
        qs[rr * QS + w] = qv;
    }
    if (lid < BQ) {
        rm[lid] = MASKED;
        rl[lid] = 0.0;
    }
//@ACC_DECL
    let kb = kvh * dk2;
    let vb = kvh * dv2;
    for (var j0 = lo; j0 < hi; j0 += BK) {
        workgroupBarrier();
        if (lid < BK) {
            var cell = 0u;
            if (j0 + lid < hi) { cell = A[j0 + lid]; }
            cl[lid] = cell;
        }
        workgroupBarrier();
        for (var i = lid; i < BK * dk2; i += WG) {
            let jj = i / dk2;
            let w = i % dk2;
            kv[jj * KS + w] = unpack2x16float(K[cl[jj] * P.b.y + kb + w]);
        }
        workgroupBarrier();
        // (unrolled by the host: every register index is a constant)
//@SCORE_DECL
        for (var w = 0u; w < dk2; w++) {
            let qa = qs[r0 * QS + w];
            let qb = qs[(r0 + 1u) * QS + w];
//@SCORE_FMA
        }
//@SCORE_PUT
        workgroupBarrier();
        // Every K read is done: V of the same cells goes where K was.
        for (var i = lid; i < BK * dv2; i += WG) {
            let jj = i / dv2;
            let w = i % dv2;
            kv[jj * KS + w] = unpack2x16float(V[cl[jj] * P.b.z + vb + w]);
        }
        // Running max and sum of each query row, scores turned into probabilities.
        if (lid < BQ) {
            let m = rm[lid];
            var mx = m;
            for (var jj = 0u; jj < BK; jj++) { mx = max(mx, ss_get(jj * BQ + lid)); }
            var sum = 0.0;
            for (var jj = 0u; jj < BK; jj++) {
                let sv = ss_get(jj * BQ + lid);
                var p = 0.0;
                if (sv > -1.0e38) { p = exp(sv - mx); }
                sum += p;
                ss_set(jj * BQ + lid, p);
            }
            let corr = exp(m - mx);
            rc[lid] = corr;
            rl[lid] = rl[lid] * corr + sum;
            rm[lid] = mx;
        }
        workgroupBarrier();
        let corr = vec4<f32>(rc[v0], rc[v0 + 1u], rc[v0 + 2u], rc[v0 + 3u]);
//@CORR
        let n_in = min(BK, hi - j0);
        for (var jj = 0u; jj < n_in; jj++) {
            let p = ss[(jj * BQ + v0) / 4u];
//@PV
        }
    }
    workgroupBarrier();
    for (var x = 0u; x < 4u; x++) {
        let r = v0 + x;
        if (r < nt) {
//@PICK
            let l = rl[r];
            var inv = 0.0;
            if (l != 0.0) { inv = 1.0 / l; }
            let ob = (t0 + r) * P.b.w + h * P.a.w;
//@OUT
        }
    }
}
"#;

/// Prefill attention on cooperative matrices (tensor cores; the devices `MATMUL_COOP` runs
/// on): a workgroup of four subgroups takes a block of up to 32 consecutive query tokens of one
/// sequence and one head, the block's visible cells 64 at a time (K, then V, staged in shared
/// memory as f16). S = Q K^T and O += P V are 16 x 16 x 16 matrix products (f16 in, f32
/// accumulated); subgroup sg owns query rows 16 (sg % 2) and half the cells of S and half the
/// dims of O (sg / 2). WGSL cannot rescale an accumulator, so the softmax takes two passes:
/// the first computes each query's maximum score, the second P = exp(s - max) (masked by the
/// query's own visible range, as `ATTN_TILE`) and its sum, and O accumulates unscaled; the
/// scores are computed twice (tensor-core work, which is cheap next to the staging). Q and P
/// are rounded to f16 for the products (K and V are f16 already). Head dims of K and V equal
/// and DMAX (64 or 128: larger ones do not fit 48 KiB of shared memory). Parameters and
/// bindings as `ATTN_TILE` (the Aux arena named T: A is a matrix role). Grid (n_head, blocks).
const ATTN_COOP: &str = r#"
@group(0) @binding(1) var<storage, read> Q: array<f32>;
@group(0) @binding(2) var<storage, read> K: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> V: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> T: array<u32>; // the Aux arena
@group(0) @binding(5) var<storage, read_write> O: array<f32>;
const BQ: u32 = 32u;
const BK: u32 = 64u;
const DW: u32 = DMAX / 2u; // words of a K or V row
const DQ: u32 = DMAX / 8u; // and 16-byte quads
const NL: u32 = BK * DQ / 128u; // quads a thread stages
// Row strides in halves, padded by 8 so that the rows a matrix load reads fall in other banks.
const LDQ: u32 = DMAX + 8u;
const LDP: u32 = BK + 8u;
const MASKED: f32 = -3.0e38;
var<workgroup> qs: array<f16, BQ * LDQ>; // [query][dim]
var<workgroup> kv: array<f16, BK * LDQ>; // [cell][dim]: K, then V
var<workgroup> ss: array<f32, BK * BQ>; // scores, [cell][query]
var<workgroup> ps: array<f16, BQ * LDP>; // probabilities, [query][cell]
var<workgroup> cs: array<f32, 4u * 256u>; // per subgroup: one 16 x 16 output block
var<workgroup> cl: array<u32, BK>;
var<workgroup> qr: array<vec2<u32>, BQ>; // each query's visible table positions [x, y)
var<workgroup> rm: array<f32, BQ>;
var<workgroup> rl: array<f32, BQ>;

// Quad w of cell jj's row into the staging tile as f16.
fn stage(jj: u32, w: u32, v: vec4<u32>) {
    let o = jj * LDQ + 8u * w;
    for (var e = 0u; e < 4u; e++) {
        let h = unpack2x16float(v[e]);
        kv[o + 2u * e] = f16(h.x);
        kv[o + 2u * e + 1u] = f16(h.y);
    }
}

fn score(d: f32) -> f32 {
    if (P.f.y != 0.0) {
        return P.f.y * tanh(d * (P.f.x / P.f.y));
    }
    return d * P.f.x;
}

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let h = g.x;
    let bo = P.c.y + 4u * g.y;
    let t0 = T[bo];
    let nt = T[bo + 1u];
    let lo = T[bo + 2u];
    let hi = T[bo + 3u];
    let kvh = h / P.a.y;
    let kb = kvh * DQ;
    let sq = (sg % 2u) * 16u; // this subgroup's query rows
    let half = sg / 2u; // and its half of the block's cells (S) and of the dims (O)
    for (var i = lid; i < BQ * DW; i += 128u) {
        let r = i / DW;
        let w = i % DW;
        var v = vec2<f32>(0.0);
        if (r < nt) {
            let qi = (t0 + r) * P.b.x + h * DMAX + 2u * w;
            v = vec2<f32>(Q[qi], Q[qi + 1u]);
        }
        qs[r * LDQ + 2u * w] = f16(v.x);
        qs[r * LDQ + 2u * w + 1u] = f16(v.y);
    }
    if (lid < BQ) {
        var rg = vec2<u32>(0u);
        if (lid < nt) {
            let tok = t0 + lid;
            let off = T[P.c.x + 2u * tok];
            rg = vec2<u32>(off, off + (T[P.c.x + 2u * tok + 1u] & 0x7fffffffu));
        }
        qr[lid] = rg;
        rm[lid] = MASKED;
        rl[lid] = 0.0;
    }
//@O_DECL
    for (var sweep = 0u; sweep < 2u; sweep++) {
        for (var j0 = lo; j0 < hi; j0 += BK) {
            workgroupBarrier();
            if (lid < BK) {
                var cell = 0u;
                if (j0 + lid < hi) { cell = T[j0 + lid]; }
                cl[lid] = cell;
            }
            workgroupBarrier();
            // Every load issued before the first is used (one at a time, the staging waited
            // on memory latency NL times an iteration).
            var st: array<vec4<u32>, NL>;
            for (var q = 0u; q < NL; q++) {
                let i = lid + 128u * q;
                st[q] = K[cl[i / DQ] * (P.b.y / 4u) + kb + i % DQ];
            }
            for (var q = 0u; q < NL; q++) {
                let i = lid + 128u * q;
                stage(i / DQ, i % DQ, st[q]);
            }
            workgroupBarrier();
            var s0 = coop_mat16x16<f32, C>();
            var s1 = coop_mat16x16<f32, C>();
            for (var kk = 0u; kk < DMAX; kk += 16u) {
                let a = coopLoadT<coop_mat16x16<f16, A>>(&qs[sq * LDQ + kk], LDQ);
                let b0 = coopLoad<coop_mat16x16<f16, B>>(&kv[(32u * half) * LDQ + kk], LDQ);
                let b1 = coopLoad<coop_mat16x16<f16, B>>(&kv[(32u * half + 16u) * LDQ + kk], LDQ);
                s0 = coopMultiplyAdd(a, b0, s0);
                s1 = coopMultiplyAdd(a, b1, s1);
            }
            coopStore(s0, &ss[(32u * half) * BQ + sq], BQ);
            coopStore(s1, &ss[(32u * half + 16u) * BQ + sq], BQ);
            workgroupBarrier();
            // Four threads a query row (adjacent lanes), 16 cells each (cells c, c + 4, ...).
            let r = lid / 4u;
            let c = lid % 4u;
            let rg = qr[r];
            if (sweep == 0u) {
                var mx = MASKED;
                for (var i = 0u; i < BK / 4u; i++) {
                    let jj = 4u * i + c;
                    let j = j0 + jj;
                    if (j >= rg.x && j < rg.y) { mx = max(mx, score(ss[jj * BQ + r])); }
                }
                mx = max(mx, subgroupShuffleXor(mx, 1u));
                mx = max(mx, subgroupShuffleXor(mx, 2u));
                if (c == 0u) { rm[r] = max(rm[r], mx); }
                continue;
            }
            // Every K read is done (the barrier after the scores): V of the same cells, its
            // loads in flight while the probabilities are computed.
            for (var q = 0u; q < NL; q++) {
                let i = lid + 128u * q;
                st[q] = V[cl[i / DQ] * (P.b.z / 4u) + kb + i % DQ];
            }
            let m = rm[r];
            var sum = 0.0;
            for (var i = 0u; i < BK / 4u; i++) {
                let jj = 4u * i + c;
                let j = j0 + jj;
                var pr = 0.0;
                if (j >= rg.x && j < rg.y) { pr = exp(score(ss[jj * BQ + r]) - m); }
                sum += pr;
                ps[r * LDP + jj] = f16(pr);
            }
            sum += subgroupShuffleXor(sum, 1u);
            sum += subgroupShuffleXor(sum, 2u);
            if (c == 0u) { rl[r] += sum; }
            for (var q = 0u; q < NL; q++) {
                let i = lid + 128u * q;
                stage(i / DQ, i % DQ, st[q]);
            }
            workgroupBarrier();
            for (var kk = 0u; kk < BK; kk += 16u) {
                let a = coopLoadT<coop_mat16x16<f16, A>>(&ps[sq * LDP + kk], LDP);
//@PV
            }
        }
    }
    workgroupBarrier();
//@OUT
}
"#;

/// One 16 x 16 output block `oJ` (dims 16 J of the subgroup's half) through its scratch:
/// normalized by the query's sum and written for the block's tokens.
const ATTN_COOP_OUT_ONE: &str = r#"    coopStore(oJ, &cs[sg * 256u], 16u);
    workgroupBarrier();
    for (var e = lane; e < 256u; e += 32u) {
        let r = sq + (e & 15u);
        let l = rl[r];
        if (r < nt && l != 0.0) {
            let d = half * (DMAX / 2u) + 16u * J + (e >> 4u);
            O[(t0 + r) * P.b.w + h * DMAX + d] = cs[sg * 256u + e] / l;
        }
    }
    workgroupBarrier();
"#;

/// `ATTN_COOP` for head dim `dmax` (64 or 128), with its `enable` directives.
pub(crate) fn attn_coop_source(dmax: u32) -> String {
    assert!(dmax == 64 || dmax == 128, "attn coop head dim {dmax}");
    let nj = dmax / 32; // output blocks a subgroup
    let mut decl = String::new();
    let mut pv = String::new();
    let mut out = String::new();
    for j in 0..nj {
        decl.push_str(&format!("    var o{j} = coop_mat16x16<f32, C>();\n"));
        pv.push_str(&format!(
            "                let b{j} = coopLoadT<coop_mat16x16<f16, B>>(&kv[kk * LDQ + half * (DMAX / 2u) + {}u], LDQ);\n                o{j} = coopMultiplyAdd(a, b{j}, o{j});\n",
            16 * j
        ));
        out.push_str(
            &ATTN_COOP_OUT_ONE
                .replace("oJ", &format!("o{j}"))
                .replace("16u * J", &format!("{}u", 16 * j)),
        );
    }
    let body = ATTN_COOP
        .replace("//@O_DECL\n", &decl)
        .replace("//@PV\n", &pv)
        .replace("//@OUT\n", &out);
    format!(
        "enable f16;\nenable wgpu_cooperative_matrix;\nconst DMAX: u32 = {dmax}u;\n{}",
        source(&body, 128, None)
    )
}

/// Shared memory of `ATTN_COOP` at head dim `dmax`, in bytes.
pub(crate) fn attn_coop_shared_bytes(dmax: u32) -> u32 {
    let (bq, bk) = (32, 64);
    2 * (bq + bk) * (dmax + 8) + 4 * bk * bq + 2 * bq * (bk + 8) + 4 * 4 * 256 + 4 * bk + 16 * bq
}

/// Rounds activations through the format the CPU backend quantizes them to before a matmul, so
/// that GPU and CPU products agree to f32 rounding. A workgroup takes 256 consecutive values
/// (whole blocks), one per thread; each block's extreme is found by a segmented tree.
/// mode 0: Q8_0/Q8_1 (32 values, d = amax/127 stored as f16, levels rounded half to even);
/// mode 2: f16 (block of 1). a = (n values, block size, mode, grid x). (Mode 1, Q8_K, is
/// `ACT_Q8K_WIDE`.)
pub(crate) const ACT_QUANT: &str = r#"
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> O: array<f32>;
var<workgroup> am: array<f32, 256>;
fn round_f16(x: f32) -> f32 { return unpack2x16float(pack2x16float(vec2<f32>(x, 0.0))).x; }
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (g.y * P.a.w + g.x) * 256u + lid;
    let live = i < P.a.x;
    var v = 0.0;
    if (live) { v = X[i]; }
    let bs = P.a.y;
    var o = 0.0;
    if (P.a.z == 2u) {
        o = round_f16(v);
    } else {
        am[lid] = abs(v);
        workgroupBarrier();
        for (var st = 128u; st > 0u; st >>= 1u) {
            if (st < bs && (lid % bs) < st) {
                let k = lid + st;
                am[lid] = max(am[lid], am[k]);
            }
            workgroupBarrier();
        }
        let lead = lid - lid % bs;
        let amax = am[lead];
        var id = 0.0;
        if (amax != 0.0) { id = 127.0 / amax; }
        o = clamp(round(v * id), -128.0, 127.0) * round_f16(amax / 127.0);
    }
    if (P.b.x == 0u) {
        if (live) { O[i] = o; }
        return;
    }
    // P.b.x = 1: f16, two a word (the host asks for it where the count is a multiple of 256).
    workgroupBarrier();
    am[lid] = o;
    workgroupBarrier();
    if (live && lid < 128u) {
        let h = pack2x16float(vec2<f32>(am[2u * lid], am[2u * lid + 1u]));
        O[(i - lid) / 2u + lid] = bitcast<f32>(h);
    }
}
"#;

/// Adds `matmul_cm2.comp`'s split-K partial products (`splits` slices of tokens x rows, row
/// stride rows, in S) into the output: token t's row r goes to O[t * stride + row0 + r], the
/// slices summed in order. a = (tokens * rows, rows, splits, grid x), b = (stride, row0, _, _).
const SPLIT_SUM: &str = r#"
@group(0) @binding(1) var<storage, read> S: array<f32>;
@group(0) @binding(2) var<storage, read_write> O: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (g.y * P.a.w + g.x) * 256u + lid;
    if (i >= P.a.x) { return; }
    var s = S[i];
    for (var z = 1u; z < P.a.z; z++) { s += S[z * P.a.x + i]; }
    O[(i / P.a.y) * P.b.x + P.b.y + i % P.a.y] = s;
}
"#;

/// `SPLIT_SUM`, or with `quads` four values a thread where rows, stride and row0 are multiples
/// of 4 (every product of the models): a quarter of the threads and index divisions, 16-byte
/// accesses (one value a thread, its 95 dispatches took 1.1 ms of an 8B prompt step on an
/// H200). The same sums in the same order; with `quads`, a = (quads, rows / 4, splits, grid x),
/// b = (stride / 4, row0 / 4, _, _).
pub(crate) fn split_sum_source(quads: bool) -> String {
    let body = if quads {
        SPLIT_SUM.replace("array<f32>", "array<vec4<f32>>")
    } else {
        SPLIT_SUM.to_string()
    };
    source(&body, 256, None)
}

/// The entry point `ACT_Q8K_WIDE` and `GLU_F16` share (after their bindings), with the shared
/// memory of `q8k_wide_round!` and how they share out a workgroup's eight 256-value blocks:
/// lane `s` of block `blk` (`live` where it exists) takes its eight values at quads `q0` and
/// `q0 + 1`; and the packing of eight values into four words of f16 pairs (what
/// `matmul_cm2.comp` reads), a module-scope function.
macro_rules! q8k_wide_main {
    () => {
        r#"var<workgroup> am: array<f32, 256>;
var<workgroup> av: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = lid % 32u; // this thread's eight values of its block
    let blk = (g.y * P.a.w + g.x) * 8u + lid / 32u;
    let live = blk * 256u < P.a.x;
    let q0 = blk * 64u + 2u * s; // first of its two quads
"#
    };
}

macro_rules! pack8_f16_fn {
    () => {
        r#"
fn pack8_f16(o: array<f32, 8>) -> vec4<u32> {
    return vec4<u32>(pack2x16float(vec2<f32>(o[0], o[1])), pack2x16float(vec2<f32>(o[2], o[3])),
        pack2x16float(vec2<f32>(o[4], o[5])), pack2x16float(vec2<f32>(o[6], o[7])));
}
"#
    };
}

/// The part `ACT_Q8K_WIDE` and `GLU_F16` share: a thread's eight values `v` of 256-value block
/// `blk` (its lane `s` of the block's 32; `live` where the block exists) rounded into `o`
/// through the block's scale, set by its first signed extreme (kept beside each partial
/// maximum in shared memory) as the CPU's Q8_K quantizer sets it.
macro_rules! q8k_wide_round {
    () => {
        r#"    var mx = 0.0;
    var mv = 0.0;
    for (var e = 0u; e < 8u; e++) {
        if (abs(v[e]) > mx) {
            mx = abs(v[e]);
            mv = v[e];
        }
    }
    am[lid] = mx;
    av[lid] = mv;
    workgroupBarrier();
    for (var st = 16u; st > 0u; st >>= 1u) {
        if (s < st) {
            let k = lid + st;
            if (am[k] > am[lid]) {
                am[lid] = am[k];
                av[lid] = av[k];
            }
        }
        workgroupBarrier();
    }
    if (!live) { return; }
    let lead = lid - s;
    var o = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    if (am[lead] != 0.0) {
        let iscale = -127.0 / av[lead];
        for (var e = 0u; e < 8u; e++) {
            o[e] = min(round(iscale * v[e]), 127.0) * (1.0 / iscale);
        }
    }
"#
    };
}

/// `ACT_QUANT`'s Q8_K mode (same arithmetic: the first signed extreme of each 256-value block
/// sets the scale), eight values a thread and eight blocks a workgroup: the tree over a
/// block's extreme is 5 steps over 32 partial extremes instead of 8 over 256 values (the
/// one-value-a-thread kernel took ~50 us per 8B prompt matrix on an H200, run 36). Output as
/// f32 (b.x = 0) or packed f16 (b.x = 1, what `matmul_cm2.comp` reads). a = (values (a
/// multiple of 256), _, _, grid x).
pub(crate) const ACT_Q8K_WIDE: &str = concat!(
    r#"
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> O: array<vec4<u32>>;
"#,
    q8k_wide_main!(),
    r#"    var a = vec4<f32>(0.0);
    var b = vec4<f32>(0.0);
    if (live) {
        a = X[q0];
        b = X[q0 + 1u];
    }
    let v = array<f32, 8>(a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w);
"#,
    q8k_wide_round!(),
    r#"    if (P.b.x == 0u) {
        O[q0] = bitcast<vec4<u32>>(vec4<f32>(o[0], o[1], o[2], o[3]));
        O[q0 + 1u] = bitcast<vec4<u32>>(vec4<f32>(o[4], o[5], o[6], o[7]));
    } else {
        O[blk * 32u + s] = pack8_f16(o);
    }
}
"#,
    pack8_f16_fn!()
);

/// `GLU` fused with `ACT_Q8K_WIDE` on its output, for prompt rows whose products read f16
/// (`matmul_cm2.comp`): each thread computes eight consecutive values of `act(G) * U`, writes
/// them to O and rounds them through its block's Q8_K scale (the first signed extreme of the
/// block, as `ACT_Q8K_WIDE`, held beside the maximum in shared memory rather than read back
/// from O) into the packed f16 copy Q; with a.z = 1, Q is O in plain f16 (`cm2_q8k_inputs`
/// off). Eight 256-value blocks a workgroup. a = (values (a multiple of 256), kind, plain,
/// grid x).
pub(crate) const GLU_F16: &str = concat!(
    r#"
@group(0) @binding(1) var<storage, read> G: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> U: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> O: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> Q: array<vec4<u32>>;
"#,
    q8k_wide_main!(),
    r#"    var v = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    if (live) {
        let g0 = G[q0];
        let g1 = G[q0 + 1u];
        let u0 = U[q0];
        let u1 = U[q0 + 1u];
        let a = vec4<f32>(glu_elem(g0.x, u0.x, P.a.y), glu_elem(g0.y, u0.y, P.a.y),
            glu_elem(g0.z, u0.z, P.a.y), glu_elem(g0.w, u0.w, P.a.y));
        let b = vec4<f32>(glu_elem(g1.x, u1.x, P.a.y), glu_elem(g1.y, u1.y, P.a.y),
            glu_elem(g1.z, u1.z, P.a.y), glu_elem(g1.w, u1.w, P.a.y));
        O[q0] = a;
        O[q0 + 1u] = b;
        v = array<f32, 8>(a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w);
    }
    if (P.a.z != 0u) {
        // Plain f16 (no Q8_K rounding): uniform, so no thread leaves before a barrier.
        if (live) {
            Q[blk * 32u + s] = pack8_f16(v);
        }
        return;
    }
"#,
    q8k_wide_round!(),
    r#"    Q[blk * 32u + s] = pack8_f16(o);
}
"#,
    pack8_f16_fn!()
);

/// Assembles a kernel's source: the params block, the format's `deq` for weight kernels, the
/// body, with `WG` defined.
/// `ATTN_TILE` with its tile constants: BQ queries and BK cells per tile, head dims up to DMAX.
/// The per-thread register tiles (scores, V accumulators) are written out as scalar variables
/// with constant names, as the matmul kernels do (on an H100 the same speed as private arrays
/// indexed in loops at the 8B shape, run 15: 0.72 ms a layer both; SmolLM2 shape 0.20 vs
/// 0.23 ms).
pub(crate) fn attn_tile_source(wg: u32, bq: u32, bk: u32, dmax: u32) -> String {
    let sc = bq * bk / (wg * 2);
    let tw = wg * 4 / bq;
    let vw = dmax / 2 / tw;
    let mut acc_decl = String::new();
    let mut corr = String::new();
    let mut pv = String::new();
    let mut pick = String::from("            var a: array<vec2<f32>, VW>;\n");
    for i in 0..vw {
        pv.push_str(&format!(
            "            if (wc + {i}u * TW < dv2) {{\n                let vv = kv[jj * KS + wc + {i}u * TW];\n"
        ));
        for (x, comp) in ["x", "y", "z", "w"].iter().enumerate() {
            acc_decl.push_str(&format!("    var a{x}_{i} = vec2<f32>(0.0);\n"));
            corr.push_str(&format!("        a{x}_{i} *= corr.{comp};\n"));
            pv.push_str(&format!(
                "                a{x}_{i} = fma(vec2<f32>(p.{comp}), vv, a{x}_{i});\n"
            ));
        }
        pv.push_str("            }\n");
    }
    for x in 0..4 {
        pick.push_str(&format!("            if (x == {x}u) {{\n"));
        for i in 0..vw {
            pick.push_str(&format!("                a[{i}] = a{x}_{i};\n"));
        }
        pick.push_str("            }\n");
    }
    let out = "            for (var i = 0u; i < VW; i++) {\n                let w = wc + i * TW;\n                if (w < dv2) {\n                    O[ob + 2u * w] = a[i].x * inv;\n                    O[ob + 2u * w + 1u] = a[i].y * inv;\n                }\n            }\n";
    let mut sdecl = String::new();
    let mut sfma = String::new();
    let mut sput = String::new();
    for k in 0..sc {
        sdecl.push_str(&format!(
            "        var s0_{k} = 0.0;\n        var s1_{k} = 0.0;\n"
        ));
        sfma.push_str(&format!(
            "            {{\n                let kk = kv[(c + {k}u * CG) * KS + w];\n                s0_{k} = fma(qa.x, kk.x, fma(qa.y, kk.y, s0_{k}));\n                s1_{k} = fma(qb.x, kk.x, fma(qb.y, kk.y, s1_{k}));\n            }}\n"
        ));
        sput.push_str(&format!(
            "        score_put(c + {k}u * CG, j0, r0, qoff, qend, s0_{k}, s1_{k});\n"
        ));
    }
    let body = ATTN_TILE
        .replace("//@ACC_DECL\n", &acc_decl)
        .replace("//@SCORE_DECL\n", &sdecl)
        .replace("//@SCORE_FMA\n", &sfma)
        .replace("//@SCORE_PUT\n", &sput)
        .replace("//@CORR\n", &corr)
        .replace("//@PV\n", &pv)
        .replace("//@PICK\n", &pick)
        .replace("//@OUT\n", out);
    let body = format!(
        "const BQ: u32 = {bq}u;\nconst BK: u32 = {bk}u;\nconst DMAX: u32 = {dmax}u;\n{body}"
    );
    source(&body, wg, None)
}

/// Shared memory of `ATTN_TILE` in bytes.
pub(crate) fn attn_tile_shared_bytes(bq: u32, bk: u32, dmax: u32) -> u32 {
    4 * (bq * (dmax + 2) + bk * (dmax + 2) + bq * bk + bk + 3 * bq)
}

pub(crate) fn source(body: &str, wg: u32, fmt: Option<&Format>) -> String {
    let mut s = String::with_capacity(8192);
    s.push_str(PARAMS);
    s.push_str(&format!("const WG: u32 = {wg}u;\n"));
    // The weight binding must be declared before the helpers that read it.
    let first = [body.find("fn "), body.find("@compute")]
        .into_iter()
        .flatten()
        .min();
    let (decl, rest) = match first {
        Some(i) if fmt.is_some() => body.split_at(i),
        _ => (body, ""),
    };
    s.push_str(decl);
    if let Some(f) = fmt {
        s.push_str(DEQ_COMMON);
        s.push_str(f.wgsl);
    }
    s.push_str(rest);
    s
}

/// Quantizes activations to Q8_K exactly as the CPU backend's `quantize_row_q8_K` does (scale
/// -127/max of the first signed extreme, levels rounded half to even and capped at 127) and
/// stores them packed, four int8 per word, followed by one f32 `d` per 256 values, for the
/// integer-dot matrix-vector kernels. One workgroup per 256-value block.
/// a = (n values, _, _, grid x).
const ACT_Q8K: &str = r#"
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> Q: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let blk = g.y * P.a.w + g.x;
    if (blk * 256u >= P.a.x) { return; }
    q8k_block(lid, X[blk * 256u + lid], blk, P.a.x / 4u);
}
"#;

/// `ACT_Q8K`'s source with `q8k_block`.
pub(crate) fn act_q8k_source() -> String {
    let mut s = String::from(PARAMS);
    s.push_str(ACT_Q8K);
    push_q8k_block(&mut s);
    s
}

/// Matrix-vector product for decode on K-quant weights and Q8_K activations (`ACT_Q8K`), with
/// integer dot products as the CPU's `vec_dot_q*_K_q8_K`: every 16- or 32-element sub-block
/// sums exactly in integers and only the per-unit scaling is float, so results agree with the
/// CPU to f32 rounding of a few terms per block. A workgroup computes NR * WG / TPR rows: each
/// group of TPR threads owns NR rows and walks their units (16- or 32-byte runs of quants), so
/// that consecutive threads read consecutive memory, every thread keeps NR weight loads in
/// flight and each activation load serves NR rows; the partials are then reduced (`Q8kReduce`).
/// The per-row statements (`ROWS_*`) and the reduction are generated by `source_q8k`.
/// a = (rows, blocks per row, cols, out row stride)
/// b = (out column offset, scale word offset, word offset of the activation scales, grid x)
pub(crate) const MATVEC_Q8K: &str = r#"
@group(0) @binding(1) var<storage, read> W: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> X: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
var<workgroup> red: array<f32, NR * WG>;
fn wword(i: u32) -> u32 { return W[i >> 2u][i & 3u]; }
fn xword(i: u32) -> u32 { return X[i >> 2u][i & 3u]; }

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let lane = lid % TPR;
    let row0 = ((g.y * P.b.w + g.x) * (WG / TPR) + lid / TPR) * NR;
    let tok = g.z;
    let rows = P.a.x;
    let nblk = P.a.y;
    // The rows written out so that accumulators and row offsets stay in registers whatever
    // the driver's unrolling. Rows past the end re-read the last row (in bounds, results
    // dropped): no branch per unit.
ROWS_DECL
    let nu = nblk * UPB;
    let xb = tok * nblk;
    for (var u = lane; u < nu; u += TPR) {
        let b = u / UPB;
        let v = u % UPB;
        let dy = bitcast<f32>(xword(P.b.z + xb + b));
        let xs = xload(v, (xb + b) * 16u);
ROWS_STEP
    }
REDUCE
}
"#;

/// How an integer-dot matrix-vector kernel reduces the partial sums of a row group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Q8kReduce {
    /// A shared-memory tree (any subgroup size).
    Shared,
    /// The row group is exactly one subgroup of this size (fixed, made of consecutive
    /// invocations): `subgroupAdd`, no barriers.
    Subgroup(u32),
    /// The row group spans several subgroups of this size: `subgroupAdd` in each, then one
    /// barrier and a sum of the per-subgroup totals from shared memory.
    SubgroupShared(u32),
}

/// `dot4`: the signed 8-bit dot product of two packed words, through the WGSL built-in or, for
/// Metal (where naga emulates it slowly) and as a portable fallback, by unpacking.
pub(crate) const DOT4_PACKED: &str = r#"
fn dot4(a: u32, b: u32) -> i32 { return dot4I8Packed(a, b); }
"#;
/// 16-element dot and sum of packed int8 words (static components: no indexing).
pub(crate) const DOT16: &str = r#"
fn dot16(a: vec4<u32>, b: vec4<u32>) -> i32 {
    return dot4(a.x, b.x) + dot4(a.y, b.y) + dot4(a.z, b.z) + dot4(a.w, b.w);
}
fn sum16(b: vec4<u32>) -> i32 {
    let one = 0x01010101u;
    return dot4(one, b.x) + dot4(one, b.y) + dot4(one, b.z) + dot4(one, b.w);
}
"#;
pub(crate) const DOT4_UNPACKED: &str = r#"
fn i8x4i(w: u32) -> vec4<i32> {
    return vec4<i32>(bitcast<i32>(w << 24u) >> 24u, bitcast<i32>(w << 16u) >> 24u,
                     bitcast<i32>(w << 8u) >> 24u, bitcast<i32>(w) >> 24u);
}
fn dot4(a: u32, b: u32) -> i32 { return dot(i8x4i(a), i8x4i(b)); }
"#;

/// Q4_K unit: group j of the block (eight body words, 32 bytes), whose low nibbles are the 32
/// elements of sub-block 2j and high nibbles the 32 of sub-block 2j+1; returns the block-local
/// sum before the activation scale. Header words as `Scale::KHeader`.
pub(crate) const UNIT_Q4_K: &str = r#"
const UPB: u32 = 4u;
fn xload(j: u32, xv: u32) -> array<vec4<u32>, 4> {
    let o = xv + 4u * j;
    return array<vec4<u32>, 4>(X[o], X[o + 1u], X[o + 2u], X[o + 3u]);
}
fn unit(blk: u32, j: u32, xs: array<vec4<u32>, 4>) -> f32 {
    let w0 = W[blk * 8u + 2u * j];
    let w1 = W[blk * 8u + 2u * j + 1u];
    let h = P.b.y + 5u * blk;
    let dm = unpack2x16float(wword(h));
    let sh = 8u * ((2u * j) & 3u);
    let scw = wword(h + 1u + (j >> 1u)) >> sh;
    let mnw = wword(h + 3u + (j >> 1u)) >> sh;
    let lo = vec4<u32>(0x0F0F0F0Fu);
    let il = dot16(w0 & lo, xs[0]) + dot16(w1 & lo, xs[1]);
    let ih = dot16((w0 >> vec4<u32>(4u)) & lo, xs[2]) + dot16((w1 >> vec4<u32>(4u)) & lo, xs[3]);
    let sl = sum16(xs[0]) + sum16(xs[1]);
    let shi = sum16(xs[2]) + sum16(xs[3]);
    let s = i32(scw & 0xFFu) * il + i32((scw >> 8u) & 0xFFu) * ih;
    let m = i32(mnw & 0xFFu) * sl + i32((mnw >> 8u) & 0xFFu) * shi;
    return dm.x * f32(s) - dm.y * f32(m);
}
"#;

/// Q6_K unit: half n of the block (128 elements), 16-byte half h of its low-nibble and high-bit
/// rows: 64 elements in four 16-element sub-blocks, each with its own int8 scale (ggml's
/// `dequantize_row_q6_K` order). Body: 52 words (13 vec4), d in the half-scale region.
pub(crate) const UNIT_Q6_K: &str = r#"
const UPB: u32 = 4u;
fn xload(v: u32, xv: u32) -> array<vec4<u32>, 4> {
    let o = xv + 8u * (v >> 1u) + (v & 1u);
    return array<vec4<u32>, 4>(X[o], X[o + 2u], X[o + 4u], X[o + 6u]);
}
fn unit(blk: u32, v: u32, xs: array<vec4<u32>, 4>) -> f32 {
    let n = v >> 1u;
    let h = v & 1u;
    let base = blk * 13u;
    let qa = W[base + 4u * n + h];
    let qb = W[base + 4u * n + h + 2u];
    let qh = W[base + 8u + 2u * n + h];
    let scv = W[base + 12u];
    let di = P.b.y + (blk >> 1u);
    let dw = unpack2x16float(wword(di))[blk & 1u];
    // Sub-block i (0..3): nibbles of qa (i even) or qb (i odd), low (i < 2) or high, and
    // crumb i of qh; int8 scale 8n + h + 2i.
    let lo = vec4<u32>(0x0F0F0F0Fu);
    let cr = vec4<u32>(0x03030303u);
    let q0 = (qa & lo) | ((qh & cr) << vec4<u32>(4u));
    let q1 = (qb & lo) | (((qh >> vec4<u32>(2u)) & cr) << vec4<u32>(4u));
    let q2 = ((qa >> vec4<u32>(4u)) & lo) | (((qh >> vec4<u32>(4u)) & cr) << vec4<u32>(4u));
    let q3 = ((qb >> vec4<u32>(4u)) & lo) | (((qh >> vec4<u32>(6u)) & cr) << vec4<u32>(4u));
    let si = 8u * n + h;
    let sw = scv[si >> 2u] >> (8u * (si & 3u));
    let sw2 = scv[(si >> 2u) + 1u] >> (8u * (si & 3u));
    let sc0 = bitcast<i32>(sw << 24u) >> 24u;
    let sc1 = bitcast<i32>(sw << 8u) >> 24u;
    let sc2 = bitcast<i32>(sw2 << 24u) >> 24u;
    let sc3 = bitcast<i32>(sw2 << 8u) >> 24u;
    let tot = sc0 * (dot16(q0, xs[0]) - 32 * sum16(xs[0]))
        + sc1 * (dot16(q1, xs[1]) - 32 * sum16(xs[1]))
        + sc2 * (dot16(q2, xs[2]) - 32 * sum16(xs[2]))
        + sc3 * (dot16(q3, xs[3]) - 32 * sum16(xs[3]));
    return dw * f32(tot);
}
"#;

/// A measurement stand-in for a unit (`ORCHARD_GPU_Q8K_PROBE`): the Q4_K unit's loads with
/// almost no arithmetic, to tell memory-bound from instruction-bound. Results are meaningless.
pub(crate) const UNIT_PROBE: &str = r#"
const UPB: u32 = 8u;
fn xload(v: u32, xv: u32) -> array<vec4<u32>, 4> {
    let o = xv + 4u * (v >> 1u) + (v & 1u);
    return array<vec4<u32>, 4>(X[o], X[o + 2u], vec4<u32>(), vec4<u32>());
}
fn unit(blk: u32, v: u32, xs: array<vec4<u32>, 4>) -> f32 {
    let w = W[blk * 8u + v] ^ xs[0] ^ xs[1];
    return f32(w.x ^ w.y ^ w.z ^ w.w);
}
"#;

/// Assembles an integer-dot matrix-vector kernel (`MATVEC_Q8K`) for `unit` (`UNIT_Q4_K`,
/// `UNIT_Q6_K`): workgroups of `wg` threads, `tpr` threads per group of `nr` rows (1, 2, 4 or
/// 8; `nr <= tpr`), `packed` selecting `dot4I8Packed` or its unpacked twin, `reduce` the
/// reduction; with `acc`, each output is also added into binding 4 (`R += O`: the residual
/// add after the attention output and FFN down products).
pub(crate) fn source_q8k(
    unit: &str,
    wg: u32,
    tpr: u32,
    nr: u32,
    packed: bool,
    reduce: Q8kReduce,
    acc: bool,
) -> String {
    let mut s = q8k_head(wg, tpr, nr, packed);
    let (decl, step, mut red) = q8k_parts(nr, reduce);
    if acc {
        // `MatVecQ8KAdd`: every output value also added into R (the residual stream).
        let base = "tok * P.a.w + P.b.x + row0 + ";
        for idx in ["lane", "0u", "1u", "2u", "3u", "4u", "5u", "6u", "7u"] {
            for val in ["red[lane * WG + lid - lane]", "t"] {
                red = red.replace(
                    &format!("O[{base}{idx}] = {val};"),
                    &format!("put({base}{idx}, {val});"),
                );
            }
        }
        assert!(!red.contains("O["), "every store rewritten");
        s.push_str(
            "@group(0) @binding(4) var<storage, read_write> R: array<f32>;
fn put(i: u32, t: f32) { O[i] = t; R[i] = R[i] + t; }
",
        );
    }
    s.push_str(
        &MATVEC_Q8K
            .replace("ROWS_DECL\n", &decl)
            .replace("ROWS_STEP\n", &step)
            .replace("REDUCE\n", &red),
    );
    s.push_str(if packed { DOT4_PACKED } else { DOT4_UNPACKED });
    s.push_str(DOT16);
    s.push_str(unit);
    s
}

fn q8k_head(wg: u32, tpr: u32, nr: u32, packed: bool) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(8192);
    if packed {
        // A language extension: the directive must precede every declaration.
        s.push_str("requires packed_4x8_integer_dot_product;\n");
    }
    s.push_str(PARAMS);
    let _ = writeln!(
        s,
        "const WG: u32 = {wg}u;\nconst TPR: u32 = {tpr}u;\nconst NR: u32 = {nr}u;"
    );
    s
}

/// `MATVEC_Q8K` over two or three matrices of the same format and row length that read the
/// same Q8_K activations (Q/K/V or gate/up products of one input), in one dispatch: the
/// workgroups of matrix 0 come first, then those of matrix 1 (and 2), each running
/// `MATVEC_Q8K`'s body on its own weight and output bindings (W0.., O0..).
/// a = (scale word offset of matrix 0, blocks per row, of matrix 1, of matrix 2),
/// b = (0, _, word offset of the activation scales, grid x), c = (rows of matrix 0, 1, 2, _).
pub(crate) fn source_q8k_multi(
    unit: &str,
    wg: u32,
    tpr: u32,
    nr: u32,
    packed: bool,
    reduce: Q8kReduce,
    m: u32,
) -> String {
    use std::fmt::Write;
    assert!((2..=3).contains(&m));
    let mut s = q8k_head(wg, tpr, nr, packed);
    for i in 0..m {
        let _ = writeln!(
            s,
            "@group(0) @binding({}) var<storage, read> W{i}: array<vec4<u32>>;",
            1 + i
        );
        let _ = writeln!(
            s,
            "@group(0) @binding({}) var<storage, read_write> O{i}: array<f32>;",
            2 + m + i
        );
        let _ = writeln!(
            s,
            "fn wword{i}(i: u32) -> u32 {{ return W{i}[i >> 2u][i & 3u]; }}"
        );
    }
    let _ = writeln!(
        s,
        "@group(0) @binding({}) var<storage, read> X: array<vec4<u32>>;",
        1 + m
    );
    s.push_str(
        "var<workgroup> red: array<f32, NR * WG>;
fn xword(i: u32) -> u32 { return X[i >> 2u][i & 3u]; }
",
    );
    let (decl, step, red) = q8k_parts(nr, reduce);
    let body0 = MATVEC_Q8K
        .split_once("fn main(")
        .and_then(|(_, b)| b.split_once("{\n"))
        .map(|(_, b)| b)
        .expect("MATVEC_Q8K main");
    let body0 = &body0[..body0.rfind('}').expect("main's end")];
    let body0 = body0
        .replace("ROWS_DECL\n", &decl)
        .replace("ROWS_STEP\n", &step)
        .replace("REDUCE\n", &red)
        .replace("(g.y * P.b.w + g.x)", "lg");
    let rows = ["P.c.x", "P.c.y", "P.c.z"];
    let scale = ["P.a.x", "P.a.z", "P.a.w"];
    s.push_str(
        "@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let gid = g.y * P.b.w + g.x;
    let rpg = (WG / TPR) * NR;
    let g0 = (P.c.x + rpg - 1u) / rpg;
    let g1 = g0 + (P.c.y + rpg - 1u) / rpg;
",
    );
    for i in 0..m {
        let cond = match i {
            0 => "if (gid < g0) {\n        let lg = gid;\n".to_string(),
            1 if m == 2 => "} else {\n        let lg = gid - g0;\n".to_string(),
            1 => "} else if (gid < g1) {\n        let lg = gid - g0;\n".to_string(),
            _ => "} else {\n        let lg = gid - g1;\n".to_string(),
        };
        s.push_str("    ");
        s.push_str(&cond);
        let body = body0
            .replace("P.a.x", rows[i as usize])
            .replace("P.a.w", rows[i as usize])
            .replace("unit(", &format!("unit{i}("))
            .replace("O[", &format!("O{i}["));
        for line in body.lines() {
            let _ = writeln!(s, "    {line}");
        }
    }
    s.push_str("    }\n}\n");
    s.push_str(if packed { DOT4_PACKED } else { DOT4_UNPACKED });
    s.push_str(DOT16);
    let (common, func) = unit.split_at(unit.find("fn unit(").expect("unit function"));
    s.push_str(common);
    for i in 0..m {
        s.push_str(
            &func
                .replace("fn unit(", &format!("fn unit{i}("))
                .replace("W[", &format!("W{i}["))
                .replace("wword(", &format!("wword{i}("))
                .replace("P.b.y", scale[i as usize]),
        );
    }
    s
}

/// The generated statements of `MATVEC_Q8K`: row declarations, the per-unit step and the
/// reduction.
fn q8k_parts(nr: u32, reduce: Q8kReduce) -> (String, String, String) {
    use std::fmt::Write;
    // Accumulators: vectors of up to four rows (row r is component r % 4 of acc{r / 4}).
    let nacc = nr.div_ceil(4);
    let width = nr.min(4);
    let ty = if width == 1 {
        "f32".to_string()
    } else {
        format!("vec{width}<f32>")
    };
    let row = |r: u32| {
        if width == 1 {
            format!("acc{}", r / 4)
        } else {
            format!("acc{}.{}", r / 4, ["x", "y", "z", "w"][(r % 4) as usize])
        }
    };
    let mut decl = String::new();
    for r in 0..nr {
        let _ = writeln!(decl, "    let w{r} = min(row0 + {r}u, rows - 1u) * nblk;");
    }
    for a in 0..nacc {
        let _ = writeln!(decl, "    var acc{a} = {ty}(0.0);");
    }
    let mut step = String::new();
    for a in 0..nacc {
        let units: Vec<String> = (4 * a..(4 * a + width).min(nr))
            .map(|r| format!("unit(w{r} + b, v, xs)"))
            .collect();
        let _ = writeln!(step, "        acc{a} += dy * {ty}({});", units.join(", "));
    }
    let out = |r: &str| format!("O[tok * P.a.w + P.b.x + row0 + {r}]");
    let mut red = String::new();
    match reduce {
        Q8kReduce::Shared => {
            for r in 0..nr {
                let _ = writeln!(red, "    red[{r}u * WG + lid] = {};", row(r));
            }
            let _ = write!(
                red,
                "    workgroupBarrier();
    for (var st = TPR / 2u; st > 0u; st >>= 1u) {{
        if (lane < st) {{
            for (var r = 0u; r < NR; r++) {{ red[r * WG + lid] += red[r * WG + lid + st]; }}
        }}
        workgroupBarrier();
    }}
    if (lane < NR && row0 + lane < rows) {{
        {} = red[lane * WG + lid - lane];
    }}
",
                out("lane")
            );
        }
        Q8kReduce::Subgroup(_) => {
            for r in 0..nr {
                let _ = writeln!(
                    red,
                    "    {{ let t = subgroupAdd({}); if (lane == {r}u && row0 + {r}u < rows) {{ {} = t; }} }}",
                    row(r),
                    out(&format!("{r}u"))
                );
            }
        }
        Q8kReduce::SubgroupShared(sg) => {
            let _ = writeln!(red, "    let nsg = WG / {sg}u;");
            for r in 0..nr {
                let _ = writeln!(
                    red,
                    "    {{ let t = subgroupAdd({}); if (lid % {sg}u == 0u) {{ red[{r}u * nsg + lid / {sg}u] = t; }} }}",
                    row(r)
                );
            }
            let _ = write!(
                red,
                "    workgroupBarrier();
    if (lane < NR && row0 + lane < rows) {{
        let s0 = (lid - lane) / {sg}u;
        var t = 0.0;
        for (var i = 0u; i < TPR / {sg}u; i++) {{ t += red[lane * nsg + s0 + i]; }}
        {} = t;
    }}
",
                out("lane")
            );
        }
    }
    (decl, step, red)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchard_core::DType;

    /// lavapipe has no cooperative matrices, so the device tests never compile `MATMUL_COOP`:
    /// this parses, validates and translates it to SPIR-V with naga for every weight format
    /// (what wgpu does before handing it to the driver), so a syntax or typing error shows here.
    /// Tiles `coop_matmul_compiles_for_every_format` compiles: the default, its narrower twin,
    /// the smallest, and the variants `gpu_bench --coop-tiles` times on the card.
    const TESTED_COOP_TILES: [&str; 11] = [
        "128x128x64/4x2",
        "128x64x64/4x2",
        "128x64x32/4x2",
        "128x128x32/4x2/db",
        "128x128x32/2x2",
        "128x128x32/2x2/db",
        "128x128x32/2x2/dbs",
        "128x64x32/2x2",
        "128x128x64/2x2",
        "128x256x32/2x4",
        "256x128x32/4x2",
    ];

    #[test]
    fn coop_tiles_parse_print_and_validate() {
        for s in TESTED_COOP_TILES {
            let t: CoopTile = s.parse().expect("a tile");
            assert_eq!(t.to_string(), s);
        }
        let t: CoopTile = "128x128x32/2x2/db".parse().unwrap();
        assert_eq!((t.threads(), t.double), (128, true));
        assert_eq!(t.shared_bytes(), 2 * 256 * 40 * 2 + 4 * 1024);
        assert_eq!(t.narrower().map(|n| n.tn), Some(64));
        // corners of 8 tokens, a K step of 48, staging counts that do not divide
        for bad in [
            "128x64x32/2x8",
            "128x128x48/4x2",
            "64x64x32/4x4",
            "128x128/4x2",
            "1x2x3/1x1/x",
            "4294967295x128x32/4x2",
            "128x128x32/4294967295x2",
            "128x128x32/4x2/dbx",
            "128x128x32/4x2/db/db",
            "128x128x32/4x2/dbs/",
        ] {
            assert!(bad.parse::<CoopTile>().is_err(), "{bad}");
        }
    }

    /// Parses, validates and translates `src` to SPIR-V with naga (`what` names it in
    /// failures). ORCHARD_SPV_DUMP=DIR keeps the module (`DIR/name.spv`) and its source
    /// (`.wgsl`) for `spirv-val --target-env vulkan1.3`, which checks rules naga does not
    /// (Debian 13's spirv-tools runs here through bench/gpu/prepare-vulkan.sh's loader).
    fn naga_spirv(src: &str, what: &str, name: &str) -> Vec<u32> {
        let module = naga::front::wgsl::parse_str(src)
            .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(src)));
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        let opts = naga::back::spv::Options {
            lang_version: (1, 3),
            ..Default::default()
        };
        let words = naga::back::spv::write_vec(&module, &info, &opts, None)
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        assert!(words.len() > 100, "{what}: SPIR-V written");
        if let Ok(dir) = std::env::var("ORCHARD_SPV_DUMP") {
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            std::fs::write(format!("{dir}/{name}.spv"), bytes).expect("writes the module");
            std::fs::write(format!("{dir}/{name}.wgsl"), src).expect("writes the source");
        }
        words
    }

    /// The kernels that only a device with VK_NV_cooperative_matrix2 reaches (split-K sums
    /// folded into `ROPE_KV` and the add + norm, `SPLIT_SUM4`): valid WGSL with the bindings
    /// the host gives them. Their results are checked on such a device (`gpu_bench --logits`,
    /// the 8B model's logits against the CPU backend's).
    #[test]
    fn split_sum_kernels_compile() {
        let rope = rope_kv_source(true);
        assert!(rope.contains("@binding(8)") && rope.contains("V[vi] = v0;"));
        naga_spirv(&rope, "rope kv split", "rope-kv-split");
        naga_spirv(&rope_kv_source(false), "rope kv", "rope-kv");
        for f16 in [false, true] {
            let src = add_norm_split_source(f16);
            let last = if f16 { 6 } else { 5 };
            assert!(src.contains(&format!("@binding({last}) var<storage, read> S")));
            naga_spirv(&src, "add norm split", &format!("add-norm-split-{f16}"));
        }
        let quads = split_sum_source(true);
        assert_eq!(quads.matches("array<vec4<f32>>").count(), 2);
        naga_spirv(&quads, "split sum4", "split-sum4");
    }

    #[test]
    fn coop_attention_compiles() {
        for dmax in [64, 128] {
            let src = attn_coop_source(dmax);
            naga_spirv(
                &src,
                &format!("attn coop {dmax}"),
                &format!("attn-coop-{dmax}"),
            );
            assert!(attn_coop_shared_bytes(dmax) <= 48 * 1024, "{dmax}");
        }
    }

    #[test]
    fn coop_matmul_compiles_for_every_format() {
        for dt in [
            DType::F32,
            DType::F16,
            DType::Q4_0,
            DType::Q4_1,
            DType::Q5_0,
            DType::Q8_0,
            DType::Q4_K,
            DType::Q5_K,
            DType::Q6_K,
        ] {
            for tile in TESTED_COOP_TILES {
                let tile: CoopTile = tile.parse().expect("a tile");
                let fmt = crate::formats::format(dt);
                let src = coop_source(tile, fmt.as_ref());
                let name = format!("coop-{dt}-{}", tile.to_string().replace('/', "-"));
                naga_spirv(&src, &format!("{dt} {tile}"), &name);
            }
        }
    }
}
