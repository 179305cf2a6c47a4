/* Decode-step kernels. int8 x int8 products: y[r, o] = (sum_k xq[r, k] * wq[o, k]) * xs[r] * ws[o].
 *
 * The same arithmetic as torch._int_mm followed by the two scalings (exact int32 sums, then one
 * float32 product each), so a row's result does not depend on which of the two computed it.
 * Written for a few rows (decode steps): every weight is read once from memory and multiplied
 * with all rows while it is in registers. AVX-512 VNNI multiplies unsigned by signed bytes, so
 * the activations are offset by 128 and 128 * sum_k wq[o, k] (wsum, computed once per layer) is
 * taken off again. Without VNNI the compiler's vectorisation of the plain loop runs. */
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#if defined(__SSE4_1__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#define MAX_ROWS 8

int dscoder_max_rows(void) { return MAX_ROWS; }

int dscoder_has_vnni(void) {
#ifdef __AVX512VNNI__
    return 1;
#else
    return 0;
#endif
}

/* wsum[o] = sum_k wq[o, k] */
void dscoder_row_sums(const int8_t *wq, int64_t out, int64_t in, int32_t *wsum) {
    for (int64_t o = 0; o < out; o++) {
        int32_t s = 0;
        const int8_t *w = wq + o * in;
        for (int64_t k = 0; k < in; k++) s += w[k];
        wsum[o] = s;
    }
}

