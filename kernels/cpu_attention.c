// Causal attention of one sequence's queries over its paged KV, float32 (x86-64 with AVX2 and
// FMA; built into the same library as `cpu_decode.c`, whose helpers it includes).
//
// Query t sits at position pos[t] (ascending) and sees the keys at positions 0..pos[t], key j
// stored at `slots[j]`: a plain prefill (pos = 0..T-1), a prefill after cached KV (pos =
// P..P+T-1) and a decode (T = 1) are the same call, reading the pool in place (no gather, no
// mask tensor). FlashAttention-style: per task (a KV head and 16 query positions, so the
// group's query heads share each transposed key tile) keys go by in tiles of 16 with an online
// softmax; every query row's sums run in the same order whatever the other rows of its task,
// so a row's result does not depend on how the prompt was split into steps.
// Reference: `kernels/ops.py` (`paged_attention_ref`); tests compare the two.

#define QUERY_BLOCK 16
#define KEY_TILE 16

typedef struct {
  int64_t rows;    // query rows of the task: heads of the group x positions
  int64_t first;   // first query index of the task
  int64_t count;   // query positions in the task
  int64_t group;   // query heads per KV head
  int64_t kv;      // the KV head
} Task;

// s[r][c] = scale * q_r . k_c for 4 query rows and a tile of 16 keys transposed (kt[i][c]).
ISA static void tile_scores4(const float* const q[4], const float* kt, int64_t d, float scale,
                             float* s) {
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00;
  __m256 a20 = a00, a21 = a00, a30 = a00, a31 = a00;
  for (int64_t i = 0; i < d; ++i) {
    __m256 k0 = _mm256_loadu_ps(kt + i * KEY_TILE), k1 = _mm256_loadu_ps(kt + i * KEY_TILE + 8);
    __m256 q0 = _mm256_broadcast_ss(q[0] + i), q1 = _mm256_broadcast_ss(q[1] + i);
    __m256 q2 = _mm256_broadcast_ss(q[2] + i), q3 = _mm256_broadcast_ss(q[3] + i);
    a00 = _mm256_fmadd_ps(q0, k0, a00), a01 = _mm256_fmadd_ps(q0, k1, a01);
    a10 = _mm256_fmadd_ps(q1, k0, a10), a11 = _mm256_fmadd_ps(q1, k1, a11);
    a20 = _mm256_fmadd_ps(q2, k0, a20), a21 = _mm256_fmadd_ps(q2, k1, a21);
    a30 = _mm256_fmadd_ps(q3, k0, a30), a31 = _mm256_fmadd_ps(q3, k1, a31);
  }
  __m256 sc = _mm256_set1_ps(scale);
  __m256 out[8] = {a00, a01, a10, a11, a20, a21, a30, a31};
  for (int v = 0; v < 8; ++v) _mm256_storeu_ps(s + 8 * v, _mm256_mul_ps(out[v], sc));
}

// o[r][0..d) += sum_c p[r][c] v_c[0..d) for 4 rows over a tile of `n` keys (rows of v at
// `vs[c]`), 16 dims at a time in registers.
ISA static void tile_values4(const float* p, const float* const* vs, int64_t n, int64_t d,
                             float* const o[4]) {
  for (int64_t i = 0; i + 16 <= d; i += 16) {
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00;
    __m256 a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    for (int64_t c = 0; c < n; ++c) {
      __m256 v0 = _mm256_loadu_ps(vs[c] + i), v1 = _mm256_loadu_ps(vs[c] + i + 8);
      __m256 p0 = _mm256_broadcast_ss(p + c), p1 = _mm256_broadcast_ss(p + KEY_TILE + c);
      __m256 p2 = _mm256_broadcast_ss(p + 2 * KEY_TILE + c);
      __m256 p3 = _mm256_broadcast_ss(p + 3 * KEY_TILE + c);
      a00 = _mm256_fmadd_ps(p0, v0, a00), a01 = _mm256_fmadd_ps(p0, v1, a01);
      a10 = _mm256_fmadd_ps(p1, v0, a10), a11 = _mm256_fmadd_ps(p1, v1, a11);
      a20 = _mm256_fmadd_ps(p2, v0, a20), a21 = _mm256_fmadd_ps(p2, v1, a21);
      a30 = _mm256_fmadd_ps(p3, v0, a30), a31 = _mm256_fmadd_ps(p3, v1, a31);
    }
    __m256 acc[4][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31}};
    for (int r = 0; r < 4; ++r) {
      _mm256_storeu_ps(o[r] + i, _mm256_add_ps(_mm256_loadu_ps(o[r] + i), acc[r][0]));
      _mm256_storeu_ps(o[r] + i + 8, _mm256_add_ps(_mm256_loadu_ps(o[r] + i + 8), acc[r][1]));
    }
  }
}

