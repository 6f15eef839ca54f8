// One decode step of B sequences (one new token each) through a whole Llama-family model, in
// one call (x86-64 CPUs with AVX2, FMA and F16C). The torch path runs the same step as ~1,300
// small ATen ops (norms, casts, RoPE, KV writes, SDPA, SwiGLU) around the products; here each
// layer is its four products plus a few loops over a few hundred floats a row, inside one
// OpenMP parallel region. The products read each float16 weight once per step for all rows.
//
// Weights are float16 `[out, in]` (the engine's decode copies); activations, norms, the KV
// cache and every accumulation are float32: unlike the torch float16 path, the activation
// is never rounded to float16 before a product, so the step is closer to the float32 model
// and a float16 product cannot overflow. Reference: the torch path (`tests/kernels`).
//
// Built and loaded by `kernels/cpu_decode.py` (cc -O3 -fopenmp; libgomp resolves to the one
// torch has loaded). Kernels carry their ISA as a function attribute, so the library loads on
// any x86-64 CPU and `ragkv_cpu_supported` says whether they may run.

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#define ISA __attribute__((target("avx2,fma,f16c")))
#define PREFETCH_BYTES 2048  // ahead of the row being read: ~23 GB/s vs ~15 without

typedef struct {
  int64_t hidden, num_heads, num_kv_heads, head_dim, intermediate, vocab, num_layers;
  int64_t threads;
  float eps, scale;
} Shape;

typedef struct {
  const float* attn_norm;     // [hidden]
  const uint16_t* wqkv;       // float16 [(H + 2 KH) D, hidden]
  const float* bqkv;          // [(H + 2 KH) D] or NULL
  const uint16_t* wo;         // float16 [hidden, H D]
  const float* ffn_norm;      // [hidden]
  const uint16_t* w_gate_up;  // float16 [2 I, hidden]: gate rows, then up rows
  const uint16_t* w_down;     // float16 [hidden, I]
  float* k_cache;             // [slots, KH, D]
  float* v_cache;             // [slots, KH, D]
} Layer;

int ragkv_cpu_supported(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}

ISA static inline float hsum(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}

ISA static inline __m256 load8(const uint16_t* w) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)w));
}

// e^x for 8 floats (Cephes' single-precision polynomial, relative error ~2e-7; inputs
// clamped to [-87, 88.38]: below -87 the power of two would leave the normal range, so e^x
// there is e^-87 = 1.6e-38, not 0; callers that need exact zeros (masked keys) write them).
ISA static inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)),
                    _mm256_set1_ps(88.3762626647949f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  __m256i scale = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(scale));
}

// sum_i a[i] b[i]
ISA static inline float dot(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float sum = hsum(acc);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// y[i] += w x[i]
ISA static inline void axpy(float w, const float* x, float* y, int64_t n) {
  __m256 wv = _mm256_set1_ps(w);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += w * x[i];
}

// p[j] = e^(p[j] - max), returning their sum (softmax numerators)
ISA static float exp_shifted(float* p, int64_t n, float max) {
  __m256 acc = _mm256_setzero_ps(), m = _mm256_set1_ps(max);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + j), m));
    _mm256_storeu_ps(p + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  float total = hsum(acc);
  for (; j < n; ++j) total += (p[j] = expf(p[j] - max));
  return total;
}

// act[i] = silu(gate[i]) up[i] = gate[i] / (1 + e^-gate[i]) up[i]
ISA static void silu_mul(const float* gate, const float* up, float* act, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 g = _mm256_loadu_ps(gate + i);
    __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    __m256 silu = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    _mm256_storeu_ps(act + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) act[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

// y[r] = sum_c w[r, c] x[c], one input row: streams the weights (memory-bound).
ISA static void gemv_rows(const uint16_t* w, const float* x, float* y, int64_t r0, int64_t r1,
                          int64_t cols) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* row = w + r * cols;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t c = 0;
    for (; c + 32 <= cols; c += 32) {
      _mm_prefetch((const char*)(row + c) + PREFETCH_BYTES, _MM_HINT_T0);
      a0 = _mm256_fmadd_ps(load8(row + c), _mm256_loadu_ps(x + c), a0);
      a1 = _mm256_fmadd_ps(load8(row + c + 8), _mm256_loadu_ps(x + c + 8), a1);
      a2 = _mm256_fmadd_ps(load8(row + c + 16), _mm256_loadu_ps(x + c + 16), a2);
      a3 = _mm256_fmadd_ps(load8(row + c + 24), _mm256_loadu_ps(x + c + 24), a3);
    }
    for (; c + 8 <= cols; c += 8) a0 = _mm256_fmadd_ps(load8(row + c), _mm256_loadu_ps(x + c), a0);
    float sum = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; c < cols; ++c) sum += _cvtsh_ss(row[c]) * x[c];
    y[r] = sum;
  }
}