static float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint16_t float_to_bf16(float f) {  /* round to nearest even, as torch converts */
    uint32_t u;
    memcpy(&u, &f, 4);
    if (isnan(f)) return 0x7FC0;
    u += 0x7FFF + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

static float load(const void *x, int bf16, int64_t i) {
    return bf16 ? bf16_to_float(((const uint16_t *)x)[i]) : ((const float *)x)[i];
}

static void store(void *y, int bf16, int64_t i, float v) {
    if (bf16) ((uint16_t *)y)[i] = float_to_bf16(v);
    else ((float *)y)[i] = v;
}

static inline float round_even(float v) {  /* to the nearest integer, ties to even (torch.round) */
#ifdef __SSE4_1__
    return _mm_cvtss_f32(_mm_round_ss(_mm_setzero_ps(), _mm_set_ss(v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
    return nearbyintf(v);
#endif
}

#ifdef __AVX512F__
static inline __m512 load16(const void *x, int bf16, int64_t i) {
    if (bf16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(
                         _mm256_loadu_si256((const __m256i *)((const uint16_t *)x + i))), 16));
    return _mm512_loadu_ps((const float *)x + i);
}
#endif

/* One row of activations quantized as torch does it in quantize._int8_product:
 * s = max(max |x|, 1e-12) / 127, q = round_half_even(x / s); returns s, writes q + 128. */
static float quantize_row(const void *x, int bf16, int64_t in, uint8_t *xu) {
    float m = 0.0f;
    int64_t k = 0;
#ifdef __AVX512F__
    __m512 top = _mm512_setzero_ps();
    for (; k + 16 <= in; k += 16) top = _mm512_max_ps(top, _mm512_abs_ps(load16(x, bf16, k)));
    m = _mm512_reduce_max_ps(top);
#endif
    for (; k < in; k++) {
        float a = fabsf(load(x, bf16, k));
        if (a > m || isnan(a)) m = a;
    }
    float s = fmaxf(m, 1e-12f) / 127.0f;
    k = 0;
#ifdef __AVX512F__
    __m512 sv = _mm512_set1_ps(s);
    __m512i offset = _mm512_set1_epi32(128);
    for (; k + 16 <= in; k += 16) {
        __m512 q = _mm512_roundscale_ps(_mm512_div_ps(load16(x, bf16, k), sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128((__m128i *)(xu + k), _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(q), offset)));
    }
#endif
    for (; k < in; k++) xu[k] = (uint8_t)((int)round_even(load(x, bf16, k) / s) + 128);
    return s;
}

/* x (rows, in) float32 or bfloat16; wq (out, in); ws (out,); wsum (out,); y (rows, out) in x's dtype */
void dscoder_int8_matvec(const void *x, int bf16, int64_t rows, const int8_t *wq, const float *ws,
                         const int32_t *wsum, int64_t out, int64_t in, void *y, int threads) {
    /* the activations as unsigned bytes (q + 128), padded with 128 (zero) to whole 64-byte vectors */
    int64_t vectors = (in + 63) / 64;
    uint8_t xu[MAX_ROWS][vectors * 64] __attribute__((aligned(64)));
    float xs[MAX_ROWS];
    for (int64_t r = 0; r < rows; r++) {
        xs[r] = quantize_row((const char *)x + r * in * (bf16 ? 2 : 4), bf16, in, xu[r]);
        memset(xu[r] + in, 128, vectors * 64 - in);
    }
#ifdef __AVX512VNNI__
    int64_t full = in / 64;
    __mmask64 tail = in % 64 ? (((__mmask64)1 << (in % 64)) - 1) : 0;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t o = 0; o < out; o++) {
        const int8_t *w = wq + o * in;
        __m512i acc[MAX_ROWS];
        for (int64_t r = 0; r < rows; r++) acc[r] = _mm512_setzero_si512();
        for (int64_t v = 0; v < full; v++) {
            __m512i wv = _mm512_loadu_si512((const void *)(w + v * 64));
            for (int64_t r = 0; r < rows; r++)
                acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_load_si512((const void *)(xu[r] + v * 64)), wv);
        }
        if (tail) {  /* padded activations meet zeroed weights */
            __m512i wv = _mm512_maskz_loadu_epi8(tail, (const void *)(w + full * 64));
            for (int64_t r = 0; r < rows; r++)
                acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_load_si512((const void *)(xu[r] + full * 64)), wv);
        }
        for (int64_t r = 0; r < rows; r++) {
            int32_t dot = _mm512_reduce_add_epi32(acc[r]) - 128 * wsum[o];
            store(y, bf16, r * out + o, (float)dot * xs[r] * ws[o]);
        }
    }
#else
    (void)wsum;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t o = 0; o < out; o++) {
        const int8_t *w = wq + o * in;
        for (int64_t r = 0; r < rows; r++) {
            int32_t dot = 0;
            for (int64_t k = 0; k < in; k++) dot += ((int32_t)xu[r][k] - 128) * (int32_t)w[k];
            store(y, bf16, r * out + o, (float)dot * xs[r] * ws[o]);
        }
    }
#endif
}

static inline void bf16_row_to_float(const uint16_t *x, float *y, int64_t dim) {
    int64_t d = 0;
#ifdef __AVX512F__
    for (; d + 16 <= dim; d += 16)
        _mm512_storeu_ps(y + d, _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)(x + d))), 16)));
#endif
    for (; d < dim; d++) y[d] = bf16_to_float(x[d]);
}

static inline float dot_bf16(const uint16_t *kj, const float *qh, int64_t dim) {
#ifdef __AVX512F__
    if (dim % 16 == 0) {
        __m512 acc = _mm512_setzero_ps();
        for (int64_t d = 0; d < dim; d += 16) {
            __m512i bits = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)(kj + d))), 16);
            acc = _mm512_fmadd_ps(_mm512_castsi512_ps(bits), _mm512_loadu_ps(qh + d), acc);
        }
        return _mm512_reduce_add_ps(acc);
    }
#endif
    float dot = 0.0f;
    for (int64_t d = 0; d < dim; d++) dot += bf16_to_float(kj[d]) * qh[d];
    return dot;
}

