#version 450
// Prompt matmul on NVIDIA's VK_NV_cooperative_matrix2: workgroup-scope cooperative matrices
// loaded through tensor layouts, K-quant blocks decoded by a callback as the driver stages them.
// WGSL has no way to express this (only subgroup-scope KHR matrices), so it is GLSL, compiled
// ahead of time by scripts/build-cm2.sh and loaded as passthrough SPIR-V; MATMUL_COOP stays the
// portable path. Same bindings and parameters as the WGSL matmuls:
//   binding 0: P (p[0] rows of this chunk, p[1] blocks a row, p[2] cols, p[3] output row stride,
//              p[4] first output row of the chunk, p[5] word offset of the scale region,
//              p[8] tokens, p[9] K blocks a split, p[10] output offset between splits)
//   binding 1: the weight chunk as uploaded (formats.rs: block bodies, then the scale region)
//   binding 2: activations, tokens x cols f16;  binding 3: output, tokens x p[3] f32
// Workgroup (x, y, z) computes rows x, tokens y over K split z: split-K gives products of few
// tiles enough workgroups (llama.cpp's rule), the partial sums then added by SPLIT_SUM.
// Defines: BM (weight rows), BN (tokens), BK (K step) of the tile; ACC_F16: f16 accumulators
// (llama.cpp's default for quantized products on this extension: half the accumulator
// registers, so a 128 x 256 tile fits, its decode spread over twice the tokens; the driver
// still gives it 255 registers a thread, one workgroup an SM, as the 128 x 128 f32 tile).
// FORMAT_Q6_K: Q6_K weights (d and the 16 int8 scales of a block staged as Q4_K's are; a first
// Q6_K version, glslc-unrolled with f32 accumulators, ran 0.72-0.94 ms on the 8B shapes on an
// H200 against MATMUL_COOP's 0.66-0.76, bench/gpu/results/run34); Q4_K otherwise.

#extension GL_EXT_control_flow_attributes : enable
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int32 : require
#extension GL_KHR_memory_scope_semantics : enable
#extension GL_KHR_cooperative_matrix : enable
#extension GL_NV_cooperative_matrix2 : enable
#extension GL_EXT_buffer_reference : enable

const uint WG = 256;
layout(local_size_x = 256, local_size_y = 1, local_size_z = 1) in;

layout(set = 0, binding = 0) uniform Params { uvec4 pv[4]; };

#ifdef ACC_F16
#define ACC_T float16_t
#else
#define ACC_T float
#endif

#ifdef FORMAT_Q6_K
// 208 bytes a block (formats.rs): low nibbles (128), high crumbs (64), 16 int8 scales; d, a
// half, in the scale region.
struct Body { uvec4 q[13]; };
layout(buffer_reference, std430, buffer_reference_align = 16) buffer BodyRef { uint q[52]; };
const uint SUBS = 16;   // scale groups a block: 16 elements each
#define SCALE_T float
#else
// 128 bytes of nibbles a block; the header (five words a block) is in the scale region.
struct Body { uvec4 q[8]; };
layout(buffer_reference, std430, buffer_reference_align = 16) buffer BodyRef { uint q[32]; };
const uint SUBS = 8;    // scale groups a block: 32 elements each
#define SCALE_T vec2
#endif

layout(set = 0, binding = 1) readonly buffer WBlocks { Body wb[]; };
layout(set = 0, binding = 1) readonly buffer WWords { uint ww[]; };
layout(set = 0, binding = 2) readonly buffer X { float16_t x[]; };
layout(set = 0, binding = 3) buffer Y { float y[]; };

// The K steps of a 256-wide block, as a specialization constant that is never set: glslc then
// cannot unroll the loop over them, and it reaches the driver as a loop with an unroll hint, as
// llama.cpp's does (its tile sizes are specialization constants). Unrolled by glslc, the
// driver's build of the 128 x 256 tile was 1.38 MB of machine code spilling 368 bytes a thread;
// now 0.17 MB spilling 96 (both 255 registers; llama.cpp's 0.40 MB, 253, none), and the 8B
// gate/up product runs 0.33-0.36 ms against 0.43-0.46 (llama.cpp's kernel in our harness:
// 0.315; H200, VK_KHR_pipeline_executable_properties, bench/gpu/results/run37).
layout(constant_id = 0) const uint K_STEPS = 256 / BK;

// Per tile row and scale group of the current 256-wide K block: (scale, min) with d folded in.
const uint SH_STRIDE = BM + 1;
shared SCALE_T sh_scale[SUBS * SH_STRIDE];