// out = x * rsqrt(mean(x^2) + eps) * weight
static void rms_norm(const float* x, const float* weight, float* out, int64_t n, float eps) {
  double squares = 0.0;
  for (int64_t i = 0; i < n; ++i) squares += (double)x[i] * x[i];
  float inv = 1.0f / sqrtf((float)(squares / n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv * weight[i];
}

// Rotate-half RoPE of `heads` heads of `dim` in place; cos/sin [dim] (halves duplicated).
static void rope(float* x, int64_t heads, int64_t dim, const float* cos, const float* sin) {
  int64_t half = dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* v = x + h * dim;
    for (int64_t i = 0; i < half; ++i) {
      float a = v[i], b = v[i + half];
      v[i] = a * cos[i] - b * sin[i];
      v[i + half] = b * cos[i + half] + a * sin[i + half];
    }
  }
}

// Rows [r0, r1) of y[b] = w x[b] for a tile of 4 inputs, two weight rows at a time: each
// float16 weight is converted once and used four times, and 8 independent sums keep both FMA
// pipes busy (4 sums were bound by the FMA latency), so several sequences cost little more
// than one while memory-bound.
ISA static void gemm_tile4(const uint16_t* w, const float* x, int64_t x_stride, float* y,
                           int64_t y_stride, int64_t r0, int64_t r1, int64_t cols) {
  const float* xs[4] = {x, x + x_stride, x + 2 * x_stride, x + 3 * x_stride};
  int64_t r = r0;
  for (; r + 2 <= r1; r += 2) {
    const uint16_t *row0 = w + r * cols, *row1 = row0 + cols;
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00;
    __m256 a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8) {
      if ((c & 31) == 0) {
        _mm_prefetch((const char*)(row0 + c) + PREFETCH_BYTES, _MM_HINT_T0);
        _mm_prefetch((const char*)(row1 + c) + PREFETCH_BYTES, _MM_HINT_T0);
      }
      __m256 w0 = load8(row0 + c), w1 = load8(row1 + c), xv;
      xv = _mm256_loadu_ps(xs[0] + c);
      a00 = _mm256_fmadd_ps(w0, xv, a00), a01 = _mm256_fmadd_ps(w1, xv, a01);
      xv = _mm256_loadu_ps(xs[1] + c);
      a10 = _mm256_fmadd_ps(w0, xv, a10), a11 = _mm256_fmadd_ps(w1, xv, a11);
      xv = _mm256_loadu_ps(xs[2] + c);
      a20 = _mm256_fmadd_ps(w0, xv, a20), a21 = _mm256_fmadd_ps(w1, xv, a21);
      xv = _mm256_loadu_ps(xs[3] + c);
      a30 = _mm256_fmadd_ps(w0, xv, a30), a31 = _mm256_fmadd_ps(w1, xv, a31);
    }
    float s0[4] = {hsum(a00), hsum(a10), hsum(a20), hsum(a30)};
    float s1[4] = {hsum(a01), hsum(a11), hsum(a21), hsum(a31)};
    for (; c < cols; ++c) {
      float w0 = _cvtsh_ss(row0[c]), w1 = _cvtsh_ss(row1[c]);
      for (int j = 0; j < 4; ++j) s0[j] += w0 * xs[j][c], s1[j] += w1 * xs[j][c];
    }
    for (int j = 0; j < 4; ++j) y[j * y_stride + r] = s0[j], y[j * y_stride + r + 1] = s1[j];
  }
  for (int j = 0; r < r1 && j < 4; ++j) gemv_rows(w, xs[j], y + j * y_stride, r, r1, cols);
}