static inline void add_scaled_bf16(float *o, const uint16_t *vj, float p, int64_t dim) {
#ifdef __AVX512F__
    if (dim % 16 == 0) {
        __m512 pv = _mm512_set1_ps(p);
        for (int64_t d = 0; d < dim; d += 16) {
            __m512i bits = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)(vj + d))), 16);
            _mm512_storeu_ps(o + d, _mm512_fmadd_ps(_mm512_castsi512_ps(bits), pv, _mm512_loadu_ps(o + d)));
        }
        return;
    }
#endif
    for (int64_t d = 0; d < dim; d++) o[d] += p * bf16_to_float(vj[d]);
}

static inline float dot_f32(const float *a, const float *b, int64_t dim) {
#ifdef __AVX512F__
    if (dim % 16 == 0) {
        __m512 acc = _mm512_setzero_ps();
        for (int64_t d = 0; d < dim; d += 16)
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), _mm512_loadu_ps(b + d), acc);
        return _mm512_reduce_add_ps(acc);
    }
#endif
    float dot = 0.0f;
    for (int64_t d = 0; d < dim; d++) dot += a[d] * b[d];
    return dot;
}

static inline void add_scaled_f32(float *o, const float *v, float p, int64_t dim) {
#ifdef __AVX512F__
    if (dim % 16 == 0) {
        __m512 pv = _mm512_set1_ps(p);
        for (int64_t d = 0; d < dim; d += 16)
            _mm512_storeu_ps(o + d, _mm512_fmadd_ps(_mm512_loadu_ps(v + d), pv, _mm512_loadu_ps(o + d)));
        return;
    }
#endif
    for (int64_t d = 0; d < dim; d++) o[d] += p * v[d];
}

#ifdef __AVX512F__
/* exp of 16 floats (Cephes' polynomial, about 1 ulp; inputs clamped to +-88.38) */
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f)), _mm512_set1_ps(-88.3762626647949f));
    __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                    _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(y, n);
}
#endif

/* s[j] = exp(s[j] - top) for j < length, in place; `s` has room for length rounded up to 16, so
 * that every entry is computed by the same instructions whatever `length` is */
static inline void exp_shifted(float *s, int64_t length, float top) {
#ifdef __AVX512F__
    __m512 t = _mm512_set1_ps(top);
    for (int64_t j = 0; j < length; j += 16)
        _mm512_storeu_ps(s + j, exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), t)));
#else
    for (int64_t j = 0; j < length; j++) s[j] = expf(s[j] - top);
#endif
}

#define QUERY_BLOCK 16

/* Causal attention of `rows` new tokens at positions start.. over a sequence's cached keys and
 * values (their own included), bfloat16 cache: for query r and head h (kv head h / group),
 * p = softmax(scale * K[:start + r + 1] q), out = p V. q (rows, heads, dim) float32; keys,
 * values: the row's (kv_heads, capacity, dim) bfloat16, `stride` elements between kv heads;
 * out (rows, heads, dim) float32. Each query's sums run in the same order whatever `rows` and
 * `start` are (keys in order; a block of queries only shares the reading of each key), so a
 * token's result does not depend on how its prompt was split or cached: a decode step (one
 * row) and a prompt computed in chunks give the same numbers. */