#ifdef FORMAT_Q6_K
float16_t decode(const in BodyRef bl, const in uint blockCoords[2], const in uint coordInBlock[2]) {
    const uint i = coordInBlock[1];
    const uint r = blockCoords[0] % BM;
    // Half n = i/128, quarter qr of it, lane l: low nibble at byte 64n + 32(qr & 1) + l (the
    // high nibble for qr >= 2), high crumb at bits 2qr of byte 128 + 32n + l, scale group i/16.
    const uint qr = (i >> 5) & 3u;
    const uint lb = ((i >> 7) << 6) | ((qr & 1u) << 5) | (i & 31u);
    const uint hb = 128u | ((i >> 7) << 5) | (i & 31u);
    const uint lo = (bl.q[lb >> 2] >> (((lb & 3u) << 3) | ((qr >> 1) << 2))) & 15u;
    const uint hi = (bl.q[hb >> 2] >> (((hb & 3u) << 3) | (qr << 1))) & 3u;
    return float16_t(sh_scale[(i >> 4) * SH_STRIDE + r] * float(int(lo | (hi << 4)) - 32));
}
#else
float16_t decode(const in BodyRef bl, const in uint blockCoords[2], const in uint coordInBlock[2]) {
    const uint i = coordInBlock[1];
    const uint r = blockCoords[0] % BM;
    // Group i/64 holds bytes 32(i/64) .. +32: low nibbles first 32 elements, high the next.
    const uint byte = ((i >> 6) << 5) | (i & 31u);
    const uint q = (bl.q[byte >> 2] >> (((byte & 3u) << 3) | (((i >> 5) & 1u) << 2))) & 15u;
    const vec2 sm = sh_scale[(i >> 5) * SH_STRIDE + r];
    return float16_t(sm.x * float(q) - sm.y);
}
#endif

// The scales of K block `kb` for this tile's rows, computed into registers (`fetch`) and
// stored to shared memory after the previous block's last use (`store`).
const uint TPR = WG / BM;            // threads a row
const uint SPT = SUBS / TPR;         // scale groups a thread
#ifdef FORMAT_Q6_K
// d's bits in the low half, then this thread's eight int8 scales: three words, not 8 floats.
uvec3 pending;

void fetch(uint row0, uint rows, uint bpr, uint kb) {
    const uint tid = gl_LocalInvocationIndex;
    const uint row = row0 + tid / TPR;
    if (row >= rows) {
        pending = uvec3(0);
        return;
    }
    const uint b = row * bpr + kb;
    const uint w = b * 52u + 48u + ((tid % TPR) * SPT >> 2);
    pending = uvec3(ww[pv[1].y + (b >> 1)] >> ((b & 1u) << 4), ww[w], ww[w + 1u]);
}

void store() {
    const uint tid = gl_LocalInvocationIndex;
    const uint r = tid / TPR;
    const uint s0 = (tid % TPR) * SPT;
    barrier();
    const float d = unpackHalf2x16(pending.x).x;
    [[unroll]] for (uint j = 0; j < SPT; j++) {
        const uint w = j < 4u ? pending.y : pending.z;
        const int sc = int(w << (24u - ((j & 3u) << 3))) >> 24;
        sh_scale[(s0 + j) * SH_STRIDE + r] = d * float(sc);
    }
    barrier();
}
#else
vec2 pending[SPT];

void fetch(uint row0, uint rows, uint bpr, uint kb) {
    const uint tid = gl_LocalInvocationIndex;
    const uint r = tid / TPR;
    const uint s0 = (tid % TPR) * SPT;
    const uint row = row0 + r;
    if (row >= rows) {
        [[unroll]] for (uint j = 0; j < SPT; j++) pending[j] = vec2(0.0);
        return;
    }
    const uint b = row * bpr + kb;
    const uint so = pv[1].y;
    const uint h = so + 5u * b;
    const vec2 dm = unpackHalf2x16(ww[h]);
    [[unroll]] for (uint j = 0; j < SPT; j++) {
        const uint is = s0 + j;
        const uint sh = 8u * (is & 3u);
        const float sc = float((ww[h + 1u + (is >> 2)] >> sh) & 0xFFu);
        const float m = float((ww[h + 3u + (is >> 2)] >> sh) & 0xFFu);
        pending[j] = vec2(dm.x * sc, dm.y * m);
    }
}

