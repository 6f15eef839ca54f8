// The products of a batched decode step in bfloat16 (x86-64 with AVX512-BF16: AMD Zen 4 and
// later, Intel Cooper Lake / Sapphire Rapids and later); included by `cpu_decode.c`.
//
// From about ten rows a decode step's products stop being memory-bound: every weight is used
// once per row and the FMA units are the limit. `vdpbf16ps` multiplies pairs of bfloat16
// values into float32 sums at twice the rate of float32 FMAs, so batched steps multiply
// bfloat16 weights by bfloat16-rounded activations (round to nearest even, as torch rounds)
// and keep every sum in float32. The numbers are those of the torch path's bfloat16 batch
// copies (`model.batch_dtype`), whose quality `benchmarks/batch_precision.py` measures; here
// the product's output stays float32 instead of being rounded to bfloat16 too.
//
// Packed weights (`pack_bf16_panels` in `kernels/cpu_decode.py`): a weight `[out, in]` is cut
// into panels of 16 output rows; panel p holds, for each pair of inputs kk, the 16 rows'
// (w[., 2kk], w[., 2kk + 1]) side by side, [kk][16][2] (rows and inputs zero-padded to 16 and
// 2). One 64-byte load then feeds `vdpbf16ps` for 16 outputs, the row's input pair broadcast.

#define BF16_ISA __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
// Register tiles (rows x panels of 16 outputs): 16 x 2 wherever 9 or more rows are left,
// else 8 x 3. Weights come from memory once per tile of 16 rows: at 16 rows a step's products
// took 12.0 ms on an AMD EPYC (Zen 4) against 15.7 ms in 8 x 3 tiles (two passes) and 14.6
// in 12 x 2; at 8 rows 8 x 3 was the faster (11.0 vs 12.0 ms).
#define BF16_PREFETCH_BYTES 2048  // ahead in each panel (weights stream from memory)
#define MR 16  // rows of the larger tile; `xb` holds the rows padded to a multiple of it

int ragkv_bf16_supported(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

// float -> bfloat16, round to nearest even (NaN stays NaN)
static inline uint16_t bf16_of(float f) {
  union { float f; uint32_t u; } v = {.f = f};
  if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40u);
  return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}

// xb[b][0..2kp) = bfloat16(x[b][0..cols)), zero beyond `cols`; rows b >= batch are all zero.
BF16_ISA static void to_bf16_rows(const float* x, int64_t x_stride, int64_t cols, int64_t batch,
                                  int64_t padded_batch, uint16_t* xb, int64_t kp) {
#pragma omp for schedule(static)
  for (int64_t b = 0; b < padded_batch; ++b) {
    uint16_t* out = xb + b * 2 * kp;
    int64_t c = 0;
    if (b < batch) {
      const float* row = x + b * x_stride;
      for (; c + 16 <= cols; c += 16)
        _mm256_storeu_si256((__m256i*)(out + c),
                            (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(row + c)));
      for (; c < cols; ++c) out[c] = bf16_of(row[c]);
    }
    for (; c < 2 * kp; ++c) out[c] = 0;
  }
}

// y[col0 + 16 n + i] = sums[n][i] for `count` panels, nothing at or past `outputs`.
BF16_ISA static inline void store_panels(float* y, const __m512* sums, int count, int64_t col0,
                                         int64_t outputs) {
  for (int n = 0; n < count; ++n) {
    int64_t c = col0 + 16 * n, left = outputs - c;
    __mmask16 keep = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
    _mm512_mask_storeu_ps(y + c, keep, sums[n]);
  }
}

