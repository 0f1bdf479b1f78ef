// Cross-check harness for orchard-quant's K-quant kernels: runs ggml's own C reference code
// (quantize_row_*_ref from ggml-quants.c, the *_generic dots from ggml-cpu/quants.c) on inputs the
// Rust test writes, so the Rust side can demand identical bytes and identical float bits.
// Built and run by kquants_c_crosscheck.sh against a llama.cpp source tree; not part of CI.
//
// Usage: kquants_c_ref DIR
//   reads  DIR/w.f32 (weights) and DIR/a.f32 (activations), same length, a multiple of 256
//   writes DIR/c_<type>.q      quantize_row_<type>_ref(w) for Q2_K..Q6_K, and Q8_K of a
//          DIR/c_dots.txt      per weight type and prefix length n (every 256): the dot's bits
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
    if (n != na || n % QK_K) { fprintf(stderr, "bad lengths %zu %zu\n", n, na); return 1; }
    const size_t nb = n / QK_K;

    block_q8_K * y = calloc(nb, sizeof(block_q8_K));
    quantize_row_q8_K_ref(a, y, n);
    write_bytes(dir, "c_q8_K.q", y, nb * sizeof(block_q8_K));

    struct { const char * name; size_t size; quant_fn q; dot_fn d; } types[] = {
        { "q2_K", sizeof(block_q2_K), (quant_fn) quantize_row_q2_K_ref, ggml_vec_dot_q2_K_q8_K_generic },
        { "q3_K", sizeof(block_q3_K), (quant_fn) quantize_row_q3_K_ref, ggml_vec_dot_q3_K_q8_K_generic },
        { "q4_K", sizeof(block_q4_K), (quant_fn) quantize_row_q4_K_ref, ggml_vec_dot_q4_K_q8_K_generic },
        { "q5_K", sizeof(block_q5_K), (quant_fn) quantize_row_q5_K_ref, ggml_vec_dot_q5_K_q8_K_generic },
        { "q6_K", sizeof(block_q6_K), (quant_fn) quantize_row_q6_K_ref, ggml_vec_dot_q6_K_q8_K_generic },
    };
    snprintf(path, sizeof path, "%s/c_dots.txt", dir);
    FILE * dots = fopen(path, "w");
    for (size_t t = 0; t < sizeof types / sizeof types[0]; ++t) {
        uint8_t * q = calloc(nb, types[t].size);
        types[t].q(w, q, n);
        char name[64];
        snprintf(name, sizeof name, "c_%s.q", types[t].name);
        write_bytes(dir, name, q, nb * types[t].size);
        for (size_t k = 1; k <= nb; ++k) {
            float s;
            types[t].d((int) (k * QK_K), &s, 0, q, 0, y, 0, 1);
            uint32_t bits;
            memcpy(&bits, &s, 4);
            fprintf(dots, "%s %zu %08x\n", types[t].name, k * QK_K, bits);
        }
        free(q);
    }
    fclose(dots);
    return 0;
}
