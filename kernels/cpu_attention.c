// Causal attention of one sequence's queries over its paged KV, float32 (x86-64 with AVX2 and
// FMA; built into the same library as `cpu_decode.c`, whose helpers it includes).
//
// Query t sits at position pos[t] (ascending) and sees the keys at positions 0..pos[t], key j
// stored at `slots[j]`: a plain prefill (pos = 0..T-1), a prefill after cached KV (pos =
// P..P+T-1) and a decode (T = 1) are the same call, reading the pool in place (no gather, no
// mask tensor). FlashAttention-style: a task is a KV head and 16 query positions (the group's
// query heads with them: rows = heads x positions); keys go by in tiles of 16 with an online
// softmax. The rows sit in vector lanes (q and the output are transposed once per task), so
// scores, their maxima, exponentials and the value sums are all 8 rows at a time and a key
// tile needs no transposing. Every row's sums run in the same order whatever the other rows
// of its task, so a row's result does not depend on how the prompt was split into steps.
// Reference: `kernels/ops.py` (`paged_attention_ref`); tests compare the two.

#define QUERY_BLOCK 16
#define KEY_TILE 16
#define LANES 16  // rows per register block: two vectors

typedef struct {
  int64_t rows;    // real query rows of the task: heads of the group x positions
  int64_t padded;  // rows rounded up to LANES (padding repeats the last real row)
  int64_t first;   // first query index of the task
  int64_t count;   // query positions in the task
  int64_t group;   // query heads per KV head
  int64_t kv;      // the KV head
} Task;

// st[k][r] = qt[.][r] . key_k for one block of LANES rows (qt: [d][padded], pre-scaled) and
// the `n` keys of a tile, four keys at a time (8 independent sums).
ISA static void tile_scores(const float* qt, int64_t padded, const float* const* keys,
                            int64_t n, int64_t d, float* st) {
  for (int64_t k = 0; k < n; k += 4) {
    const float* kp[4];
    for (int j = 0; j < 4; ++j) kp[j] = keys[k + j < n ? k + j : n - 1];
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00;
    __m256 a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    for (int64_t i = 0; i < d; ++i) {
      __m256 q0 = _mm256_loadu_ps(qt + i * padded), q1 = _mm256_loadu_ps(qt + i * padded + 8);
      __m256 k0 = _mm256_broadcast_ss(kp[0] + i), k1 = _mm256_broadcast_ss(kp[1] + i);
      __m256 k2 = _mm256_broadcast_ss(kp[2] + i), k3 = _mm256_broadcast_ss(kp[3] + i);
      a00 = _mm256_fmadd_ps(k0, q0, a00), a01 = _mm256_fmadd_ps(k0, q1, a01);
      a10 = _mm256_fmadd_ps(k1, q0, a10), a11 = _mm256_fmadd_ps(k1, q1, a11);
      a20 = _mm256_fmadd_ps(k2, q0, a20), a21 = _mm256_fmadd_ps(k2, q1, a21);
      a30 = _mm256_fmadd_ps(k3, q0, a30), a31 = _mm256_fmadd_ps(k3, q1, a31);
    }
    __m256 acc[4][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31}};
    for (int j = 0; j < 4 && k + j < n; ++j) {
      _mm256_storeu_ps(st + (k + j) * LANES, acc[j][0]);
      _mm256_storeu_ps(st + (k + j) * LANES + 8, acc[j][1]);
    }
  }
}