// tile_MxN: y[m][col0 + 16 n + i] for M rows and N panels, the sums of each (row, output)
// over every input pair. Rows m >= `valid_rows` are not stored, nor outputs at or past
// `outputs`. One function per shape: the sums must be a fixed-size array the compiler keeps
// in registers (a larger array with loops bounded by constants stayed in memory: 1.5x slower).
#define TILE_BF16(M, N)                                                                        \
  BF16_ISA static void tile_##M##x##N(const uint16_t* panels, int64_t panel_size,             \
                                      const uint16_t* xb, int64_t kp, float* y,               \
                                      int64_t y_stride, int64_t col0, int64_t outputs,        \
                                      int64_t valid_rows) {                                   \
    __m512 acc[M][N];                                                                          \
    for (int m = 0; m < M; ++m)                                                                \
      for (int n = 0; n < N; ++n) acc[m][n] = _mm512_setzero_ps();                            \
    const int32_t* pairs = (const int32_t*)xb; /* row m's input pair kk: pairs[m kp + kk] */   \
    for (int64_t kk = 0; kk < kp; ++kk) {                                                      \
      __m512bh w[N];                                                                           \
      for (int n = 0; n < N; ++n) {                                                            \
        const uint16_t* at = panels + n * panel_size + kk * 32;                                \
        _mm_prefetch((const char*)at + BF16_PREFETCH_BYTES, _MM_HINT_T0);                      \
        w[n] = (__m512bh)_mm512_loadu_si512(at);                                               \
      }                                                                                        \
      for (int m = 0; m < M; ++m) {                                                            \
        __m512bh a = (__m512bh)_mm512_set1_epi32(pairs[m * kp + kk]);                         \
        for (int n = 0; n < N; ++n) acc[m][n] = _mm512_dpbf16_ps(acc[m][n], a, w[n]);         \
      }                                                                                        \
    }                                                                                          \
    for (int m = 0; m < M && m < valid_rows; ++m)                                              \
      store_panels(y + m * y_stride, acc[m], N, col0, outputs);                                \
  }
TILE_BF16(16, 2)
TILE_BF16(16, 1)
TILE_BF16(8, 3)
TILE_BF16(8, 1)

// Y[b] = W X[b] for `batch` rows (float32 in and out; W packed as above, `rows` outputs of
// `cols` inputs), inside the step's parallel region: the rows are rounded to bfloat16 into
// `xb` (scratch of round_up(batch, MR) x round_up(cols, 2) halves), then each thread takes
// whole tiles of panels and passes every block of rows over them (a tile of panels stays in
// L2 while it does).
BF16_ISA static void gemm_bf16(const uint16_t* w, const float* x, int64_t x_stride, float* y,
                               int64_t y_stride, int64_t rows, int64_t cols, int64_t batch,
                               uint16_t* xb) {
  int64_t kp = (cols + 1) / 2, panel_size = kp * 32, panels = (rows + 15) / 16;
  int64_t padded = (batch + MR - 1) / MR * MR;
  to_bf16_rows(x, x_stride, cols, batch, padded, xb, kp);  // ends on the loop's barrier
  int64_t group = batch > 8 ? 2 : 3;  // panels a thread takes at a time: one tile's
#pragma omp for schedule(static)
  for (int64_t p0 = 0; p0 < panels; p0 += group) {
    const uint16_t* tile = w + p0 * panel_size;
    int64_t left = panels - p0 < group ? panels - p0 : group;
    for (int64_t b = 0; b < batch; b += batch - b > 8 ? 16 : 8) {
      const uint16_t* xs = xb + b * 2 * kp;
      float* ys = y + b * y_stride;
      int64_t valid = batch - b, col = 16 * p0;
      if (valid > 8) {
        int64_t p = 0;
        for (; p + 2 <= left; p += 2)
          tile_16x2(tile + p * panel_size, panel_size, xs, kp, ys, y_stride, col + 16 * p,
                    rows, valid);
        if (p < left)
          tile_16x1(tile + p * panel_size, panel_size, xs, kp, ys, y_stride, col + 16 * p,
                    rows, valid);
      } else {
        int64_t p = 0;
        for (; p + 3 <= left; p += 3)
          tile_8x3(tile + p * panel_size, panel_size, xs, kp, ys, y_stride, col + 16 * p,
                    rows, valid);
        for (; p < left; ++p)
          tile_8x1(tile + p * panel_size, panel_size, xs, kp, ys, y_stride, col + 16 * p,
                    rows, valid);
      }
    }
  }
}

// One product alone, in its own parallel region (tests and benchmarks): `x [batch, cols]`,
// `y [batch, rows]`, `xb` as `gemm_bf16` needs.
void ragkv_gemm_bf16(const uint16_t* w, const float* x, float* y, int64_t rows, int64_t cols,
                     int64_t batch, uint16_t* xb, int64_t threads) {
#pragma omp parallel num_threads(threads)
  gemm_bf16(w, x, cols, y, rows, rows, cols, batch, xb);
}