// Y[b] = W X[b] for `batch` inputs (rows of X and Y `x_stride`, `y_stride` apart), the weight
// rows split between threads (an orphaned `omp for`, called inside the step's parallel
// region; its implicit barrier ends the product). Blocks of weight rows stay in cache while
// every tile of 4 inputs passes over them.
ISA static void gemm(const uint16_t* w, const float* x, int64_t x_stride, float* y,
                     int64_t y_stride, int64_t rows, int64_t cols, int64_t batch) {
  const int64_t block = 16;  // 16 rows of 576 float16 weights: 18 KB, within L1
#pragma omp for schedule(static)
  for (int64_t r0 = 0; r0 < rows; r0 += block) {
    int64_t r1 = r0 + block < rows ? r0 + block : rows;
    int64_t b = 0;
    for (; b + 4 <= batch && batch > 1; b += 4)
      gemm_tile4(w, x + b * x_stride, x_stride, y + b * y_stride, y_stride, r0, r1, cols);
    for (; b < batch; ++b) gemv_rows(w, x + b * x_stride, y + b * y_stride, r0, r1, cols);
  }
}

// p[j] = scale * q . k_j for the keys at `base + slots[j] * stride`, four keys at a time (four
// independent sums: one sum per key waited on the FMA latency).
ISA static void scores_of(const float* q, const float* base, int64_t stride, const int64_t* slots,
                          int64_t n, int64_t d, float scale, float* p) {
  int64_t j = 0;
  if (d % 8 == 0) {
    for (; j + 4 <= n; j += 4) {
      const float *k0 = base + slots[j] * stride, *k1 = base + slots[j + 1] * stride;
      const float *k2 = base + slots[j + 2] * stride, *k3 = base + slots[j + 3] * stride;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t i = 0; i < d; i += 8) {
        __m256 qv = _mm256_loadu_ps(q + i);
        a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + i), a0);
        a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + i), a1);
        a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + i), a2);
        a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + i), a3);
      }
      // the four sums at once: lanes (a0, a1, a2, a3) of each 128-bit half, then the halves
      __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
      __m128 sums = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
      _mm_storeu_ps(p + j, _mm_mul_ps(sums, _mm_set1_ps(scale)));
    }
  }
  for (; j < n; ++j) p[j] = dot(q, base + slots[j] * stride, d) * scale;
}

// o = sum_j p[j] inv_total v_j for the values at `base + slots[j] * stride`; for head_dim 64
// the sum stays in 8 registers over every key (no store per key).
ISA static void weighted_values(const float* p, float inv_total, const float* base, int64_t stride,
                                const int64_t* slots, int64_t n, int64_t d, float* o) {
  if (d == 64) {
    __m256 acc[8];
    for (int v = 0; v < 8; ++v) acc[v] = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      const float* vj = base + slots[j] * stride;
      __m256 w = _mm256_set1_ps(p[j] * inv_total);
      for (int v = 0; v < 8; ++v) acc[v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vj + 8 * v), acc[v]);
    }
    for (int v = 0; v < 8; ++v) _mm256_storeu_ps(o + 8 * v, acc[v]);
    return;
  }
  for (int64_t i = 0; i < d; ++i) o[i] = 0.0f;
  for (int64_t j = 0; j < n; ++j) axpy(p[j] * inv_total, base + slots[j] * stride, o, d);
}

// One query per (row, head) over that row's keys (softmax in float32), split by thread. Row
// b's keys are at slots[slot_start[b] + j] for j < num_keys[b]. With enough rows a task is a
// row's KV head and its group of query heads, one after another: the group's later heads read
// the keys and values from L1 (one task per head re-read them from L2/L3: at 16 rows attention
// took half as long as the products); with few rows, one head per task keeps both threads busy.
ISA static void attention(const Shape* s, const Layer* layer, const float* q, int64_t q_stride,
                      const int64_t* slots, const int64_t* slot_start, const int64_t* num_keys,
                      int64_t batch, float* scores, const int64_t* score_start, float* out,
                      int64_t out_stride) {
  int64_t d = s->head_dim, kh = s->num_kv_heads, heads = s->num_heads, group = heads / kh;
  int64_t per_task = batch * kh >= 4 * s->threads ? group : 1;
#pragma omp for schedule(dynamic, 1)
  for (int64_t task = 0; task < batch * heads / per_task; ++task) {
    int64_t b = task * per_task / heads, first = task * per_task % heads, n = num_keys[b];
    const int64_t* keys = slots + slot_start[b];
    for (int64_t h = first; h < first + per_task; ++h) {
      int64_t kv = h / group;
      const float* qh = q + b * q_stride + h * d;
      float* p = scores + score_start[b] * heads + h * n;
      scores_of(qh, layer->k_cache + kv * d, kh * d, keys, n, d, s->scale, p);
      float best = -INFINITY;
      for (int64_t j = 0; j < n; ++j) best = p[j] > best ? p[j] : best;
      float inv_total = 1.0f / exp_shifted(p, n, best);
      float* o = out + b * out_stride + h * d;
      weighted_values(p, inv_total, layer->v_cache + kv * d, kh * d, keys, n, d, o);
    }
  }
}

