#version 450
// Prompt attention on NVIDIA's VK_NV_cooperative_matrix2 (flash-style, one pass): a workgroup
// takes BR consecutive query tokens of one head and walks their visible cells BC at a time.
// S = Q K^T, the running row maximum M and sum L, P = exp(S - M) and O = O e^(Mold - M) + P V
// are all workgroup-scope matrices (row reductions and per-element callbacks of the extension),
// which WGSL cannot express: its subgroup matrices cannot be rescaled, so `ATTN_COOP` takes
// two passes over the cells. Compiled ahead of time by scripts/build-cm2.sh.
// Same bindings and parameters as ATTN_COOP:
//   binding 0: P: a = (heads, query heads a KV head, head dim K, head dim V),
//              b = (Q row stride, K words a cell, V words a cell, O row stride),
//              c = (arena offset of the per-token ranges, arena offset of the blocks,
//                   1 to write O in f16 to binding 6 as well),
//              f = (scale, softcap) as f32 bits
//   binding 1: Q, tokens x heads x D f32;  bindings 2, 3: the K and V caches, f16 rows a cell
//   binding 4: the Aux arena (cell tables, ranges, blocks);  binding 5: O, f32
//   binding 6: O in f16 (the input of the next cm2 product), where c.z says so
// Blocks are 4 words: first token, tokens, and the table positions [lo, hi) their queries
// see. The host sends a block here only when its table positions hold consecutive cells (a
// prompt's own cells: position j is cell T[lo] + j - lo), so K and V load as tensors; a query
// sees the positions of its own range (causal, sliding window), the rest masked to -inf.
// Defines: D (head dim of K and V), BR (queries), BC (cells a step).

#extension GL_EXT_control_flow_attributes : enable
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int32 : require
#extension GL_KHR_memory_scope_semantics : enable
#extension GL_KHR_cooperative_matrix : enable
#extension GL_NV_cooperative_matrix2 : enable

layout(local_size_x = 128, local_size_y = 1, local_size_z = 1) in;

layout(set = 0, binding = 0) uniform Params { uvec4 pv[4]; };
layout(set = 0, binding = 1) readonly buffer Qb { float q[]; };
layout(set = 0, binding = 2) readonly buffer Kb { float16_t kc[]; };
layout(set = 0, binding = 3) readonly buffer Vb { float16_t vc[]; };
layout(set = 0, binding = 4) readonly buffer Tb { uint t[]; };
layout(set = 0, binding = 5) buffer Ob { float o[]; };
layout(set = 0, binding = 6) buffer Fb { float16_t o16[]; };

// Each query row's visible table positions [x, y) (empty for rows past the block's tokens),
// and the largest x and smallest y of the block's rows: a step inside every row's range
// needs no mask.
shared uint sh_x[BR];
shared uint sh_y[BR];
shared uint sh_lim[2];

#define ACC coopmat<float, gl_ScopeWorkgroup, BR, BC, gl_MatrixUseAccumulator>
#define OUT coopmat<float, gl_ScopeWorkgroup, BR, D, gl_MatrixUseAccumulator>

float masked(const in uint r, const in uint c, const in float e, const in uint j0) {
    const uint j = j0 + c;
    return (j >= sh_x[r] && j < sh_y[r]) ? e : uintBitsToFloat(0xff800000u);
}

float softcap(const in uint r, const in uint c, const in float e, const in float cap) {
    return cap * tanh(e);
}

float expOf(const in uint r, const in uint c, const in float e) {
    return exp(e);
}

float maxOf(const in uint r, const in uint c, const in float a, const in float b) {
    return max(a, b);
}

float inverse(const in uint r, const in uint c, const in float l) {
    return l == 0.0 ? 0.0 : 1.0 / l;
}

float maxReduce(const in float a, const in float b) {
    return max(a, b);
}

// Spreads a row's value (every column holds it) over a matrix of other width.
float smear(const in float a, const in float b) {
    return a;
}