// One block of LANES rows through one key tile (keys j0..j0+n-1): mask, online softmax, and
// ot[i][rows] = ot * correction + sum_k v_k[i] p[k][rows], four dims at a time.
ISA static void tile_update(float* st, int64_t n, int64_t j0, const float* posv, float* m,
                            float* l, float* ot, int64_t padded, const float* const* values,
                            int64_t d) {
  __m256 neg_inf = _mm256_set1_ps(-INFINITY), zero = _mm256_setzero_ps();
  for (int h = 0; h < 2; ++h) {  // the block's two vectors of rows
    __m256 pos = _mm256_loadu_ps(posv + 8 * h), best = _mm256_loadu_ps(m + 8 * h);
    for (int64_t k = 0; k < n; ++k) {
      __m256 hidden = _mm256_cmp_ps(pos, _mm256_set1_ps((float)(j0 + k)), _CMP_LT_OQ);
      __m256 sk = _mm256_blendv_ps(_mm256_loadu_ps(st + k * LANES + 8 * h), neg_inf, hidden);
      _mm256_storeu_ps(st + k * LANES + 8 * h, sk);
      best = _mm256_max_ps(best, sk);
    }
    // rows that have seen no key yet keep -inf: shift by 0 there (their weights stay 0)
    __m256 none = _mm256_cmp_ps(best, neg_inf, _CMP_EQ_OQ);
    __m256 shift = _mm256_blendv_ps(best, zero, none);
    __m256 old = _mm256_loadu_ps(m + 8 * h);
    __m256 corr = _mm256_blendv_ps(exp8(_mm256_sub_ps(old, shift)), zero,
                                   _mm256_cmp_ps(old, neg_inf, _CMP_EQ_OQ));
    __m256 total = _mm256_mul_ps(_mm256_loadu_ps(l + 8 * h), corr);
    for (int64_t k = 0; k < n; ++k) {
      __m256 sk = _mm256_loadu_ps(st + k * LANES + 8 * h);
      __m256 pk = _mm256_blendv_ps(exp8(_mm256_sub_ps(sk, shift)), zero,
                                   _mm256_cmp_ps(sk, neg_inf, _CMP_EQ_OQ));
      _mm256_storeu_ps(st + k * LANES + 8 * h, pk);
      total = _mm256_add_ps(total, pk);
    }
    _mm256_storeu_ps(l + 8 * h, total);
    _mm256_storeu_ps(m + 8 * h, best);
    _mm256_storeu_ps(st + n * LANES + 8 * h, corr);  // the tile's corrections, after the weights
  }
  __m256 c0 = _mm256_loadu_ps(st + n * LANES), c1 = _mm256_loadu_ps(st + n * LANES + 8);
  int64_t i = 0;
  for (; i + 4 <= d; i += 4) {
    __m256 acc[4][2];
    for (int e = 0; e < 4; ++e) {
      acc[e][0] = _mm256_mul_ps(_mm256_loadu_ps(ot + (i + e) * padded), c0);
      acc[e][1] = _mm256_mul_ps(_mm256_loadu_ps(ot + (i + e) * padded + 8), c1);
    }
    for (int64_t k = 0; k < n; ++k) {
      __m256 p0 = _mm256_loadu_ps(st + k * LANES), p1 = _mm256_loadu_ps(st + k * LANES + 8);
      for (int e = 0; e < 4; ++e) {
        __m256 v = _mm256_broadcast_ss(values[k] + i + e);
        acc[e][0] = _mm256_fmadd_ps(v, p0, acc[e][0]);
        acc[e][1] = _mm256_fmadd_ps(v, p1, acc[e][1]);
      }
    }
    for (int e = 0; e < 4; ++e) {
      _mm256_storeu_ps(ot + (i + e) * padded, acc[e][0]);
      _mm256_storeu_ps(ot + (i + e) * padded + 8, acc[e][1]);
    }
  }
  for (; i < d; ++i) {
    __m256 a0 = _mm256_mul_ps(_mm256_loadu_ps(ot + i * padded), c0);
    __m256 a1 = _mm256_mul_ps(_mm256_loadu_ps(ot + i * padded + 8), c1);
    for (int64_t k = 0; k < n; ++k) {
      __m256 v = _mm256_broadcast_ss(values[k] + i);
      a0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(st + k * LANES), a0);
      a1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(st + k * LANES + 8), a1);
    }
    _mm256_storeu_ps(ot + i * padded, a0);
    _mm256_storeu_ps(ot + i * padded + 8, a1);
  }
}