#include "cpu_bf16.c"  // the bfloat16 products of batched steps

// Per-step scratch: per row x, qkv, attended, gate/up, activation and the residual delta;
// with bfloat16 weights (`packed_bf16`), the rows rounded to bfloat16 (`xb`).
typedef struct {
  float *x, *qkv, *attended, *gate_up, *act, *delta, *scores;
  uint16_t* xb;
  int64_t qkv_width, score_floats, packed_bf16;
  const int64_t *slots, *slot_start, *num_keys, *write_slots;
  int64_t* score_start;
  const float *cos, *sin;
  int64_t batch;
} Step;

// Y = W X for the step's rows: float16 weights `[out, in]`, or packed bfloat16 panels.
static void product(const Step* t, const uint16_t* w, const float* x, int64_t x_stride, float* y,
                    int64_t y_stride, int64_t rows, int64_t cols) {
  if (t->packed_bf16)
    gemm_bf16(w, x, x_stride, y, y_stride, rows, cols, t->batch, t->xb);
  else
    gemm(w, x, x_stride, y, y_stride, rows, cols, t->batch);
}

// The first half of a layer for every row: norm, QKV, bias, RoPE, the token's K/V into the
// cache at its write slot, attention over the row's keys (the last of which is that slot),
// output projection into `delta`.
static void attention_block(const Shape* s, const Layer* layer, const float* hidden,
                            const Step* t) {
  int64_t d = s->head_dim, q_width = s->num_heads * d, kv_width = s->num_kv_heads * d;
  int64_t n = t->batch, qkv_w = t->qkv_width;
#pragma omp for schedule(static)
  for (int64_t b = 0; b < n; ++b)
    rms_norm(hidden + b * s->hidden, layer->attn_norm, t->x + b * s->hidden, s->hidden, s->eps);
  product(t, layer->wqkv, t->x, s->hidden, t->qkv, qkv_w, qkv_w, s->hidden);
#pragma omp for schedule(static)
  for (int64_t b = 0; b < n; ++b) {
    float* qkv = t->qkv + b * qkv_w;
    if (layer->bqkv)
      for (int64_t i = 0; i < qkv_w; ++i) qkv[i] += layer->bqkv[i];
    rope(qkv, s->num_heads + s->num_kv_heads, d, t->cos + b * d, t->sin + b * d);
    int64_t slot = t->write_slots[b];
    for (int64_t i = 0; i < kv_width; ++i) {
      layer->k_cache[slot * kv_width + i] = qkv[q_width + i];
      layer->v_cache[slot * kv_width + i] = qkv[q_width + kv_width + i];
    }
  }
  attention(s, layer, t->qkv, qkv_w, t->slots, t->slot_start, t->num_keys, n, t->scores,
            t->score_start, t->attended, q_width);
  product(t, layer->wo, t->attended, q_width, t->delta, s->hidden, s->hidden, q_width);
}

// The second half: residual, norm, SwiGLU MLP, residual.
static void mlp_block(const Shape* s, const Layer* layer, float* hidden, const Step* t) {
  int64_t inter = s->intermediate, h = s->hidden, n = t->batch;
#pragma omp for schedule(static)
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t i = 0; i < h; ++i) hidden[b * h + i] += t->delta[b * h + i];
    rms_norm(hidden + b * h, layer->ffn_norm, t->x + b * h, h, s->eps);
  }
  product(t, layer->w_gate_up, t->x, h, t->gate_up, 2 * inter, 2 * inter, h);