void dscoder_attend_bf16(const float *q, const uint16_t *keys, const uint16_t *values, int64_t stride,
                         int64_t heads, int64_t group, int64_t rows, int64_t start, int64_t dim, float scale,
                         float *out, int threads) {
    int64_t blocks = (rows + QUERY_BLOCK - 1) / QUERY_BLOCK;
    #pragma omp parallel for num_threads(threads) schedule(dynamic) collapse(2)
    for (int64_t h = 0; h < heads; h++) {
        for (int64_t b = 0; b < blocks; b++) {
            const uint16_t *k = keys + (h / group) * stride, *v = values + (h / group) * stride;
            int64_t r0 = b * QUERY_BLOCK, n = rows - r0 < QUERY_BLOCK ? rows - r0 : QUERY_BLOCK;
            int64_t longest = start + r0 + n, width = (longest + 15) / 16 * 16;  /* the last query's keys */
            float *s = malloc(sizeof(float) * (n * width + 2 * dim));
            float *row = s + n * width;  /* a key or value in float32 */
            float top[QUERY_BLOCK], total[QUERY_BLOCK];
            for (int64_t i = 0; i < n; i++) top[i] = -INFINITY, total[i] = 0.0f;
            /* the same numbers either way (bfloat16 to float32 is exact): a key is converted once
             * for a block of queries, in the product itself for one or two */
            int convert = n > 2;
            for (int64_t j = 0; j < longest; j++) {
                const uint16_t *kj = k + j * dim;
                if (convert) bf16_row_to_float(kj, row, dim);
                for (int64_t i = (j > start + r0 ? j - start - r0 : 0); i < n; i++) {
                    const float *qi = q + ((r0 + i) * heads + h) * dim;
                    float x = (convert ? dot_f32(row, qi, dim) : dot_bf16(kj, qi, dim)) * scale;
                    s[i * width + j] = x;
                    if (x > top[i]) top[i] = x;
                }
            }
            for (int64_t i = 0; i < n; i++) {
                int64_t length = start + r0 + i + 1;
                float *si = s + i * width;
                for (int64_t j = length; j < (length + 15) / 16 * 16; j++) si[j] = top[i];  /* padding */
                exp_shifted(si, length, top[i]);
                for (int64_t j = 0; j < length; j++) total[i] += si[j];
                float *o = out + ((r0 + i) * heads + h) * dim;
                for (int64_t d = 0; d < dim; d++) o[d] = 0.0f;
            }
            for (int64_t j = 0; j < longest; j++) {
                const uint16_t *vj = v + j * dim;
                if (convert) bf16_row_to_float(vj, row, dim);
                for (int64_t i = (j > start + r0 ? j - start - r0 : 0); i < n; i++) {
                    float *o = out + ((r0 + i) * heads + h) * dim, p = s[i * width + j] / total[i];
                    if (convert) add_scaled_f32(o, row, p, dim);
                    else add_scaled_bf16(o, vj, p, dim);
                }
            }
            free(s);
        }
    }
}

/* bfloat16 products for decoding: y[r, o] = sum_k x[r, k] * w[o, k], x (rows, in), w (out, in),
 * y (rows, out), all bfloat16, sums in float32 (AVX-512 BF16 multiplies pairs of bfloat16). */
void dscoder_bf16_matvec(const uint16_t *x, int64_t rows, const uint16_t *w, int64_t out, int64_t in,
                         uint16_t *y, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t o = 0; o < out; o++) {
        const uint16_t *wo = w + o * in;
        for (int64_t r0 = 0; r0 < rows; r0 += MAX_ROWS) {
            int64_t n = rows - r0 < MAX_ROWS ? rows - r0 : MAX_ROWS;
            float sums[MAX_ROWS];
            int64_t k = 0;
#ifdef __AVX512BF16__
            __m512 acc[MAX_ROWS];
            for (int64_t r = 0; r < n; r++) acc[r] = _mm512_setzero_ps();
            for (; k + 32 <= in; k += 32) {
                __m512bh wv = (__m512bh)_mm512_loadu_si512((const void *)(wo + k));
                for (int64_t r = 0; r < n; r++)
                    acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512((const void *)(x + (r0 + r) * in + k)), wv);
            }
            for (int64_t r = 0; r < n; r++) sums[r] = _mm512_reduce_add_ps(acc[r]);
#else
            for (int64_t r = 0; r < n; r++) sums[r] = 0.0f;
#endif
            for (; k < in; k++)
                for (int64_t r = 0; r < n; r++) sums[r] += bf16_to_float(x[(r0 + r) * in + k]) * bf16_to_float(wo[k]);
            for (int64_t r = 0; r < n; r++) y[(r0 + r) * out + o] = float_to_bf16(sums[r]);
        }
    }
}
