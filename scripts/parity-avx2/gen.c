// Reads cases on stdin, one a line: "G n_new id..." (greedy continuation) or "L id..." (logits of
// every position); writes results on stdout. Driven by gen.py.
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

static int top2(const float *l, int n, float *margin) {
    int b = 0, s = -1;
    for (int i = 1; i < n; i++) {
        if (l[i] > l[b]) { s = b; b = i; } else if (s < 0 || l[i] > l[s]) { s = i; }
    }
    *margin = l[b] - l[s];
    return b;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: gen MODEL < cases\n"); return 2; }
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) return 1;
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    const int nv = llama_vocab_n_tokens(vocab);
    static char line[1 << 20];
    static llama_token ids[1 << 16];
    while (fgets(line, sizeof line, stdin)) {
        char mode = line[0];
        char *p = line + 1;
        int n_new = 0;
        if (mode == 'G') n_new = (int)strtol(p, &p, 10);
        int n = 0;
        for (;;) {
            char *e;
            long v = strtol(p, &e, 10);
            if (e == p) break;
            ids[n++] = (llama_token)v;
            p = e;
        }
        struct llama_context_params cp = llama_context_default_params();
        cp.n_ctx = 4096; cp.n_batch = 4096; cp.n_threads = 2; cp.n_threads_batch = 2;
        struct llama_context *ctx = llama_init_from_model(model, cp);
        struct llama_batch b = llama_batch_init(n + 1, 0, 1);
        for (int i = 0; i < n; i++) {
            b.token[i] = ids[i]; b.pos[i] = i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0;
            b.logits[i] = mode == 'L' || i == n - 1;
        }
        b.n_tokens = n;
        if (llama_decode(ctx, b)) { fprintf(stderr, "decode failed\n"); return 1; }
        if (mode == 'L') {
            printf("L");
            for (int i = 0; i < n; i++) {
                const float *l = llama_get_logits_ith(ctx, i);
                int top[5];
                for (int k = 0; k < 5; k++) {
                    int best = -1;
                    for (int j = 0; j < nv; j++) {
                        int used = 0;
                        for (int q = 0; q < k; q++) used |= top[q] == j;
                        if (!used && (best < 0 || l[j] > l[best])) best = j;
                    }
                    top[k] = best;
                    printf(" %d:%.9g", best, l[best]);
                }
                printf(" |");
            }
            printf("\n");
        } else {
            printf("G");
            int pos = n;
            const float *l = llama_get_logits_ith(ctx, n - 1);
            for (int s = 0; s < n_new; s++) {
                float m;
                int t = top2(l, nv, &m);
                printf(" %d:%.9g", t, m);
                if (llama_vocab_is_eog(vocab, t) || s + 1 == n_new) break;
                b.n_tokens = 1;
                b.token[0] = t; b.pos[0] = pos++; b.n_seq_id[0] = 1; b.seq_id[0][0] = 0; b.logits[0] = 1;
                if (llama_decode(ctx, b)) { fprintf(stderr, "decode failed\n"); return 1; }
                l = llama_get_logits_ith(ctx, -1);
            }
            printf("\n");
        }
        fflush(stdout);
        llama_batch_free(b);
        llama_free(ctx);
    }
    llama_model_free(model);
    return 0;
}
