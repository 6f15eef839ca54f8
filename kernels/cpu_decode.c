// One decode step of one sequence through a whole Llama-family model, in one call (x86-64
// CPUs with AVX2, FMA and F16C). The torch path runs the same step as ~1,300 small ATen ops
// (norms, casts, RoPE, KV writes, SDPA, SwiGLU) around the GEMVs; here each layer is its
// four GEMVs plus a few loops over a few hundred floats, inside one OpenMP parallel region.
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

// y[r] = sum_c w[r, c] x[c] for the rows of this thread (an orphaned `omp for`: called
// inside the step's parallel region; its implicit barrier ends the product).
ISA static void gemv(const uint16_t* w, const float* x, float* y, int64_t rows, int64_t cols) {
#pragma omp for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
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

// One query per head over `n` keys at `slots` (softmax in float32); heads split by thread.
static void attention(const Shape* s, const Layer* layer, const float* q, const int64_t* slots,
                      int64_t n, float* scores, float* out) {
  int64_t d = s->head_dim, kh = s->num_kv_heads, group = s->num_heads / kh;
#pragma omp for schedule(static)
  for (int64_t h = 0; h < s->num_heads; ++h) {
    const float* qh = q + h * d;
    float* p = scores + h * n;
    int64_t kv = h / group;
    float best = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      const float* k = layer->k_cache + (slots[j] * kh + kv) * d;
      float dot = 0.0f;
      for (int64_t i = 0; i < d; ++i) dot += qh[i] * k[i];
      p[j] = dot * s->scale;
      if (p[j] > best) best = p[j];
    }
    float total = 0.0f;
    for (int64_t j = 0; j < n; ++j) total += (p[j] = expf(p[j] - best));
    float* o = out + h * d;
    for (int64_t i = 0; i < d; ++i) o[i] = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      const float* v = layer->v_cache + (slots[j] * kh + kv) * d;
      float w = p[j] / total;
      for (int64_t i = 0; i < d; ++i) o[i] += w * v[i];
    }
  }
}

// The first half of a layer: norm, QKV, bias, RoPE, this token's K/V into the cache at
// `slot`, attention over `slots` (the last of which is `slot`), output projection.
static void attention_block(const Shape* s, const Layer* layer, const float* hidden,
                            const float* cos, const float* sin, int64_t slot,
                            const int64_t* slots, int64_t n, float* work, float* scores,
                            float* delta) {
  int64_t d = s->head_dim, q_width = s->num_heads * d, kv_width = s->num_kv_heads * d;
  float* x = work;
  float* qkv = x + s->hidden;
  float* attended = qkv + q_width + 2 * kv_width;
#pragma omp single
  rms_norm(hidden, layer->attn_norm, x, s->hidden, s->eps);
  gemv(layer->wqkv, x, qkv, q_width + 2 * kv_width, s->hidden);
#pragma omp single
  {
    if (layer->bqkv)
      for (int64_t i = 0; i < q_width + 2 * kv_width; ++i) qkv[i] += layer->bqkv[i];
    rope(qkv, s->num_heads + s->num_kv_heads, d, cos, sin);
    for (int64_t i = 0; i < kv_width; ++i) {
      layer->k_cache[slot * kv_width + i] = qkv[q_width + i];
      layer->v_cache[slot * kv_width + i] = qkv[q_width + kv_width + i];
    }
  }
  attention(s, layer, qkv, slots, n, scores, attended);
  gemv(layer->wo, attended, delta, s->hidden, q_width);
}

// The second half: residual, norm, SwiGLU MLP, residual.
static void mlp_block(const Shape* s, const Layer* layer, float* hidden, float* work,
                      float* delta) {
  int64_t inter = s->intermediate;
  float* x = work;
  float* gate_up = x + s->hidden;
  float* act = gate_up + 2 * inter;
#pragma omp single
  {
    for (int64_t i = 0; i < s->hidden; ++i) hidden[i] += delta[i];
    rms_norm(hidden, layer->ffn_norm, x, s->hidden, s->eps);
  }
  gemv(layer->w_gate_up, x, gate_up, 2 * inter, s->hidden);
#pragma omp single
  for (int64_t i = 0; i < inter; ++i) {
    float g = gate_up[i];
    act[i] = g / (1.0f + expf(-g)) * gate_up[inter + i];
  }
  gemv(layer->w_down, act, delta, s->hidden, inter);
#pragma omp single
  for (int64_t i = 0; i < s->hidden; ++i) hidden[i] += delta[i];
}

// The step: `hidden` [hidden] holds the token's embedding on entry (and the last layer's
// output on return); `logits` [vocab] receives the head's output. `work` holds at least
// `ragkv_work_floats(shape)` floats. Returns 0, or -1 when scratch memory ran out.
int64_t ragkv_work_floats(const Shape* s) {
  int64_t qkv = (s->num_heads + 2 * s->num_kv_heads) * s->head_dim;
  int64_t attn = s->hidden + qkv + s->num_heads * s->head_dim;
  int64_t mlp = s->hidden + 3 * s->intermediate;
  return (attn > mlp ? attn : mlp) + s->hidden;  // + the residual delta
}

int ragkv_decode_step(const Shape* s, const Layer* layers, const float* final_norm,
                      const uint16_t* lm_head, float* hidden, const float* cos,
                      const float* sin, int64_t slot, const int64_t* slots, int64_t n,
                      float* work, float* logits) {
  float* scores = malloc(sizeof(float) * s->num_heads * n);
  if (!scores) return -1;
  float* delta = work + ragkv_work_floats(s) - s->hidden;
#pragma omp parallel num_threads(s->threads)
  {
    for (int64_t l = 0; l < s->num_layers; ++l) {
      attention_block(s, &layers[l], hidden, cos, sin, slot, slots, n, work, scores, delta);
      mlp_block(s, &layers[l], hidden, work, delta);
    }
#pragma omp single
    rms_norm(hidden, final_norm, work, s->hidden, s->eps);
    gemv(lm_head, work, logits, s->vocab, s->hidden);
  }
  free(scores);
  return 0;
}
