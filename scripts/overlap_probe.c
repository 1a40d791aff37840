/*
 * overlap_probe.c: how much of a kernel's arithmetic this machine hides behind its memory
 * traffic. Evidence for issue 3's unmet targets, not part of the library or its tests.
 *
 *   gcc -O2 -mavx512f -mavx512dq -fopenmp scripts/overlap_probe.c -o /tmp/overlap_probe
 *   /tmp/overlap_probe
 *
 * A synthetic kernel shaped like LayerNorm's backward: per row of 4096 f32, pass 1 of the
 * next row (reads x and dy, K FMAs per vector) runs inside pass 2 of the current one (reads
 * the row again from cache, K FMAs per vector, dγ/dβ-like f64 partials read-modified-written
 * every other row, dx written with non-temporal stores), software prefetch 4 KiB ahead.
 * For each K it prints:
 *   cache  ns/elem per core on 16 rows that stay in L2 (plain stores), one thread: the
 *          arithmetic alone;
 *   memory GB/s on 64 MiB arrays, 2 threads, in the byte model of `layernorm bench`
 *          (12 bytes per element), and its ratio to memcpy of as many bytes, run alternately
 *          (medians of 9 runs; the ratio is the median of each run's ratio).
 * Compare `cache` with a kernel's own in-cache cost (`layernorm bench` reports it as
 * cache_gbps) to read off the ratio to expect for it out of cache.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REPS 9

#define N (1L << 24)
#define COLS 4096

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static int by_value(const void *a, const void *b) {
  double d = *(const double *)a - *(const double *)b;
  return (d > 0) - (d < 0);
}

static double median(double *v) {
  qsort(v, REPS, sizeof *v, by_value);
  return v[REPS / 2];
}

static void kernel(const float *x, const float *dy, float *dx, double *part, long rows, int k,
                   int stream) {
  __m512 c = _mm512_set1_ps(1.0001f), s[4];
  for (int i = 0; i < 4; i++) s[i] = _mm512_setzero_ps();
  for (long r = 0; r < rows; r++) {
    const float *xr = x + r * COLS, *dyr = dy + r * COLS, *xn = xr + COLS, *dyn = dyr + COLS;
    float *out = dx + r * COLS;
    for (int i = 0; i < COLS; i += 16) {
      if (r + 1 < rows) { /* pass 1 of the next row */
        _mm_prefetch((const char *)(xn + i + 1024), _MM_HINT_T0);
        _mm_prefetch((const char *)(dyn + i + 1024), _MM_HINT_T0);
        __m512 a = _mm512_loadu_ps(xn + i), b = _mm512_loadu_ps(dyn + i);
        for (int j = 0; j < k; j++) s[j & 3] = _mm512_fmadd_ps(a, b, s[j & 3]);
      }
      __m512 a = _mm512_loadu_ps(xr + i), b = _mm512_loadu_ps(dyr + i); /* pass 2 */
      __m512 v = _mm512_fmadd_ps(a, s[0], b);
      for (int j = 0; j < k; j++) v = _mm512_fmadd_ps(v, c, a);
      if (r & 1) { /* partials, once per pair of rows */
        __m256 lo = _mm512_castps512_ps256(v);
        __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
        double *p = part + i;
        _mm512_storeu_pd(p, _mm512_add_pd(_mm512_loadu_pd(p), _mm512_cvtps_pd(lo)));
        _mm512_storeu_pd(p + 8, _mm512_add_pd(_mm512_loadu_pd(p + 8), _mm512_cvtps_pd(hi)));
      }
      if (stream) _mm512_stream_ps(out + i, v);
      else _mm512_storeu_ps(out + i, v);
    }
  }
  volatile float sink = s[0][0] + s[1][0] + s[2][0] + s[3][0];
  (void)sink;
}

int main(void) {
  float *x = aligned_alloc(64, N * 4), *dy = aligned_alloc(64, N * 4);
  float *dx = aligned_alloc(64, N * 4);
  char *c1 = aligned_alloc(64, N * 6), *c2 = aligned_alloc(64, N * 6);
  double *part = aligned_alloc(64, 2 * COLS * 8);
  memset(x, 0, N * 4), memset(dy, 0, N * 4), memset(dx, 0, N * 4);
  memset(c1, 0, N * 6), memset(c2, 0, N * 6), memset(part, 0, 2 * COLS * 8);
  int ks[] = {1, 2, 4, 6, 8, 12};
  printf("%3s %14s %12s %12s %6s\n", "K", "cache ns/elem", "memory GB/s", "memcpy GB/s", "ratio");
  for (int ki = 0; ki < 6; ki++) {
    int k = ks[ki];
    double gbps[REPS], copy[REPS], ratio[REPS], cache[REPS];
    for (int rep = 0; rep < REPS; rep++) {
      double t = now();
#pragma omp parallel num_threads(2)
      {
        long id = omp_get_thread_num(), half = N / 2;
        kernel(x + id * half, dy + id * half, dx + id * half, part + id * COLS, half / COLS, k, 1);
      }
      gbps[rep] = 12.0 * N / (now() - t) / 1e9;
      t = now();
#pragma omp parallel num_threads(2)
      {
        long id = omp_get_thread_num(), half = N * 6 / 2;
        memcpy(c2 + id * half, c1 + id * half, half);
      }
      copy[rep] = 12.0 * N / (now() - t) / 1e9;
      ratio[rep] = gbps[rep] / copy[rep];
      t = now();
      for (int j = 0; j < 50; j++) kernel(x, dy, dx, part, 16, k, 0);
      cache[rep] = (now() - t) / 50 / (16.0 * COLS) * 1e9;
    }
    printf("%3d %14.3f %12.1f %12.1f %6.2f\n", k, median(cache), median(gbps), median(copy),
           median(ratio));
  }
  return 0;
}