void store() {
    const uint tid = gl_LocalInvocationIndex;
    const uint r = tid / TPR;
    const uint s0 = (tid % TPR) * SPT;
    barrier();
    [[unroll]] for (uint j = 0; j < SPT; j++) sh_scale[(s0 + j) * SH_STRIDE + r] = pending[j];
    barrier();
}
#endif

void main() {
    const uint rows = pv[0].x;
    const uint bpr = pv[0].y;
    const uint cols = pv[0].z;
    const uint stride = pv[0].w;
    const uint row_off = pv[1].x;
    const uint n = pv[2].x;
    const uint ir = gl_WorkGroupID.x;
    const uint ic = gl_WorkGroupID.y;
    // This workgroup's K blocks [kb0, kb1) and where its (partial) products go.
    const uint kb0 = gl_WorkGroupID.z * pv[2].y;
    const uint kb1 = min(bpr, kb0 + pv[2].y);
    const uint out_off = row_off + gl_WorkGroupID.z * pv[2].z;

    tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> ld =
        createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
    ld = setTensorLayoutDimensionNV(ld, n, rows);
    ld = setTensorLayoutStrideNV(ld, stride, 1);
    tensorViewNV<2, false, 1, 0> tr = createTensorViewNV(2, false, 1, 0);

    coopmat<ACC_T, gl_ScopeWorkgroup, BM, BN, gl_MatrixUseAccumulator> acc =
        coopmat<ACC_T, gl_ScopeWorkgroup, BM, BN, gl_MatrixUseAccumulator>(ACC_T(0.0));

// One 256-wide K block: its scales to shared memory (the next block's fetched meanwhile),
// then 256 / BK products. LA / LB: the weight and activation layouts.
#define K_BLOCK(LA, LB)                                                                      \
    store();                                                                                 \
    if (kb + 1 < kb1) {                                                                      \
        fetch(ir * BM, rows, bpr, kb + 1);                                                   \
    }                                                                                        \
    [[unroll]] for (uint j = 0; j < K_STEPS; j++) {                                          \
        const uint k = kb * 256 + j * BK;                                                    \
        coopmat<float16_t, gl_ScopeWorkgroup, BM, BK, gl_MatrixUseA> a;                      \
        coopMatLoadTensorNV(a, wb, 0, sliceTensorLayoutNV(LA, ir * BM, BM, k, BK), decode);  \
        coopmat<float16_t, gl_ScopeWorkgroup, BK, BN, gl_MatrixUseB> b;                      \
        coopMatLoadTensorNV(b, x, 0, sliceTensorLayoutNV(LB, ic * BN, BN, k, BK), tr);       \
        acc = coopMatMulAdd(a, b, acc);                                                      \
    }

    fetch(ir * BM, rows, bpr, kb0);
    if ((ir + 1) * BM <= rows && (ic + 1) * BN <= n) {
        // Interior tile: no clamping, and the activation row stride (cols, a multiple of
        // 256 for these formats) shown to be a multiple of 8 so that loads can be 16 bytes.
        const uint sb = cols & ~7u;
        tensorLayoutNV<2> la = createTensorLayoutNV(2);
        la = setTensorLayoutBlockSizeNV(la, 1, 256);
        la = setTensorLayoutDimensionNV(la, rows, cols);
        la = setTensorLayoutStrideNV(la, bpr, 1);
        tensorLayoutNV<2> lb = createTensorLayoutNV(2);
        lb = setTensorLayoutDimensionNV(lb, n, cols);
        lb = setTensorLayoutStrideNV(lb, sb, 1);
        for (uint kb = kb0; kb < kb1; kb++) {
            K_BLOCK(la, lb)
        }
    } else {
        tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> la =
            createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
        la = setTensorLayoutBlockSizeNV(la, 1, 256);
        la = setTensorLayoutDimensionNV(la, rows, cols);
        la = setTensorLayoutStrideNV(la, bpr, 1);
        tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> lb =
            createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
        lb = setTensorLayoutDimensionNV(lb, n, cols);
        lb = setTensorLayoutStrideNV(lb, cols, 1);
        for (uint kb = kb0; kb < kb1; kb++) {
            K_BLOCK(la, lb)
        }
    }
    coopmat<float, gl_ScopeWorkgroup, BM, BN, gl_MatrixUseAccumulator> d =
        coopmat<float, gl_ScopeWorkgroup, BM, BN, gl_MatrixUseAccumulator>(acc);
    coopMatStoreTensorNV(d, y, out_off, sliceTensorLayoutNV(ld, ic * BN, BN, ir * BM, BM), tr);
}