// One task: rows r = head_in_group * count + t (t < count); padded to a multiple of 4 rows
// that repeat the last real row (their results are dropped).
ISA static void attention_task(const Task* task, const float* q, int64_t q_stride,
                               const float* k_cache, const float* v_cache, int64_t kh, int64_t d,
                               const int64_t* slots, const int64_t* pos, float scale, float* out,
                               int64_t out_stride) {
  int64_t rows = task->rows, padded = (rows + 3) / 4 * 4;
  const float* qrow[padded];
  float* orow[padded];
  int64_t rpos[padded], head[padded], qi[padded];
  float o[padded * d], m[padded], l[padded];
  float kt[d * KEY_TILE], s[4 * KEY_TILE * (padded / 4)];
  const float* vs[KEY_TILE];
  for (int64_t r = 0; r < padded; ++r) {
    int64_t real = r < rows ? r : rows - 1;
    head[r] = task->kv * task->group + real / task->count;
    qi[r] = task->first + real % task->count;
    qrow[r] = q + qi[r] * q_stride + head[r] * d;
    orow[r] = o + r * d;
    rpos[r] = pos[qi[r]];
    m[r] = -INFINITY, l[r] = 0.0f;
    for (int64_t i = 0; i < d; ++i) orow[r][i] = 0.0f;
  }
  int64_t last = pos[task->first + task->count - 1];  // the task's furthest key
  for (int64_t j0 = 0; j0 <= last; j0 += KEY_TILE) {
    int64_t n = last + 1 - j0 < KEY_TILE ? last + 1 - j0 : KEY_TILE;
    for (int64_t c = 0; c < KEY_TILE; ++c) {
      const float* k = k_cache + (slots[j0 + (c < n ? c : 0)] * kh + task->kv) * d;
      for (int64_t i = 0; i < d; ++i) kt[i * KEY_TILE + c] = c < n ? k[i] : 0.0f;
      vs[c] = v_cache + (slots[j0 + (c < n ? c : 0)] * kh + task->kv) * d;
    }
    for (int64_t r = 0; r < padded; r += 4) {
      float* sr = s + r * KEY_TILE;
      tile_scores4(qrow + r, kt, d, scale, sr);
      for (int64_t k = 0; k < 4; ++k) {
        float* row = sr + k * KEY_TILE;
        int64_t seen = rpos[r + k] - j0 + 1;  // keys of the tile this row may see
        int64_t visible = seen < n ? (seen > 0 ? seen : 0) : n;
        float best = m[r + k];
        for (int64_t c = 0; c < visible; ++c) best = row[c] > best ? row[c] : best;
        if (visible > 0) {
          float correction = m[r + k] == -INFINITY ? 0.0f : expf(m[r + k] - best);
          l[r + k] = l[r + k] * correction + exp_shifted(row, visible, best);
          m[r + k] = best;
          for (int64_t i = 0; i < d; ++i) orow[r + k][i] *= correction;
        }
        for (int64_t c = visible; c < KEY_TILE; ++c) row[c] = 0.0f;  // masked: no weight
      }
      if (d % 16 == 0) {
        tile_values4(sr, vs, n, d, orow + r);
      } else {
        for (int64_t k = 0; k < 4; ++k)
          for (int64_t c = 0; c < n; ++c) axpy(sr[k * KEY_TILE + c], vs[c], orow[r + k], d);
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = out + qi[r] * out_stride + head[r] * d;
    for (int64_t i = 0; i < d; ++i) dst[i] = orow[r][i] / l[r];
  }
}

// out[t, h] for every query t < T and head h; q rows `q_stride` apart (heads contiguous in a
// row, `d` floats each), out rows `out_stride` apart; caches `[slots, kh, d]`.
void ragkv_causal_attention(const float* q, int64_t q_stride, const float* k_cache,
                            const float* v_cache, int64_t heads, int64_t kh, int64_t d,
                            const int64_t* slots, const int64_t* pos, int64_t T, float scale,
                            float* out, int64_t out_stride, int64_t threads) {
  int64_t group = heads / kh, blocks = (T + QUERY_BLOCK - 1) / QUERY_BLOCK;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t index = 0; index < blocks * kh; ++index) {
    int64_t block = blocks - 1 - index / kh;  // the longest (last) blocks first
    Task task = {.first = block * QUERY_BLOCK, .group = group, .kv = index % kh};
    task.count = T - task.first < QUERY_BLOCK ? T - task.first : QUERY_BLOCK;
    task.rows = group * task.count;
    attention_task(&task, q, q_stride, k_cache, v_cache, kh, d, slots, pos, scale, out,
                   out_stride);
  }
}
