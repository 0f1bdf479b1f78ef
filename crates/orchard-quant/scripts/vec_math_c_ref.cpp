// Cross-check harness for orchard-backend's vec_math.rs: runs ggml-cpu's own element-wise and
// reduction kernels (vec.cpp: ggml_vec_silu_f32, ggml_vec_swiglu_f32, ggml_vec_soft_max_f32;
// vec.h: ggml_vec_mad_f16, ggml_vec_scale_f16; simd-gemm.h: simd_gemm) compiled as llama.cpp
// compiles them, on inputs the Rust test writes. Built and run by vec_math_c_crosscheck.sh.
//
// Usage: vec_math_c_ref DIR N
//   reads  DIR/x.f32, DIR/g.f32     N floats each
//   writes DIR/c_silu.f32, c_swiglu.f32, c_softmax.f32 (+ c_softmax_sum.f64, max = max(x)),
//          c_mad_f16.bin   y = f16(g / 64) updated with x16 = f16(x / 64) times 0.7
//          c_scale_f16.bin y = f16(g / 64) scaled by 0.7
//          c_gemm.f32      C[3 x N/8] = 0.5 + A[3 x 8] * B[8 x N/8] from x (A) and g (B)
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "vec.h"
#include "simd-gemm.h"

float ggml_table_f32_f16[1 << 16];

static std::vector<float> read_f32(const char * dir, const char * name, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE * f = fopen(path, "rb");
    std::vector<float> v(n);
    if (!f || fread(v.data(), 4, n, f) != n) { perror(path); exit(1); }
    fclose(f);
    return v;
}

static void write_all(const char * dir, const char * name, const void * p, size_t len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE * f = fopen(path, "wb");
    if (!f || fwrite(p, 1, len, f) != len) { perror(path); exit(1); }
    fclose(f);
}

int main(int argc, char ** argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s DIR N\n", argv[0]); return 2; }
    const char * dir = argv[1];
    const int n = atoi(argv[2]);
    for (uint32_t i = 0; i < (1u << 16); ++i) {
        ggml_table_f32_f16[i] = ggml_compute_fp16_to_fp32((ggml_fp16_t) i);
    }
    std::vector<float> x = read_f32(dir, "x.f32", n), g = read_f32(dir, "g.f32", n), y(n);

    ggml_vec_silu_f32(n, y.data(), x.data());
    write_all(dir, "c_silu.f32", y.data(), 4 * n);
    ggml_vec_swiglu_f32(n, y.data(), x.data(), g.data());
    write_all(dir, "c_swiglu.f32", y.data(), 4 * n);
    float max = -INFINITY;
    ggml_vec_max_f32(n, &max, x.data());
    double sum = ggml_vec_soft_max_f32(n, y.data(), x.data(), max);
    write_all(dir, "c_softmax.f32", y.data(), 4 * n);
    write_all(dir, "c_softmax_sum.f64", &sum, 8);

    std::vector<ggml_fp16_t> h(n), k(n);
    for (int i = 0; i < n; ++i) {
        h[i] = GGML_CPU_FP32_TO_FP16(g[i] / 64);
        k[i] = GGML_CPU_FP32_TO_FP16(x[i] / 64);
    }
    std::vector<ggml_fp16_t> m = h;
    ggml_vec_mad_f16(n, m.data(), k.data(), 0.7f);
    write_all(dir, "c_mad_f16.bin", m.data(), 2 * n);
    ggml_vec_scale_f16(n, h.data(), 0.7f);
    write_all(dir, "c_scale_f16.bin", h.data(), 2 * n);

    const int gm = 3, gk = 8, gn = n / 8;
    if (gn > 0 && n >= gm * gk) {
        std::vector<float> c(gm * gn, 0.5f);
        simd_gemm(c.data(), x.data(), g.data(), gm, gk, gn);
        write_all(dir, "c_gemm.f32", c.data(), 4 * gm * gn);
    }
    return 0;
}