// The LM head of batched steps: float16 weights packed in panels of 16 outputs, [k][16]
// (`pack_f16_panels` in `kernels/cpu_decode.py`), times float32 rows with float32 FMAs
// (AVX-512F; every CPU with AVX512-BF16 has it). The same float16 head the one-row steps read,
// so a sequence's logits come from the same head whatever its batch; half the bytes of the
// float32 head, which oneDNN read at DRAM speed at 16 rows (113 MB a step).
#define HEAD_ISA __attribute__((target("avx512f")))
#define HEAD_TILE(M, N)                                                                        \
  HEAD_ISA static void head_##M##x##N(const uint16_t* panels, int64_t panel_size,             \
                                      const float* x, int64_t x_stride, int64_t cols,         \
                                      float* y, int64_t y_stride, int64_t col0,               \
                                      int64_t outputs) {                                      \
    __m512 acc[M][N];                                                                          \
    for (int m = 0; m < M; ++m)                                                                \
      for (int n = 0; n < N; ++n) acc[m][n] = _mm512_setzero_ps();                            \
    for (int64_t k = 0; k < cols; ++k) {                                                       \
      __m512 w[N];                                                                             \
      for (int n = 0; n < N; ++n) {                                                            \
        const uint16_t* at = panels + n * panel_size + k * 16;                                 \
        if ((k & 1) == 0) _mm_prefetch((const char*)at + BF16_PREFETCH_BYTES, _MM_HINT_T0);    \
        w[n] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)at));                        \
      }                                                                                        \
      for (int m = 0; m < M; ++m) {                                                            \
        __m512 a = _mm512_set1_ps(x[m * x_stride + k]);                                        \
        for (int n = 0; n < N; ++n) acc[m][n] = _mm512_fmadd_ps(a, w[n], acc[m][n]);          \
      }                                                                                        \
    }                                                                                          \
    for (int m = 0; m < M; ++m) store_panels(y + m * y_stride, acc[m], N, col0, outputs);    \
  }
HEAD_TILE(8, 3)
HEAD_TILE(8, 1)
HEAD_TILE(1, 3)
HEAD_TILE(1, 1)

typedef void (*HeadTile)(const uint16_t*, int64_t, const float*, int64_t, int64_t, float*,
                         int64_t, int64_t, int64_t);

// One block of rows over a group of `left` (up to 3) panels: `wide` takes all three at once,
// else `one` takes each panel.
HEAD_ISA static void head_group(HeadTile wide, HeadTile one, const uint16_t* tile,
                                int64_t panel_size, int64_t left, const float* xs,
                                int64_t x_stride, int64_t cols, float* ys, int64_t y_stride,
                                int64_t col, int64_t outputs) {
  if (left >= 3) {
    wide(tile, panel_size, xs, x_stride, cols, ys, y_stride, col, outputs);
    return;
  }
  for (int64_t p = 0; p < left; ++p)
    one(tile + p * panel_size, panel_size, xs, x_stride, cols, ys, y_stride, col + 16 * p,
        outputs);
}

// Y[b] = W X[b] for `batch` float32 rows on float16 panels, inside the step's parallel region:
// each thread takes groups of 3 panels and passes blocks of 8 rows, then single rows, over
// them (the group stays in L2 meanwhile).
HEAD_ISA static void gemm_head_f16(const uint16_t* w, const float* x, int64_t x_stride, float* y,
                                   int64_t y_stride, int64_t outputs, int64_t cols,
                                   int64_t batch) {
  int64_t panel_size = cols * 16, panels = (outputs + 15) / 16;
#pragma omp for schedule(static)
  for (int64_t p0 = 0; p0 < panels; p0 += 3) {
    const uint16_t* tile = w + p0 * panel_size;
    int64_t left = panels - p0, col = 16 * p0;
    for (int64_t b = 0; b < batch;) {
      int eight = batch - b >= 8;  // blocks of 8 rows, then the rest one by one
      head_group(eight ? head_8x3 : head_1x3, eight ? head_8x1 : head_1x1, tile, panel_size,
                 left, x + b * x_stride, x_stride, cols, y + b * y_stride, y_stride, col,
                 outputs);
      b += eight ? 8 : 1;
    }
  }
}

// The head alone, in its own parallel region (tests and benchmarks): `x [batch, cols]`,
// `y [batch, outputs]`.
void ragkv_gemm_head_f16(const uint16_t* w, const float* x, float* y, int64_t outputs,
                         int64_t cols, int64_t batch, int64_t threads) {
#pragma omp parallel num_threads(threads)
  gemm_head_f16(w, x, cols, y, outputs, outputs, cols, batch);
}