// One task: q transposed into lanes (pre-scaled), every key tile up to the task's last
// position, then the output transposed back.
ISA static void attention_task(const Task* task, const float* q, int64_t q_stride,
                               const float* k_cache, const float* v_cache, int64_t kh, int64_t d,
                               const int64_t* slots, const int64_t* pos, float scale, float* out,
                               int64_t out_stride) {
  int64_t padded = task->padded;
  int64_t qi[padded], head[padded];
  float posv[padded], m[padded], l[padded];
  float* qt = malloc(sizeof(float) * 2 * padded * d);
  float* ot = qt + padded * d;
  float st[(KEY_TILE + 1) * LANES];  // scores, then weights; the last row: corrections
  const float *keys[KEY_TILE], *values[KEY_TILE];
  for (int64_t r = 0; r < padded; ++r) {
    int64_t real = r < task->rows ? r : task->rows - 1;
    head[r] = task->kv * task->group + real / task->count;
    qi[r] = task->first + real % task->count;
    posv[r] = (float)pos[qi[r]];
    m[r] = -INFINITY, l[r] = 0.0f;
    const float* row = q + qi[r] * q_stride + head[r] * d;
    for (int64_t i = 0; i < d; ++i) qt[i * padded + r] = row[i] * scale, ot[i * padded + r] = 0;
  }
  int64_t last = pos[task->first + task->count - 1];  // the task's furthest key
  for (int64_t j0 = 0; j0 <= last; j0 += KEY_TILE) {
    int64_t n = last + 1 - j0 < KEY_TILE ? last + 1 - j0 : KEY_TILE;
    for (int64_t c = 0; c < n; ++c) {
      keys[c] = k_cache + (slots[j0 + c] * kh + task->kv) * d;
      values[c] = v_cache + (slots[j0 + c] * kh + task->kv) * d;
    }
    for (int64_t r = 0; r < padded; r += LANES) {
      tile_scores(qt + r, padded, keys, n, d, st);
      tile_update(st, n, j0, posv + r, m + r, l + r, ot + r, padded, values, d);
    }
  }
  for (int64_t r = 0; r < task->rows; ++r) {
    float* dst = out + qi[r] * out_stride + head[r] * d;
    for (int64_t i = 0; i < d; ++i) dst[i] = ot[i * padded + r] / l[r];
  }
  free(qt);
}

// Every sequence of a step in one call: sequence b's queries are rows q_start[b]..q_start[b+1]
// of q (and out), at positions pos[row]; its key j sits at slots[slot_start[b] + j]. q rows
// `q_stride` apart (heads contiguous in a row, `d` floats each), out rows `out_stride` apart;
// caches `[slots, kh, d]`. Tasks (a sequence's KV head and 16 of its query positions) are
// shared between the threads, the longest first within each sequence.
void ragkv_causal_attention(const float* q, int64_t q_stride, const float* k_cache,
                            const float* v_cache, int64_t heads, int64_t kh, int64_t d,
                            int64_t num_seqs, const int64_t* q_start, const int64_t* slots,
                            const int64_t* slot_start, const int64_t* pos, float scale,
                            float* out, int64_t out_stride, int64_t threads) {
  int64_t group = heads / kh, first_task[num_seqs + 1];
  first_task[0] = 0;
  for (int64_t b = 0; b < num_seqs; ++b) {
    int64_t blocks = (q_start[b + 1] - q_start[b] + QUERY_BLOCK - 1) / QUERY_BLOCK;
    first_task[b + 1] = first_task[b] + blocks * kh;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t index = 0; index < first_task[num_seqs]; ++index) {
    int64_t b = 0;
    while (first_task[b + 1] <= index) ++b;
    int64_t local = index - first_task[b], count_b = q_start[b + 1] - q_start[b];
    int64_t blocks = (count_b + QUERY_BLOCK - 1) / QUERY_BLOCK;
    int64_t block = blocks - 1 - local / kh;  // the longest (last) blocks first
    Task task = {.first = q_start[b] + block * QUERY_BLOCK, .group = group, .kv = local % kh};
    int64_t left = q_start[b + 1] - task.first;
    task.count = left < QUERY_BLOCK ? left : QUERY_BLOCK;
    task.rows = group * task.count;
    task.padded = (task.rows + LANES - 1) / LANES * LANES;
    attention_task(&task, q, q_stride, k_cache, v_cache, kh, d, slots + slot_start[b], pos,
                   scale, out, out_stride);
  }
}
