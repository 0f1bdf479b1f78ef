// Cross-check harness for orchard-quant's "interleaved" Q4_K dot: runs ggml-cpu's repacked Q4_K
// kernels (arch/x86/repack.cpp: ggml_gemv_q4_K_8x8_q8_K for single activation rows and
// ggml_gemm_q4_K_8x8_q8_K over ggml_quantize_mat_q8_K_4x8 for groups of four), which llama.cpp
// uses on x86 for every Q4_K matrix with a multiple of 8 rows. Built by x86_c_crosscheck.sh.
//
// Usage: x86_repack_c_ref DIR N ROWS   (N a multiple of 256, ROWS a multiple of 8)
//   reads  DIR/w_q4_k.bin  ROWS rows of Q4_K blocks;  DIR/a4.f32  4 activation rows of N floats
//   writes DIR/c_q8k4.bin  the 4 rows through quantize_row_q8_K
//          DIR/c_gemv.bin  4 x ROWS floats: gemv of each activation row against every weight row
//          DIR/c_gemm.bin  4 x ROWS floats: gemm of the 4 rows (4x8-interleaved activations)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ggml-common.h"
#include "quants.h"
#include "repack.h"

extern "C" {
float ggml_table_f32_f16[1 << 16];
float ggml_table_f32_e8m0_half[1 << 8];
float ggml_table_f32_ue4m3[1 << 8];
void ggml_abort(const char * file, int line, const char * fmt, ...) {
    fprintf(stderr, "ggml_abort at %s:%d (%s)\n", file, line, fmt);
    abort();
}
size_t ggml_row_size(enum ggml_type, int64_t) { abort(); }
size_t ggml_type_size(enum ggml_type) { abort(); }
const char * ggml_type_name(enum ggml_type) { abort(); }
}

static std::vector<char> read_all(const char * dir, const char * name, size_t want) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE * f = fopen(path, "rb");
    std::vector<char> v(want);
    if (!f || fread(v.data(), 1, want, f) != want) { perror(path); exit(1); }
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

// The layout ggml's Q4_K repack (interleave 8) writes: eight blocks' d and dmin, then their
// quants in 8-byte runs taken from each block in turn, then for each sub-block pair position the
// eight blocks' 6-bit scales and mins regrouped into 12 bytes.
static block_q4_Kx8 interleave8(const block_q4_K * in) {
    block_q4_Kx8 out;
    for (int i = 0; i < 8; i++) {
        memcpy(&out.d[i], &in[i], 2);
        memcpy(&out.dmin[i], (const char *) &in[i] + 2, 2);
    }
    for (int i = 0; i < QK_K * 4 / 8; ++i) {
        memcpy(&out.qs[i * 8], &in[i % 8].qs[(i / 8) * 8], 8);
    }
    for (int half = 0; half < 2; half++) {
        for (int i = 0; i < 4; i++) {
            uint8_t s[8], m[8];
            for (int j = 0; j < 8; j++) {
                if (half == 0) {
                    s[j] = in[j].scales[i] & 63;
                    m[j] = in[j].scales[i + 4] & 63;
                } else {
                    s[j] = ((in[j].scales[i] & 192) >> 2) | (in[j].scales[i + 8] & 15);
                    m[j] = ((in[j].scales[i + 4] & 192) >> 2) | ((in[j].scales[i + 8] & 240) >> 4);
                }
            }
            uint8_t * o = out.scales + half * 48 + i * 12;
            for (int j = 0; j < 4; j++) {
                o[j] = (s[j] & 63) + ((s[j + 4] & 48) << 2);
                o[j + 4] = (m[j] & 63) + ((m[j + 4] & 48) << 2);
                o[j + 8] = (s[j + 4] & 15) + ((m[j + 4] & 15) << 4);
            }
        }
    }
    return out;
}

int main(int argc, char ** argv) {
    if (argc != 4) { fprintf(stderr, "usage: %s DIR N ROWS\n", argv[0]); return 2; }
    const char * dir = argv[1];
    const int n = atoi(argv[2]);
    const int rows = atoi(argv[3]);
    const int nb = n / QK_K;
    for (uint32_t i = 0; i < (1u << 16); ++i) {
        ggml_table_f32_f16[i] = ggml_compute_fp16_to_fp32((ggml_fp16_t) i);
    }
    std::vector<char> wraw = read_all(dir, "w_q4_k.bin", (size_t) rows * nb * sizeof(block_q4_K));
    std::vector<char> araw = read_all(dir, "a4.f32", (size_t) 4 * n * sizeof(float));
    const block_q4_K * w = (const block_q4_K *) wraw.data();
    const float * a = (const float *) araw.data();

    std::vector<block_q4_Kx8> packed((size_t) rows / 8 * nb);
    for (int g = 0; g < rows / 8; g++) {
        for (int b = 0; b < nb; b++) {
            block_q4_K tmp[8];
            for (int i = 0; i < 8; i++) tmp[i] = w[(g * 8 + i) * nb + b];
            packed[(size_t) g * nb + b] = interleave8(tmp);
        }
    }

    std::vector<block_q8_K> q8(4 * nb);
    for (int r = 0; r < 4; r++) quantize_row_q8_K(a + r * n, q8.data() + r * nb, n);
    write_all(dir, "c_q8k4.bin", q8.data(), q8.size() * sizeof(block_q8_K));

    std::vector<float> gemv(4 * rows), gemm(4 * rows);
    for (int r = 0; r < 4; r++) {
        for (int g = 0; g < rows / 8; g++) {
            ggml_gemv_q4_K_8x8_q8_K(n, gemv.data() + r * rows + g * 8, 0, packed.data() + (size_t) g * nb,
                                    q8.data() + r * nb, 1, 8);
        }
    }
    write_all(dir, "c_gemv.bin", gemv.data(), gemv.size() * sizeof(float));

    std::vector<block_q8_Kx4> q8x4(nb);
    ggml_quantize_mat_q8_K_4x8(a, q8x4.data(), n);
    ggml_gemm_q4_K_8x8_q8_K(n, gemm.data(), rows, packed.data(), q8x4.data(), 4, rows);
    write_all(dir, "c_gemm.bin", gemm.data(), gemm.size() * sizeof(float));
    return 0;
}
