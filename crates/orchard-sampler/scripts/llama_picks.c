// Prints the tokens llama.cpp's sampler chain picks from synthetic logit rows, for the
// `picks_equal_llama_cpp` test (tests/llama_picks.rs). Build against libllama:
//   gcc -O2 -o llama_picks llama_picks.c -I$LLAMA/include -I$LLAMA/ggml/include -L$BUILD/bin -lllama
// Rows: 1000 logits each, exact in f32: u / 2^20 - 8 with u the top 24 bits of a 64-bit LCG.
// Chain: llama.cpp's default order (top-k, typical, top-p, min-p, temperature, dist).
#include "llama.h"
#include <stdint.h>
#include <stdio.h>

static uint64_t state;
static float next_logit(void) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)(state >> 40) / 1048576.0f - 8.0f;
}

int main(void) {
    struct { int top_k; float typical, top_p, min_p, temp; uint32_t seed; } cfg[] = {
        {40, 1.0f, 0.95f, 0.05f, 0.8f, 42},
        {0, 1.0f, 1.0f, 0.0f, 1.2f, 123},
        {10, 0.9f, 0.8f, 0.1f, 0.5f, 7},
    };
    enum { N_VOCAB = 1000, ROWS = 300 };
    static llama_token_data data[N_VOCAB];
    for (unsigned c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        struct llama_sampler *s = llama_sampler_chain_init(llama_sampler_chain_default_params());
        if (cfg[c].top_k > 0) llama_sampler_chain_add(s, llama_sampler_init_top_k(cfg[c].top_k));
        llama_sampler_chain_add(s, llama_sampler_init_typical(cfg[c].typical, 1));
        llama_sampler_chain_add(s, llama_sampler_init_top_p(cfg[c].top_p, 1));
        llama_sampler_chain_add(s, llama_sampler_init_min_p(cfg[c].min_p, 1));
        llama_sampler_chain_add(s, llama_sampler_init_temp(cfg[c].temp));
        llama_sampler_chain_add(s, llama_sampler_init_dist(cfg[c].seed));
        state = c;
        printf("%u:", c);
        for (int r = 0; r < ROWS; r++) {
            for (int i = 0; i < N_VOCAB; i++) data[i] = (llama_token_data){i, next_logit(), 0.0f};
            llama_token_data_array arr = {data, N_VOCAB, -1, false};
            llama_sampler_apply(s, &arr);
            printf(" %d", arr.data[arr.selected].id);
        }
        printf("\n");
        llama_sampler_free(s);
    }
    return 0;
}