void main() {
    const uint h = gl_WorkGroupID.x;
    const uint bo = pv[2].y + 4u * gl_WorkGroupID.y;
    const uint t0 = t[bo];
    const uint nt = t[bo + 1u];
    const uint lo = t[bo + 2u];
    const uint hi = t[bo + 3u];
    const uint kvh = h / pv[0].y;
    const uint q_stride = pv[1].x;
    // Cell rows in halves: whole 16-byte quads (the host's K and V widths are multiples of 8).
    const uint k_stride = (2u * pv[1].y) & ~7u;
    const uint v_stride = (2u * pv[1].z) & ~7u;
    const uint o_stride = pv[1].w;
    const uint ranges = pv[2].x;
    const float scale = uintBitsToFloat(pv[3].x);
    const float cap = uintBitsToFloat(pv[3].y);
    const uint tid = gl_LocalInvocationIndex;

    if (tid == 0u) {
        sh_lim[0] = 0u;
        sh_lim[1] = 0xffffffffu;
    }
    barrier();
    if (tid < BR) {
        uint x = 0u;
        uint y = 0u;
        if (tid < nt) {
            const uint tok = t0 + tid;
            x = t[ranges + 2u * tok];
            y = x + (t[ranges + 2u * tok + 1u] & 0x7fffffffu);
            atomicMax(sh_lim[0], x);
            atomicMin(sh_lim[1], y);
        }
        sh_x[tid] = x;
        sh_y[tid] = y;
    }
    barrier();
    const uint max_x = sh_lim[0];
    const uint min_y = sh_lim[1];
    const uint c0 = t[lo];

    // Q rows past the block's tokens load as 0 and its stores skip them (clamped layouts).
    tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> lq =
        createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
    lq = setTensorLayoutDimensionNV(lq, t0 + nt, q_stride);
    lq = setTensorLayoutStrideNV(lq, q_stride, 1);
    tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> lo_ =
        createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
    lo_ = setTensorLayoutDimensionNV(lo_, t0 + nt, o_stride);
    lo_ = setTensorLayoutStrideNV(lo_, o_stride, 1);
    // K and V rows past the block's last cell load as 0 (masked, and 0 x 0 in P V).
    const uint c_end = c0 + (hi - lo);
    tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> lk =
        createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
    lk = setTensorLayoutDimensionNV(lk, c_end, k_stride);
    lk = setTensorLayoutStrideNV(lk, k_stride, 1);
    tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> lv =
        createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
    lv = setTensorLayoutDimensionNV(lv, c_end, v_stride);
    lv = setTensorLayoutStrideNV(lv, v_stride, 1);
    tensorViewNV<2, false, 1, 0> tr = createTensorViewNV(2, false, 1, 0);

    // Q scaled in f32 before its rounding to f16 (by scale / softcap under a softcap, which
    // then applies cap * tanh to the scores).
    OUT qf;
    coopMatLoadTensorNV(qf, q, 0, sliceTensorLayoutNV(lq, t0, BR, h * D, D));
    qf *= float(cap != 0.0 ? scale / cap : scale);
    const coopmat<float16_t, gl_ScopeWorkgroup, BR, D, gl_MatrixUseA> qa =
        coopmat<float16_t, gl_ScopeWorkgroup, BR, D, gl_MatrixUseA>(qf);

    OUT acc = OUT(0.0);
    // Finite start for M: a row with nothing visible yet keeps exp(-inf - M) = 0.
    ACC m = ACC(-1.0e30);
    ACC l = ACC(0.0);
    const coopmat<float16_t, gl_ScopeWorkgroup, BC, BC, gl_MatrixUseB> ones =
        coopmat<float16_t, gl_ScopeWorkgroup, BC, BC, gl_MatrixUseB>(1.0);

    [[dont_unroll]]
    for (uint j0 = lo; j0 < hi; j0 += BC) {
        const uint c = c0 + (j0 - lo);
        coopmat<float16_t, gl_ScopeWorkgroup, D, BC, gl_MatrixUseB> kt;
        coopMatLoadTensorNV(kt, kc, 0, sliceTensorLayoutNV(lk, c, BC, kvh * D, D), tr);
        ACC s = ACC(0.0);
        s = coopMatMulAdd(qa, kt, s);
        if (cap != 0.0) {
            coopMatPerElementNV(s, s, softcap, cap);
        }
        if (j0 < max_x || j0 + BC > min_y) {
            coopMatPerElementNV(s, s, masked, j0);
        }
        ACC rowmax;
        coopMatReduceNV(rowmax, s, gl_CooperativeMatrixReduceRowNV, maxReduce);
        const ACC m_old = m;
        coopMatPerElementNV(m, rowmax, maxOf, m_old);
        ACC p;
        coopMatPerElementNV(p, s - m, expOf);
        ACC em;
        coopMatPerElementNV(em, m_old - m, expOf);
        // P rounded to f16 for the products; its row sums taken from the same f16 values
        // (a product with ones), so that L sums exactly what O accumulated.
        const coopmat<float16_t, gl_ScopeWorkgroup, BR, BC, gl_MatrixUseA> pa =
            coopmat<float16_t, gl_ScopeWorkgroup, BR, BC, gl_MatrixUseA>(p);
        ACC rowsum = ACC(0.0);
        rowsum = coopMatMulAdd(pa, ones, rowsum);
        l = em * l + rowsum;
        coopmat<float16_t, gl_ScopeWorkgroup, BC, D, gl_MatrixUseB> vm;
        coopMatLoadTensorNV(vm, vc, 0, sliceTensorLayoutNV(lv, c, BC, kvh * D, D));
        OUT em_rows;
        coopMatReduceNV(em_rows, em, gl_CooperativeMatrixReduceRowNV, smear);
        acc *= em_rows;
        acc = coopMatMulAdd(pa, vm, acc);
    }

    OUT inv;
    coopMatReduceNV(inv, l, gl_CooperativeMatrixReduceRowNV, smear);
    coopMatPerElementNV(inv, inv, inverse);
    acc *= inv;
    coopMatStoreTensorNV(acc, o, 0, sliceTensorLayoutNV(lo_, t0, BR, h * D, D));
    if (pv[2].z != 0u) {
        const coopmat<float16_t, gl_ScopeWorkgroup, BR, D, gl_MatrixUseAccumulator> ah =
            coopmat<float16_t, gl_ScopeWorkgroup, BR, D, gl_MatrixUseAccumulator>(acc);
        coopMatStoreTensorNV(ah, o16, 0, sliceTensorLayoutNV(lo_, t0, BR, h * D, D));
    }
}
