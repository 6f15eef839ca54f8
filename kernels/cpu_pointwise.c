// The pointwise ops of prefill and mixed steps, float32 rows (x86-64 with AVX2 and FMA; built
// into the same library as `cpu_decode.c`, whose helpers it includes): RMSNorm, residual add
// with RMSNorm, SwiGLU and RoPE, each one pass over its rows, split between threads. The
// torch path runs them as 2-6 ATen ops that each read and write the whole activation (at 512
// tokens ~60 ms of a 750 ms prefill). References: `kernels/ops.py`; tests compare the two.

// out = x * rsqrt(mean(x^2) + eps) * weight for one row (eight float32 sums of squares).
ISA static void rms_norm_row(const float* x, const float* weight, float* out, int64_t n,
                             float eps) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    acc = _mm256_fmadd_ps(v, v, acc);
  }
  float squares = hsum(acc);
  for (; i < n; ++i) squares += x[i] * x[i];
  __m256 inv = _mm256_set1_ps(1.0f / sqrtf(squares / (float)n + eps));
  for (i = 0; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), inv),
                                            _mm256_loadu_ps(weight + i)));
  for (; i < n; ++i) out[i] = x[i] * _mm256_cvtss_f32(inv) * weight[i];
}

// out[r] = rms_norm(x[r]) for `rows` rows of `n` (x rows `x_stride` apart, out contiguous)
void ragkv_rms_norm_rows(const float* x, int64_t x_stride, const float* weight, float* out,
                         int64_t rows, int64_t n, float eps, int64_t threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t r = 0; r < rows; ++r) rms_norm_row(x + r * x_stride, weight, out + r * n, n, eps);
}

// total[r] = x[r] + delta[r]; normed[r] = rms_norm(total[r]) (all contiguous `[rows, n]`)
void ragkv_add_rms_norm_rows(const float* x, const float* delta, const float* weight,
                             float* total, float* normed, int64_t rows, int64_t n, float eps,
                             int64_t threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t r = 0; r < rows; ++r) {
    const float *a = x + r * n, *b = delta + r * n;
    float* t = total + r * n;
    for (int64_t i = 0; i < n; ++i) t[i] = a[i] + b[i];
    rms_norm_row(t, weight, normed + r * n, n, eps);
  }
}

// act[r] = silu(gate_up[r][:inter]) * gate_up[r][inter:] (`[rows, 2 inter]` -> `[rows, inter]`)
void ragkv_silu_mul_rows(const float* gate_up, float* act, int64_t rows, int64_t inter,
                         int64_t threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t r = 0; r < rows; ++r) {
    const float* gu = gate_up + r * 2 * inter;
    silu_mul(gu, gu + inter, act + r * inter, inter);
  }
}

// Rotate-half RoPE in place of `heads` heads of `dim` in each of `rows` rows (`x_stride`
// apart; heads contiguous within a row) by row r's cos/sin `[dim]` (halves duplicated).
void ragkv_rope_rows(float* x, int64_t x_stride, int64_t heads, int64_t dim, const float* cos,
                     const float* sin, int64_t rows, int64_t threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t r = 0; r < rows; ++r) rope(x + r * x_stride, heads, dim, cos + r * dim, sin + r * dim);
}
