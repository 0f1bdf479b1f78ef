// Cross-check harness for orchard-quant's legacy-format kernels: runs ggml's own C code
// (quantize_row_*_ref and dequantize_row_* from ggml-quants.c, the *_generic dots from
// ggml-cpu/quants.c, the fp16/bf16 conversions of ggml-impl.h) on inputs the Rust test writes,
// so the Rust side can demand identical bytes and identical float bits.
// Built and run by legacy_c_crosscheck.sh against a llama.cpp source tree; not part of CI.
//
// Usage: legacy_c_ref DIR
//   reads  DIR/w.f32 (weights) and DIR/a.f32 (activations), same length, a multiple of 32
//   writes DIR/c_<type>.q    quantize_row_<type>_ref(w) for q4_0 q4_1 q5_0 q5_1 q8_0 q8_1,
//                            and GGML_FP32_TO_FP16 / GGML_FP32_TO_BF16 of w for f16 / bf16
//          DIR/c_<type>.f32  dequantize_row_<type>(c_<type>.q) (not q8_1: ggml has none)
//          DIR/c_act_q8_0.q, DIR/c_act_q8_1.q   the activations quantized
//          DIR/c_dots.txt    per weight type and prefix length n (every 32): the dot's bits
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-common.h"
#include "ggml-impl.h"
#include "ggml-quants.h"
#include "quants.h"

static float * read_f32(const char * path, size_t * n) {
    FILE * f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    float * buf = malloc(len);
    if (fread(buf, 1, len, f) != (size_t) len) { perror(path); exit(1); }
    fclose(f);
    *n = len / sizeof(float);
    return buf;
}

static void write_bytes(const char * dir, const char * name, const void * p, size_t len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE * f = fopen(path, "wb");
    if (!f || fwrite(p, 1, len, f) != len) { perror(path); exit(1); }
    fclose(f);
}

// ggml-cpu widens f16 through this table (filled by ggml_cpu_init in a full build).
float ggml_table_f32_f16[1 << 16];

// Symbols of ggml.c that ggml-quants.c references on paths this harness never takes.
void ggml_abort(const char * file, int line, const char * fmt, ...) {
    fprintf(stderr, "ggml_abort at %s:%d (%s)\n", file, line, fmt);
    abort();
}
size_t ggml_row_size(enum ggml_type type, int64_t ne) { (void) type; (void) ne; abort(); }
size_t ggml_type_size(enum ggml_type type) { (void) type; abort(); }
const char * ggml_type_name(enum ggml_type type) { (void) type; abort(); }

typedef void (*quant_fn)(const float *, void *, int64_t);
typedef void (*dequant_fn)(const void *, float *, int64_t);
typedef void (*dot_fn)(int, float *, size_t, const void *, size_t, const void *, size_t, int);

int main(int argc, char ** argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s DIR\n", argv[0]); return 2; }
    const char * dir = argv[1];
    for (uint32_t i = 0; i < (1u << 16); ++i) {
        ggml_table_f32_f16[i] = ggml_compute_fp16_to_fp32((ggml_fp16_t) i);
    }
    char path[4096];
    size_t n, na;
    snprintf(path, sizeof path, "%s/w.f32", dir);
    float * w = read_f32(path, &n);
    snprintf(path, sizeof path, "%s/a.f32", dir);
    float * a = read_f32(path, &na);
    if (n != na || n % 32) { fprintf(stderr, "bad lengths %zu %zu\n", n, na); return 1; }
    const size_t nb = n / 32;

    ggml_fp16_t * h = malloc(n * sizeof *h);
    ggml_bf16_t * b = malloc(n * sizeof *b);
    for (size_t i = 0; i < n; ++i) {
        h[i] = GGML_FP32_TO_FP16(w[i]);
        b[i] = GGML_FP32_TO_BF16(w[i]);
    }
    write_bytes(dir, "c_f16.q", h, n * sizeof *h);
    write_bytes(dir, "c_bf16.q", b, n * sizeof *b);

    block_q8_0 * a8_0 = calloc(nb, sizeof *a8_0);
    block_q8_1 * a8_1 = calloc(nb, sizeof *a8_1);
    quantize_row_q8_0_ref(a, a8_0, n);
    quantize_row_q8_1_ref(a, a8_1, n);
    write_bytes(dir, "c_act_q8_0.q", a8_0, nb * sizeof *a8_0);
    write_bytes(dir, "c_act_q8_1.q", a8_1, nb * sizeof *a8_1);

    struct { const char * name; size_t size; quant_fn q; dequant_fn dq; dot_fn d; const void * act; } types[] = {
        { "q4_0", sizeof(block_q4_0), (quant_fn) quantize_row_q4_0_ref, (dequant_fn) dequantize_row_q4_0, ggml_vec_dot_q4_0_q8_0_generic, a8_0 },
        { "q4_1", sizeof(block_q4_1), (quant_fn) quantize_row_q4_1_ref, (dequant_fn) dequantize_row_q4_1, ggml_vec_dot_q4_1_q8_1_generic, a8_1 },
        { "q5_0", sizeof(block_q5_0), (quant_fn) quantize_row_q5_0_ref, (dequant_fn) dequantize_row_q5_0, ggml_vec_dot_q5_0_q8_0_generic, a8_0 },
        { "q5_1", sizeof(block_q5_1), (quant_fn) quantize_row_q5_1_ref, (dequant_fn) dequantize_row_q5_1, ggml_vec_dot_q5_1_q8_1_generic, a8_1 },
        { "q8_0", sizeof(block_q8_0), (quant_fn) quantize_row_q8_0_ref, (dequant_fn) dequantize_row_q8_0, ggml_vec_dot_q8_0_q8_0_generic, a8_0 },
        { "q8_1", sizeof(block_q8_1), (quant_fn) quantize_row_q8_1_ref, NULL, NULL, NULL },
    };
    float * y = malloc(n * sizeof *y);
    snprintf(path, sizeof path, "%s/c_dots.txt", dir);
    FILE * dots = fopen(path, "w");
    for (size_t t = 0; t < sizeof types / sizeof types[0]; ++t) {
        uint8_t * q = calloc(nb, types[t].size);
        types[t].q(w, q, n);
        char name[64];
        snprintf(name, sizeof name, "c_%s.q", types[t].name);
        write_bytes(dir, name, q, nb * types[t].size);
        if (types[t].dq) {
            types[t].dq(q, y, n);
            snprintf(name, sizeof name, "c_%s.f32", types[t].name);
            write_bytes(dir, name, y, n * sizeof *y);
        }
        for (size_t k = 1; types[t].d && k <= nb; ++k) {
            float s;
            types[t].d((int) (k * 32), &s, 0, q, 0, types[t].act, 0, 1);
            uint32_t bits;
            memcpy(&bits, &s, 4);
            fprintf(dots, "%s %zu %08x\n", types[t].name, k * 32, bits);
        }
        free(q);
    }
    fclose(dots);
    return 0;
}
