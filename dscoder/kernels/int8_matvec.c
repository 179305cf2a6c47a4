/* Decode-step kernels. int8 x int8 products: y[r, o] = (sum_k xq[r, k] * wq[o, k]) * xs[r] * ws[o].
 *
 * The same arithmetic as torch._int_mm followed by the two scalings (exact int32 sums, then one
 * float32 product each), so a row's result does not depend on which of the two computed it.
 * Written for a few rows (decode steps): every weight is read once from memory and multiplied
 * with all rows while it is in registers. AVX-512 VNNI multiplies unsigned by signed bytes, so
 * the activations are offset by 128 and 128 * sum_k wq[o, k] (wsum, computed once per layer) is
 * taken off again. Without VNNI the compiler's vectorisation of the plain loop runs. */
#include <stdint.h>
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

/* Attention of one new token over a sequence's cached keys and values (a decode step), bfloat16
 * cache: for each query head h (kv head h / group), p = softmax(scale * K q_h), out_h = p V.
 * q (heads, dim) float32; keys, values: the row's (kv_heads, length, dim) bfloat16 with
 * `stride` elements between kv heads; out (heads, dim) float32; scores: heads * length floats. */
void dscoder_attend_bf16(const float *q, const uint16_t *keys, const uint16_t *values, int64_t stride,
                         int64_t heads, int64_t group, int64_t length, int64_t dim, float scale,
                         float *scores, float *out, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t h = 0; h < heads; h++) {
        const uint16_t *k = keys + (h / group) * stride, *v = values + (h / group) * stride;
        const float *qh = q + h * dim;
        float *s = scores + h * length, *o = out + h * dim;
        float top = -INFINITY;
        for (int64_t j = 0; j < length; j++) {
            const uint16_t *kj = k + j * dim;
            float dot = 0.0f;
#ifdef __AVX512F__
            if (dim % 16 == 0) {
                __m512 acc = _mm512_setzero_ps();
                for (int64_t d = 0; d < dim; d += 16) {
                    __m512i bits = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)(kj + d))), 16);
                    acc = _mm512_fmadd_ps(_mm512_castsi512_ps(bits), _mm512_loadu_ps(qh + d), acc);
                }
                dot = _mm512_reduce_add_ps(acc);
            } else
#endif
            for (int64_t d = 0; d < dim; d++) dot += bf16_to_float(kj[d]) * qh[d];
            s[j] = dot * scale;
            if (s[j] > top) top = s[j];
        }
        float total = 0.0f;
        for (int64_t j = 0; j < length; j++) {
            s[j] = expf(s[j] - top);
            total += s[j];
        }
        for (int64_t d = 0; d < dim; d++) o[d] = 0.0f;
        for (int64_t j = 0; j < length; j++) {
            const uint16_t *vj = v + j * dim;
            float p = s[j] / total;
#ifdef __AVX512F__
            if (dim % 16 == 0) {
                __m512 pv = _mm512_set1_ps(p);
                for (int64_t d = 0; d < dim; d += 16) {
                    __m512i bits = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)(vj + d))), 16);
                    _mm512_storeu_ps(o + d, _mm512_fmadd_ps(_mm512_castsi512_ps(bits), pv, _mm512_loadu_ps(o + d)));
                }
                continue;
            }
#endif
            for (int64_t d = 0; d < dim; d++) o[d] += p * bf16_to_float(vj[d]);
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