#pragma omp for schedule(static)
  for (int64_t b = 0; b < n; ++b) {
    const float* gu = t->gate_up + b * 2 * inter;
    silu_mul(gu, gu + inter, t->act + b * inter, inter);
  }
  product(t, layer->w_down, t->act, inter, t->delta, h, h, inter);
#pragma omp for schedule(static)
  for (int64_t b = 0; b < n; ++b)
    for (int64_t i = 0; i < h; ++i) hidden[b * h + i] += t->delta[b * h + i];
}

// Floats of scratch a step of `batch` rows attending to `keys` keys in all needs.
int64_t ragkv_scratch_floats(const Shape* s, int64_t batch, int64_t keys) {
  int64_t qkv = (s->num_heads + 2 * s->num_kv_heads) * s->head_dim;
  int64_t per_row = 2 * s->hidden + qkv + s->num_heads * s->head_dim + 3 * s->intermediate;
  int64_t widest = s->hidden > s->intermediate ? s->hidden : s->intermediate;
  widest = widest > s->num_heads * s->head_dim ? widest : s->num_heads * s->head_dim;
  int64_t halves = (batch + MR) * (widest + 2);  // `xb`: rows padded to MR, inputs to pairs
  return batch * per_row + keys * s->num_heads + halves / 2 + 16;
}

// The step over `batch` rows: `hidden [batch, hidden]` holds the tokens' embeddings on entry
// (the last layer's outputs on return); `cos, sin [batch, head_dim]` their rotations;
// `write_slots [batch]` where their K/V go; row b attends to the keys at
// `slots[slot_start[b] + j]`, j < num_keys[b]; `logits [batch, vocab]` receives the head's
// output; `packed_bf16`: the layers' weights are packed bfloat16 panels and `lm_head` float16
// panels (`cpu_bf16.c`), not float16 `[out, in]`, and `ragkv_bf16_supported()` said yes;
// `scratch` holds `ragkv_scratch_floats` floats (the caller's, kept between steps:
// a fresh allocation this size is a fresh mapping, page faults included, on every step).
void ragkv_decode_step(const Shape* s, const Layer* layers, const float* final_norm,
                       const uint16_t* lm_head, int64_t batch, int64_t packed_bf16,
                       float* hidden, const float* cos,
                       const float* sin, const int64_t* write_slots, const int64_t* slots,
                       const int64_t* slot_start, const int64_t* num_keys, float* scratch,
                       float* logits) {
  Step t = {.batch = batch, .packed_bf16 = packed_bf16, .cos = cos, .sin = sin, .write_slots = write_slots,
            .slots = slots, .slot_start = slot_start, .num_keys = num_keys};
  t.qkv_width = (s->num_heads + 2 * s->num_kv_heads) * s->head_dim;
  int64_t q_width = s->num_heads * s->head_dim, keys = 0;
  for (int64_t b = 0; b < batch; ++b) keys += num_keys[b];
  t.x = scratch, t.qkv = t.x + batch * s->hidden, t.attended = t.qkv + batch * t.qkv_width;
  t.gate_up = t.attended + batch * q_width, t.act = t.gate_up + batch * 2 * s->intermediate;
  t.delta = t.act + batch * s->intermediate, t.scores = t.delta + batch * s->hidden;
  t.xb = (uint16_t*)(t.scores + keys * s->num_heads);
  int64_t score_start[batch + 1];
  t.score_start = score_start;
  score_start[0] = 0;
  for (int64_t b = 0; b < batch; ++b) score_start[b + 1] = score_start[b] + num_keys[b];
#pragma omp parallel num_threads(s->threads)
  {
    for (int64_t l = 0; l < s->num_layers; ++l) {
      attention_block(s, &layers[l], hidden, &t);
      mlp_block(s, &layers[l], hidden, &t);
    }
#pragma omp for schedule(static)
    for (int64_t b = 0; b < batch; ++b)
      rms_norm(hidden + b * s->hidden, final_norm, t.x + b * s->hidden, s->hidden, s->eps);
    if (packed_bf16)
      gemm_head_f16(lm_head, t.x, s->hidden, logits, s->vocab, s->vocab, s->hidden, batch);
    else
      gemm(lm_head, t.x, s->hidden, logits, s->vocab, s->vocab, s->hidden, batch);
  }
}

#include "cpu_attention.c"  // shares the helpers above; one library
#include "cpu_pointwise.c"
