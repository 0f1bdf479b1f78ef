// STREAM-style bandwidth probe: triad a[i] = b[i] + s*c[i] and a pure read (sum) over arrays
// far larger than the last-level cache, best of N passes, with T threads (OpenMP).
// Bytes counted: triad 3 x 8 B per element (2 reads + 1 write; write-allocate not counted,
// as STREAM reports), read 8 B per element.
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    size_t n = (argc > 1 ? strtoull(argv[1], 0, 10) : 64) << 20; // elements (default 64 Mi)
    int passes = argc > 2 ? atoi(argv[2]) : 10;
    double *a = aligned_alloc(64, n * 8), *b = aligned_alloc(64, n * 8), *c = aligned_alloc(64, n * 8);
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) { a[i] = 0; b[i] = 1; c[i] = 2; }
    double best_triad = 1e30, best_read = 1e30, sink = 0;
    for (int p = 0; p < passes; p++) {
        double t0 = now();
#pragma omp parallel for
        for (size_t i = 0; i < n; i++) a[i] = b[i] + 3.0 * c[i];
        double t1 = now();
        double s = 0;
#pragma omp parallel for reduction(+ : s)
        for (size_t i = 0; i < n; i++) s += a[i];
        double t2 = now();
        sink += s;
        if (t1 - t0 < best_triad) best_triad = t1 - t0;
        if (t2 - t1 < best_read) best_read = t2 - t1;
    }
    printf("threads %d  triad %.2f GB/s  read %.2f GB/s  (n=%zu MiB per array, sink %g)\n",
           omp_get_max_threads(), 24.0 * n / best_triad / 1e9, 8.0 * n / best_read / 1e9, n * 8 >> 20,
           sink);
    return 0;
}
