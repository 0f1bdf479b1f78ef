// Cross-check harness for orchard-quant's x86 kernels: runs ggml-cpu's own x86 code
// (arch/x86/quants.c: quantize_row_q8_0/q8_1/q8_K and the ggml_vec_dot_* SIMD kernels; vec.cpp:
// ggml_vec_dot_f16) compiled the way llama.cpp's GGML_NATIVE build compiles it, on inputs the
// Rust test writes, so the Rust side can demand identical bytes and identical float bits.
// Built and run by x86_c_crosscheck.sh; not part of CI.
//
// Usage: x86_c_ref DIR N ROWS
//   reads  DIR/a.f32            N activations
//          DIR/w_<type>.bin     ROWS weight rows of n_type elements (N rounded down to the block)
//          DIR/ra_<act>.bin     one raw activation row per activation type (arbitrary bytes)
//   writes DIR/c_act_<act>.bin  a.f32 quantized by ggml-cpu's from_float for q8_0 q8_1 q8_k f16
//          DIR/c_dots_<type>.bin  2*ROWS float bits: each row against c_act, then against ra
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-common.h"
#include "ggml-impl.h"
#include "ggml-quants.h"
#include "quants.h"
#include "simd-mappings.h"

void ggml_vec_dot_f16(int n, float * s, size_t bs, ggml_fp16_t * x, size_t bx, ggml_fp16_t * y, size_t by, int nrc);

// ggml-cpu widens f16 through this table (filled by ggml_cpu_init in a full build).
float ggml_table_f32_f16[1 << 16];
// Tables of formats this harness does not test, referenced by kernels it links in.
float ggml_table_f32_e8m0_half[1 << 8];
float ggml_table_f32_ue4m3[1 << 8];

// Symbols of ggml.c that ggml-quants.c references on paths this harness never takes.
void ggml_abort(const char * file, int line, const char * fmt, ...) {
    fprintf(stderr, "ggml_abort at %s:%d (%s)\n", file, line, fmt);
    abort();
}
size_t ggml_row_size(enum ggml_type type, int64_t ne) { (void) type; (void) ne; abort(); }
size_t ggml_type_size(enum ggml_type type) { (void) type; abort(); }
const char * ggml_type_name(enum ggml_type type) { (void) type; abort(); }

static void * read_all(const char * dir, const char * name, size_t want) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE * f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    void * buf = malloc(want ? want : 1);
    if (fread(buf, 1, want, f) != want) { fprintf(stderr, "%s: short read\n", path); exit(1); }
    fclose(f);
    return buf;
}

static void write_all(const char * dir, const char * name, const void * p, size_t len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE * f = fopen(path, "wb");
    if (!f || fwrite(p, 1, len, f) != len) { perror(path); exit(1); }
    fclose(f);
}

typedef void (*dot_fn)(int, float *, size_t, const void *, size_t, const void *, size_t, int);

static void f16_dot(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc) {
    ggml_vec_dot_f16(n, s, bs, (ggml_fp16_t *) x, bx, (ggml_fp16_t *) y, by, nrc);
}

int main(int argc, char ** argv) {
    if (argc != 4) { fprintf(stderr, "usage: %s DIR N ROWS\n", argv[0]); return 2; }
    const char * dir = argv[1];
    const size_t n = strtoul(argv[2], NULL, 10);
    const size_t rows = strtoul(argv[3], NULL, 10);
    for (uint32_t i = 0; i < (1u << 16); ++i) {
        ggml_table_f32_f16[i] = ggml_compute_fp16_to_fp32((ggml_fp16_t) i);
    }
    float * a = read_all(dir, "a.f32", n * sizeof(float));
    const size_t n32 = n / 32 * 32, n256 = n / 256 * 256;

    struct { const char * name; size_t elems, bytes; void * q; } acts[] = {
        { "q8_0", n32, n32 / 32 * sizeof(block_q8_0), NULL },
        { "q8_1", n32, n32 / 32 * sizeof(block_q8_1), NULL },
        { "q8_k", n256, n256 / 256 * sizeof(block_q8_K), NULL },
        { "f16", n, n * sizeof(ggml_fp16_t), NULL },
    };
    for (size_t i = 0; i < 4; ++i) {
        acts[i].q = calloc(1, acts[i].bytes + 1);
    }
    quantize_row_q8_0(a, acts[0].q, n32);
    quantize_row_q8_1(a, acts[1].q, n32);
    if (n256) quantize_row_q8_K(a, acts[2].q, n256);
    for (size_t i = 0; i < n; ++i) ((ggml_fp16_t *) acts[3].q)[i] = GGML_CPU_FP32_TO_FP16(a[i]);
    for (size_t i = 0; i < 4; ++i) {
        char name[64];
        snprintf(name, sizeof name, "c_act_%s.bin", acts[i].name);
        write_all(dir, name, acts[i].q, acts[i].bytes);
    }

    struct { const char * name; int act; size_t block, size; dot_fn dot; } types[] = {
        { "q4_0", 0, 32, sizeof(block_q4_0), ggml_vec_dot_q4_0_q8_0 },
        { "q4_1", 1, 32, sizeof(block_q4_1), ggml_vec_dot_q4_1_q8_1 },
        { "q5_0", 0, 32, sizeof(block_q5_0), ggml_vec_dot_q5_0_q8_0 },
        { "q5_1", 1, 32, sizeof(block_q5_1), ggml_vec_dot_q5_1_q8_1 },
        { "q8_0", 0, 32, sizeof(block_q8_0), ggml_vec_dot_q8_0_q8_0 },
        { "q2_k", 2, 256, sizeof(block_q2_K), ggml_vec_dot_q2_K_q8_K },
        { "q3_k", 2, 256, sizeof(block_q3_K), ggml_vec_dot_q3_K_q8_K },
        { "q4_k", 2, 256, sizeof(block_q4_K), ggml_vec_dot_q4_K_q8_K },
        { "q5_k", 2, 256, sizeof(block_q5_K), ggml_vec_dot_q5_K_q8_K },
        { "q6_k", 2, 256, sizeof(block_q6_K), ggml_vec_dot_q6_K_q8_K },
        { "f16", 3, 1, sizeof(ggml_fp16_t), f16_dot },
    };
    for (size_t t = 0; t < sizeof types / sizeof types[0]; ++t) {
        const size_t elems = acts[types[t].act].elems;
        if (!elems) continue;
        const size_t row_bytes = elems / types[t].block * types[t].size;
        char name[64];
        snprintf(name, sizeof name, "w_%s.bin", types[t].name);
        uint8_t * w = read_all(dir, name, rows * row_bytes);
        snprintf(name, sizeof name, "ra_%s.bin", acts[types[t].act].name);
        void * ra = read_all(dir, name, acts[types[t].act].bytes);
        float * out = malloc(2 * rows * sizeof(float));
        for (size_t r = 0; r < rows; ++r) {
            types[t].dot((int) elems, &out[r], 0, w + r * row_bytes, 0, acts[types[t].act].q, 0, 1);
            types[t].dot((int) elems, &out[rows + r], 0, w + r * row_bytes, 0, ra, 0, 1);
        }
        snprintf(name, sizeof name, "c_dots_%s.bin", types[t].name);
        write_all(dir, name, out, 2 * rows * sizeof(float));
        free(out);
        free(ra);
        free(w);
    }
    return 0;
}
