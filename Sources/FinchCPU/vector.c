// The vector loops between matrix products, compiled twice: for AVX2 + FMA + F16C (x86-64-v3,
// every x86-64 CPU since 2013-2015) with target attributes, and as portable C, one chosen at run
// time (finch_vector_set_level); the loops built on exp a third time, for AVX-512F. Every path
// does the same operations in the same order, fused multiply-adds included (fmaf in the portable
// one), so they agree bit for bit (the K-quant and 8-bit activation rows up to the order of their sums).
// Nothing here depends on the flags of the machine that built it.
//
//   - fast exp and the softmax / cross-entropy loops built on it (libm's expf does one value at
//     a time and was most of their time);
//   - SwiGLU forward and backward;
//   - matrix-vector products of f32, q8_0, q4_0 and q4_1 rows with f32 vectors (decoding), and
//     of quantized rows with vectors rounded to 8 bits (llama.cpp's arithmetic);
//   - decoding attention's key scores and weighted values.
#include "FinchCPU.h"
#include "bf16_round.h"
#include <math.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

// Fused multiply-adds only where written: the two paths must round alike.
#pragma STDC FP_CONTRACT OFF

static int level = 0;   // 0 portable, 1 AVX2 + FMA + F16C, 2 also AVX-512F (the exp loops)

int finch_vector_set_level(int maxLevel, uint32_t f) {
    int l = 0;
#if defined(__x86_64__)
    uint32_t need = FINCH_CPU_AVX2 | FINCH_CPU_FMA | FINCH_CPU_F16C;
    if ((f & need) == need) l = 1;
    if (l == 1 && (f & FINCH_CPU_AVX512F)) l = 2;
#endif
    level = l < maxLevel ? l : maxLevel;
    return level;
}

// MARK: - exp

// exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 (ln 2 split in two constants),
// exp(r) by Cephes' degree-6 polynomial: about 1 ulp on [-87.3, 88.7]. Inputs are clamped to
// [-88, 88.72] (NaN stays NaN): at -88, n = -127 makes the power-of-two factor's bits 0, so the
// result is exactly 0 from about -87.7 down (and for -infinity); above 88.7 it is infinity.
static const float EXP_LO = -88.0f, EXP_HI = 88.72f, LOG2E = 1.44269504f;
static const float C1 = -0.693359375f, C2 = 2.1219444e-4f;
static const float P0 = 1.98756915e-4f, P1 = 1.39819995e-3f, P2 = 8.3334519e-3f, P3 = 4.16657959e-2f,
                   P4 = 1.66666655e-1f, P5 = 5.00000012e-1f;

static inline float exp1(float x) {
    float c = x < EXP_LO ? EXP_LO : x;          // NaN compares false and stays
    c = c > EXP_HI ? EXP_HI : c;
    float n = nearbyintf(c * LOG2E);
    float r = fmaf(n, C1, c);
    r = fmaf(n, C2, r);
    float p = fmaf(P0, r, P1);
    p = fmaf(p, r, P2);
    p = fmaf(p, r, P3);
    p = fmaf(p, r, P4);
    p = fmaf(p, r, P5);
    p = fmaf(p, r * r, r + 1);
    // n + 1.5 * 2^23 holds the integer n in its low mantissa bits (no conversion that traps on NaN).
    float shifted = n + 12582912.0f;
    uint32_t e;
    memcpy(&e, &shifted, 4);
    uint32_t bits = (e - 0x4B400000u + 127u) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

float finch_exp(float x) { return exp1(x); }

#if defined(__x86_64__)
AVX2 static inline __m256 exp8(__m256 x) {
    __m256 c = _mm256_max_ps(_mm256_set1_ps(EXP_LO), x);   // max/min return the second operand on NaN
    c = _mm256_min_ps(_mm256_set1_ps(EXP_HI), c);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(c, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(C1), c);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(C2), r);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(P0), r, _mm256_set1_ps(P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P5));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1)));
    __m256i e = _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(n, _mm256_set1_ps(12582912.0f))), _mm256_set1_epi32(0x4B400000));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// Lanes summed in a fixed order: (0+4, 1+5, 2+6, 3+7), then pairs, then the last two.
AVX2 static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// exp8's operations on 16 lanes: each lane's result is exp8's bit for bit. The loops that sum
// add the two 8-lane halves to an 8-lane sum one after the other, as the AVX2 loop adds two
// consecutive groups of 8, so their sums are the same too.
#define AVX512 __attribute__((target("avx2,fma,f16c,avx512f")))
AVX512 static inline __m512 exp16(__m512 x) {
    __m512 c = _mm512_max_ps(_mm512_set1_ps(EXP_LO), x);
    c = _mm512_min_ps(_mm512_set1_ps(EXP_HI), c);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(c, _mm512_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(C1), c);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(C2), r);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(P0), r, _mm512_set1_ps(P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P5));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1)));
    __m512i e = _mm512_sub_epi32(_mm512_castps_si512(_mm512_add_ps(n, _mm512_set1_ps(12582912.0f))), _mm512_set1_epi32(0x4B400000));
    __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(e, _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

// sum + the low 8 lanes of v, then + the high 8 (the order of two AVX2 steps).
AVX512 static inline __m256 add_halves(__m256 sum, __m512 v) {
    sum = _mm256_add_ps(sum, _mm512_castps512_ps256(v));
    return _mm256_add_ps(sum, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

// 16 lanes rounded to bf16 as store_bf16x8 rounds them.
AVX512 static inline void store_bf16x16(uint16_t *dst, __m512 x) {
    __m512i u = _mm512_castps_si512(x);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    r = _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), u, _mm512_set1_epi32(0x400000));
    _mm256_storeu_si256((__m256i *)dst, _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
}
#endif

// The portable path keeps 8 partial sums as the vector one does, summed in the same order.
static inline float hsum8_c(const float *v) {
    float s0 = v[0] + v[4], s1 = v[1] + v[5], s2 = v[2] + v[6], s3 = v[3] + v[7];
    return (s0 + s2) + (s1 + s3);
}

#if defined(__x86_64__)
AVX2 static float exp_shifted_avx2(float *x, int64_t n, float shift) {
    __m256 sum = _mm256_setzero_ps(), s = _mm256_set1_ps(shift);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
        _mm256_storeu_ps(x + i, v);
        sum = _mm256_add_ps(sum, v);
    }
    float total = hsum8(sum);
    for (; i < n; i++) { float v = exp1(x[i] - shift); x[i] = v; total += v; }
    return total;
}
#endif

#if defined(__x86_64__)
AVX512 static float exp_shifted_avx512(float *x, int64_t n, float shift) {
    __m256 sum = _mm256_setzero_ps();
    __m512 s = _mm512_set1_ps(shift);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), s));
        _mm512_storeu_ps(x + i, v);
        sum = add_halves(sum, v);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 v = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(shift)));
        _mm256_storeu_ps(x + i, v);
        sum = _mm256_add_ps(sum, v);
    }
    float total = hsum8(sum);
    for (; i < n; i++) { float v = exp1(x[i] - shift); x[i] = v; total += v; }
    return total;
}
#endif

float finch_exp_shifted(float *x, int64_t n, float shift) {
#if defined(__x86_64__)
    if (level >= 2) return exp_shifted_avx512(x, n, shift);
    if (level >= 1) return exp_shifted_avx2(x, n, shift);
#endif
    float sum[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) for (int j = 0; j < 8; j++) { float v = exp1(x[i + j] - shift); x[i + j] = v; sum[j] += v; }
    float total = hsum8_c(sum);
    for (; i < n; i++) { float v = exp1(x[i] - shift); x[i] = v; total += v; }
    return total;
}

#if defined(__x86_64__)
AVX2 static float exp_sums_avx2(float *x, int64_t n, float shift, float *weighted) {
    __m256 sum = _mm256_setzero_ps(), w = _mm256_setzero_ps(), s = _mm256_set1_ps(shift);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i), e = exp8(_mm256_sub_ps(v, s));
        _mm256_storeu_ps(x + i, e);
        sum = _mm256_add_ps(sum, e);
        w = _mm256_add_ps(w, _mm256_mul_ps(e, v));
    }
    float total = hsum8(sum), wt = hsum8(w);
    for (; i < n; i++) { float v = x[i], e = exp1(v - shift); x[i] = e; total += e; wt += e * v; }
    *weighted = wt;
    return total;
}
#endif

#if defined(__x86_64__)
AVX512 static float exp_sums_avx512(float *x, int64_t n, float shift, float *weighted) {
    __m256 sum = _mm256_setzero_ps(), w = _mm256_setzero_ps();
    __m512 s = _mm512_set1_ps(shift);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i), e = exp16(_mm512_sub_ps(v, s));
        _mm512_storeu_ps(x + i, e);
        sum = add_halves(sum, e);
        w = add_halves(w, _mm512_mul_ps(e, v));
    }
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i), e = exp8(_mm256_sub_ps(v, _mm256_set1_ps(shift)));
        _mm256_storeu_ps(x + i, e);
        sum = _mm256_add_ps(sum, e);
        w = _mm256_add_ps(w, _mm256_mul_ps(e, v));
    }
    float total = hsum8(sum), wt = hsum8(w);
    for (; i < n; i++) { float v = x[i], e = exp1(v - shift); x[i] = e; total += e; wt += e * v; }
    *weighted = wt;
    return total;
}
#endif

float finch_exp_sums(float *x, int64_t n, float shift, float *weighted) {
#if defined(__x86_64__)
    if (level >= 2) return exp_sums_avx512(x, n, shift, weighted);
    if (level >= 1) return exp_sums_avx2(x, n, shift, weighted);
#endif
    float sum[8] = {0}, w[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int j = 0; j < 8; j++) { float v = x[i + j], e = exp1(v - shift); x[i + j] = e; sum[j] += e; w[j] += e * v; }
    }
    float total = hsum8_c(sum), wt = hsum8_c(w);
    for (; i < n; i++) { float v = x[i], e = exp1(v - shift); x[i] = e; total += e; wt += e * v; }
    *weighted = wt;
    return total;
}

#if defined(__x86_64__)
AVX2 static void scaled_exp_avx2(float *x, int64_t n, float shift, float scale) {
    __m256 s = _mm256_set1_ps(shift), k = _mm256_set1_ps(scale);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s)), k));
    for (; i < n; i++) x[i] = exp1(x[i] - shift) * scale;
}
#endif

#if defined(__x86_64__)
AVX512 static void scaled_exp_avx512(float *x, int64_t n, float shift, float scale) {
    __m512 s = _mm512_set1_ps(shift), k = _mm512_set1_ps(scale);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), s)), k));
    for (; i < n; i++) x[i] = exp1(x[i] - shift) * scale;
}
#endif

void finch_scaled_exp(float *x, int64_t n, float shift, float scale) {
#if defined(__x86_64__)
    if (level >= 2) { scaled_exp_avx512(x, n, shift, scale); return; }
    if (level >= 1) { scaled_exp_avx2(x, n, shift, scale); return; }
#endif
    for (int64_t i = 0; i < n; i++) x[i] = exp1(x[i] - shift) * scale;
}

#if defined(__x86_64__)
AVX2 static float max_avx2(const float *x, int64_t n) {
    __m256 best = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) best = _mm256_max_ps(_mm256_loadu_ps(x + i), best);   // NaN lanes keep `best`
    float lanes[8];
    _mm256_storeu_ps(lanes, best);
    float m = -INFINITY;
    for (int j = 0; j < 8; j++) m = lanes[j] > m ? lanes[j] : m;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}
#endif

float finch_max(const float *x, int64_t n) {
#if defined(__x86_64__)
    if (level >= 1) return max_avx2(x, n);
#endif
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

// MARK: - Attention rows with bf16 products

// Both write a row's bf16 values straight from the f32 scores: one pass where exp in place, a
// scaling pass and a rounding pass each read and wrote the row before.

#if defined(__x86_64__)
// 16 values a round (two groups of 8, summed in order): packing two groups at once ran the
// backward row ~15% faster than rounding and storing each group alone.
AVX2 static float exp_to_bf16_avx2(const float *s, int64_t n, float shift, uint16_t *p) {
    __m256 sum = _mm256_setzero_ps(), k = _mm256_set1_ps(shift);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 v0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), k)), v1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i + 8), k));
        _mm256_storeu_si256((__m256i *)(p + i), pack_bf16x16(v0, v1));
        sum = _mm256_add_ps(_mm256_add_ps(sum, v0), v1);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 v = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), k));
        store_bf16x8(p + i, v);
        sum = _mm256_add_ps(sum, v);
    }
    float total = hsum8(sum);
    for (; i < n; i++) { float v = exp1(s[i] - shift); p[i] = bf16_of(v); total += v; }
    return total;
}

AVX2 static void attention_row_grad_avx2(const float *s, const float *dp, int64_t n, float lse, float delta,
                                         uint16_t *p, uint16_t *ds) {
    __m256 l = _mm256_set1_ps(lse), d = _mm256_set1_ps(delta);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), l)), e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i + 8), l));
        _mm256_storeu_si256((__m256i *)(p + i), pack_bf16x16(e0, e1));
        __m256 g0 = _mm256_mul_ps(e0, _mm256_sub_ps(_mm256_loadu_ps(dp + i), d));
        __m256 g1 = _mm256_mul_ps(e1, _mm256_sub_ps(_mm256_loadu_ps(dp + i + 8), d));
        _mm256_storeu_si256((__m256i *)(ds + i), pack_bf16x16(g0, g1));
    }
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), l));
        store_bf16x8(p + i, e);
        store_bf16x8(ds + i, _mm256_mul_ps(e, _mm256_sub_ps(_mm256_loadu_ps(dp + i), d)));
    }
    for (; i < n; i++) { float e = exp1(s[i] - lse); p[i] = bf16_of(e); ds[i] = bf16_of(e * (dp[i] - delta)); }
}

AVX512 static float exp_to_bf16_avx512(const float *s, int64_t n, float shift, uint16_t *p) {
    __m256 sum = _mm256_setzero_ps();
    __m512 k = _mm512_set1_ps(shift);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + i), k));
        store_bf16x16(p + i, v);
        sum = add_halves(sum, v);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 v = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), _mm256_set1_ps(shift)));
        store_bf16x8(p + i, v);
        sum = _mm256_add_ps(sum, v);
    }
    float total = hsum8(sum);
    for (; i < n; i++) { float v = exp1(s[i] - shift); p[i] = bf16_of(v); total += v; }
    return total;
}

AVX512 static void attention_row_grad_avx512(const float *s, const float *dp, int64_t n, float lse, float delta,
                                             uint16_t *p, uint16_t *ds) {
    __m512 l = _mm512_set1_ps(lse), d = _mm512_set1_ps(delta);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + i), l));
        store_bf16x16(p + i, e);
        store_bf16x16(ds + i, _mm512_mul_ps(e, _mm512_sub_ps(_mm512_loadu_ps(dp + i), d)));
    }
    for (; i < n; i++) { float e = exp1(s[i] - lse); p[i] = bf16_of(e); ds[i] = bf16_of(e * (dp[i] - delta)); }
}
#endif

float finch_exp_to_bf16(const float *s, int64_t visible, int64_t length, float shift, uint16_t *p) {
    if (length > visible) memset(p + visible, 0, (size_t)(length - visible) * sizeof *p);
#if defined(__x86_64__)
    if (level >= 2) return exp_to_bf16_avx512(s, visible, shift, p);
    if (level >= 1) return exp_to_bf16_avx2(s, visible, shift, p);
#endif
    float sum[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= visible; i += 8) for (int j = 0; j < 8; j++) { float v = exp1(s[i + j] - shift); p[i + j] = bf16_of(v); sum[j] += v; }
    float total = hsum8_c(sum);
    for (; i < visible; i++) { float v = exp1(s[i] - shift); p[i] = bf16_of(v); total += v; }
    return total;
}

void finch_attention_row_grad_bf16(const float *s, const float *dp, int64_t visible, int64_t length, float lse, float delta,
                                   uint16_t *p, uint16_t *ds) {
    if (length > visible) {
        memset(p + visible, 0, (size_t)(length - visible) * sizeof *p);
        memset(ds + visible, 0, (size_t)(length - visible) * sizeof *ds);
    }
#if defined(__x86_64__)
    if (level >= 2) { attention_row_grad_avx512(s, dp, visible, lse, delta, p, ds); return; }
    if (level >= 1) { attention_row_grad_avx2(s, dp, visible, lse, delta, p, ds); return; }
#endif
    for (int64_t i = 0; i < visible; i++) { float e = exp1(s[i] - lse); p[i] = bf16_of(e); ds[i] = bf16_of(e * (dp[i] - delta)); }
}

// MARK: - SwiGLU

#if defined(__x86_64__)
AVX2 static void swiglu_forward_avx2(float *h, const float *g, const float *u, int64_t n) {
    __m256 one = _mm256_set1_ps(1), zero = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 gv = _mm256_loadu_ps(g + j);
        __m256 e = exp8(_mm256_sub_ps(zero, gv));
        _mm256_storeu_ps(h + j, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + j)));
    }
    for (; j < n; j++) h[j] = g[j] / (1 + exp1(-g[j])) * u[j];
}

AVX2 static void swiglu_backward_avx2(float *dg, float *du, const float *dh, const float *g, const float *u, int64_t n) {
    __m256 one = _mm256_set1_ps(1), zero = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 gv = _mm256_loadu_ps(g + j), uv = _mm256_loadu_ps(u + j), dv = _mm256_loadu_ps(dh + j);
        __m256 sig = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, gv))));
        _mm256_storeu_ps(du + j, _mm256_mul_ps(_mm256_mul_ps(dv, gv), sig));
        __m256 slope = _mm256_add_ps(one, _mm256_mul_ps(gv, _mm256_sub_ps(one, sig)));
        _mm256_storeu_ps(dg + j, _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(dv, uv), sig), slope));
    }
    for (; j < n; j++) {
        float sig = 1 / (1 + exp1(-g[j]));
        du[j] = dh[j] * g[j] * sig;
        dg[j] = dh[j] * u[j] * sig * (1 + g[j] * (1 - sig));
    }
}

AVX512 static void swiglu_forward_avx512(float *h, const float *g, const float *u, int64_t n) {
    __m512 one = _mm512_set1_ps(1), zero = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        __m512 gv = _mm512_loadu_ps(g + j);
        __m512 e = exp16(_mm512_sub_ps(zero, gv));
        _mm512_storeu_ps(h + j, _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(one, e)), _mm512_loadu_ps(u + j)));
    }
    for (; j < n; j++) h[j] = g[j] / (1 + exp1(-g[j])) * u[j];
}

AVX512 static void swiglu_backward_avx512(float *dg, float *du, const float *dh, const float *g, const float *u, int64_t n) {
    __m512 one = _mm512_set1_ps(1), zero = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        __m512 gv = _mm512_loadu_ps(g + j), uv = _mm512_loadu_ps(u + j), dv = _mm512_loadu_ps(dh + j);
        __m512 sig = _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(zero, gv))));
        _mm512_storeu_ps(du + j, _mm512_mul_ps(_mm512_mul_ps(dv, gv), sig));
        __m512 slope = _mm512_add_ps(one, _mm512_mul_ps(gv, _mm512_sub_ps(one, sig)));
        _mm512_storeu_ps(dg + j, _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dv, uv), sig), slope));
    }
    for (; j < n; j++) {
        float sig = 1 / (1 + exp1(-g[j]));
        du[j] = dh[j] * g[j] * sig;
        dg[j] = dh[j] * u[j] * sig * (1 + g[j] * (1 - sig));
    }
}
#endif

void finch_swiglu_forward(float *h, const float *g, const float *u, int64_t n) {
#if defined(__x86_64__)
    if (level >= 2) { swiglu_forward_avx512(h, g, u, n); return; }
    if (level >= 1) { swiglu_forward_avx2(h, g, u, n); return; }
#endif
    for (int64_t j = 0; j < n; j++) h[j] = g[j] / (1 + exp1(-g[j])) * u[j];
}

void finch_swiglu_backward(float *dg, float *du, const float *dh, const float *g, const float *u, int64_t n) {
#if defined(__x86_64__)
    if (level >= 2) { swiglu_backward_avx512(dg, du, dh, g, u, n); return; }
    if (level >= 1) { swiglu_backward_avx2(dg, du, dh, g, u, n); return; }
#endif
    for (int64_t j = 0; j < n; j++) {
        float sig = 1 / (1 + exp1(-g[j]));
        du[j] = dh[j] * g[j] * sig;
        dg[j] = dh[j] * u[j] * sig * (1 + g[j] * (1 - sig));
    }
}

// MARK: - Matrix-vector products (ggml block layouts; see Dequantize.swift)

static inline float half_c(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff, bits;
    if (exponent == 0x1f) bits = sign | 0x7f800000u | (mantissa << 13);
    else if (exponent != 0) bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    else if (mantissa == 0) bits = sign;
    else {   // subnormal: normalise
        exponent = 113;
        while (!(mantissa & 0x400)) { mantissa <<= 1; exponent--; }
        bits = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

#if defined(__x86_64__)
// f16 scales through vmovd, which zeroes the rest of the register, then vcvtph2ps (converting
// one half with vpinsrw merged into a register holding a running sum and chained the blocks).
AVX2 static inline float half_avx2(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((int)h)));
}

AVX2 static inline __m256 load8(const float *p) { return _mm256_loadu_ps(p); }

// 8 signed bytes as floats.
AVX2 static inline __m256 bytes8(const uint8_t *p) {
    int64_t v;
    memcpy(&v, p, 8);
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(v)));
}

// 8 bytes of nibbles as 16 floats (low nibbles, high nibbles), each minus `offset`: the bytes are
// widened to 32 bits once, then masked and shifted.
AVX2 static inline void nibbles16(const uint8_t *p, int32_t offset, __m256 *low, __m256 *high) {
    int64_t v;
    memcpy(&v, p, 8);
    __m256i bytes = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v));
    __m256i o = _mm256_set1_epi32(offset);
    *low = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(bytes, _mm256_set1_epi32(0x0f)), o));
    *high = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bytes, 4), o));
}

AVX2 static float dot_f32_avx2(const float *w, const float *x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load8(w + i), load8(x + i), a0);
        a1 = _mm256_fmadd_ps(load8(w + i + 8), load8(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(load8(w + i + 16), load8(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(load8(w + i + 24), load8(x + i + 24), a3);
    }
    return hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

// Two blocks per iteration, each into its own sums, so consecutive blocks do not wait on one
// chain of multiply-adds (~10 cycles per block of 32 weights where one block at a time took ~14).
// The sums are named registers, not an array indexed by block parity (that put them in memory).
AVX2 static inline __m256 q8_0_block_sums(const uint8_t *q, const float *xb) {
    __m256 s = _mm256_mul_ps(bytes8(q), load8(xb));
    s = _mm256_fmadd_ps(bytes8(q + 8), load8(xb + 8), s);
    s = _mm256_fmadd_ps(bytes8(q + 16), load8(xb + 16), s);
    return _mm256_fmadd_ps(bytes8(q + 24), load8(xb + 24), s);
}

AVX2 static float dot_q8_0_avx2(const uint8_t *row, const float *x, int64_t blocks) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= blocks; b += 2) {
        const uint8_t *b0 = row + b * 34, *b1 = b0 + 34;
        acc0 = _mm256_fmadd_ps(q8_0_block_sums(b0 + 2, x + b * 32), _mm256_set1_ps(half_avx2(b0)), acc0);
        acc1 = _mm256_fmadd_ps(q8_0_block_sums(b1 + 2, x + b * 32 + 32), _mm256_set1_ps(half_avx2(b1)), acc1);
    }
    if (b < blocks) {
        const uint8_t *b0 = row + b * 34;
        acc0 = _mm256_fmadd_ps(q8_0_block_sums(b0 + 2, x + b * 32), _mm256_set1_ps(half_avx2(b0)), acc0);
    }
    return hsum8(_mm256_add_ps(acc0, acc1));
}

// The sum of a q4 block's 32 products: nibbles of bytes 0..<8 are values 0..<8 (low) and
// 16..<24 (high), of bytes 8..<16 values 8..<16 and 24..<32.
AVX2 static inline __m256 q4_block_sums(const uint8_t *q, const float *xb, int32_t offset) {
    __m256 l0, h0, l1, h1;
    nibbles16(q, offset, &l0, &h0);
    nibbles16(q + 8, offset, &l1, &h1);
    __m256 s = _mm256_mul_ps(l0, load8(xb));
    s = _mm256_fmadd_ps(h0, load8(xb + 16), s);
    s = _mm256_fmadd_ps(l1, load8(xb + 8), s);
    return _mm256_fmadd_ps(h1, load8(xb + 24), s);
}

AVX2 static float dot_q4_0_avx2(const uint8_t *row, const float *x, int64_t blocks) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= blocks; b += 2) {
        const uint8_t *b0 = row + b * 18, *b1 = b0 + 18;
        acc0 = _mm256_fmadd_ps(q4_block_sums(b0 + 2, x + b * 32, 8), _mm256_set1_ps(half_avx2(b0)), acc0);
        acc1 = _mm256_fmadd_ps(q4_block_sums(b1 + 2, x + b * 32 + 32, 8), _mm256_set1_ps(half_avx2(b1)), acc1);
    }
    if (b < blocks) {
        const uint8_t *b0 = row + b * 18;
        acc0 = _mm256_fmadd_ps(q4_block_sums(b0 + 2, x + b * 32, 8), _mm256_set1_ps(half_avx2(b0)), acc0);
    }
    return hsum8(_mm256_add_ps(acc0, acc1));
}

// A q4_1 block's d and m (two f16) in one load and conversion.
AVX2 static inline void halves_avx2(const uint8_t *p, float *d, float *m) {
    int32_t both;
    memcpy(&both, p, 4);
    __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128(both));
    *d = _mm_cvtss_f32(dm);
    *m = _mm_cvtss_f32(_mm_movehdup_ps(dm));
}

AVX2 static float dot_q4_1_avx2(const uint8_t *row, const float *x, int64_t blocks, const float *blockSums) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float minimums0 = 0, minimums1 = 0, d0, m0, d1, m1;
    int64_t b = 0;
    for (; b + 2 <= blocks; b += 2) {
        const uint8_t *b0 = row + b * 20, *b1 = b0 + 20;
        halves_avx2(b0, &d0, &m0);
        halves_avx2(b1, &d1, &m1);
        acc0 = _mm256_fmadd_ps(q4_block_sums(b0 + 4, x + b * 32, 0), _mm256_set1_ps(d0), acc0);
        acc1 = _mm256_fmadd_ps(q4_block_sums(b1 + 4, x + b * 32 + 32, 0), _mm256_set1_ps(d1), acc1);
        minimums0 += m0 * blockSums[b];
        minimums1 += m1 * blockSums[b + 1];
    }
    if (b < blocks) {
        const uint8_t *b0 = row + b * 20;
        halves_avx2(b0, &d0, &m0);
        acc0 = _mm256_fmadd_ps(q4_block_sums(b0 + 4, x + b * 32, 0), _mm256_set1_ps(d0), acc0);
        minimums0 += m0 * blockSums[b];
    }
    return hsum8(_mm256_add_ps(acc0, acc1)) + (minimums0 + minimums1);
}
#endif

// The portable versions: the same multiply-adds lane by lane (lane j of a vector is element j
// of each group of 8), the same two accumulators and the same final order.
static inline void fma8(float *acc, const float *a, const float *b) { for (int j = 0; j < 8; j++) acc[j] = fmaf(a[j], b[j], acc[j]); }

static float dot_f32_c(const float *w, const float *x, int64_t n) {
    float a[4][8] = {{0}};
    for (int64_t i = 0; i + 32 <= n; i += 32) for (int k = 0; k < 4; k++) fma8(a[k], w + i + 8 * k, x + i + 8 * k);
    float s[8];
    for (int j = 0; j < 8; j++) s[j] = (a[0][j] + a[1][j]) + (a[2][j] + a[3][j]);
    return hsum8_c(s);
}

static float dot_q8_0_c(const uint8_t *row, const float *x, int64_t blocks) {
    float acc[2][8] = {{0}};
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 34, *q = block + 2;
        const float *xb = x + b * 32;
        float d = half_c(block), s[8], v[8];
        for (int j = 0; j < 8; j++) s[j] = (float)(int8_t)q[j] * xb[j];
        for (int k = 1; k < 4; k++) { for (int j = 0; j < 8; j++) v[j] = (float)(int8_t)q[8 * k + j]; fma8(s, v, xb + 8 * k); }
        for (int j = 0; j < 8; j++) acc[b & 1][j] = fmaf(s[j], d, acc[b & 1][j]);
    }
    float s[8];
    for (int j = 0; j < 8; j++) s[j] = acc[0][j] + acc[1][j];
    return hsum8_c(s);
}

static inline void q4_block_sums_c(const uint8_t *q, const float *xb, int32_t offset, float *s) {
    float l0[8], h0[8], l1[8], h1[8];
    for (int j = 0; j < 8; j++) {
        l0[j] = (float)((int32_t)(q[j] & 0x0f) - offset); h0[j] = (float)((int32_t)(q[j] >> 4) - offset);
        l1[j] = (float)((int32_t)(q[8 + j] & 0x0f) - offset); h1[j] = (float)((int32_t)(q[8 + j] >> 4) - offset);
    }
    for (int j = 0; j < 8; j++) s[j] = l0[j] * xb[j];
    fma8(s, h0, xb + 16);
    fma8(s, l1, xb + 8);
    fma8(s, h1, xb + 24);
}

static float dot_q4_0_c(const uint8_t *row, const float *x, int64_t blocks) {
    float acc[2][8] = {{0}};
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 18;
        float s[8], d = half_c(block);
        q4_block_sums_c(block + 2, x + b * 32, 8, s);
        for (int j = 0; j < 8; j++) acc[b & 1][j] = fmaf(s[j], d, acc[b & 1][j]);
    }
    float s[8];
    for (int j = 0; j < 8; j++) s[j] = acc[0][j] + acc[1][j];
    return hsum8_c(s);
}

static float dot_q4_1_c(const uint8_t *row, const float *x, int64_t blocks, const float *blockSums) {
    float acc[2][8] = {{0}}, minimums[2] = { 0, 0 };
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 20;
        float s[8], d = half_c(block), m = half_c(block + 2);
        q4_block_sums_c(block + 4, x + b * 32, 0, s);
        for (int j = 0; j < 8; j++) acc[b & 1][j] = fmaf(s[j], d, acc[b & 1][j]);
        minimums[b & 1] += m * blockSums[b];
    }
    float s[8];
    for (int j = 0; j < 8; j++) s[j] = acc[0][j] + acc[1][j];
    return hsum8_c(s) + (minimums[0] + minimums[1]);
}

float finch_dot_f32(const float *w, const float *x, int64_t n) {
#if defined(__x86_64__)
    if (level >= 1) return dot_f32_avx2(w, x, n);
#endif
    return dot_f32_c(w, x, n);
}

float finch_dot_q8_0(const uint8_t *row, const float *x, int64_t blocks) {
#if defined(__x86_64__)
    if (level >= 1) return dot_q8_0_avx2(row, x, blocks);
#endif
    return dot_q8_0_c(row, x, blocks);
}

float finch_dot_q4_0(const uint8_t *row, const float *x, int64_t blocks) {
#if defined(__x86_64__)
    if (level >= 1) return dot_q4_0_avx2(row, x, blocks);
#endif
    return dot_q4_0_c(row, x, blocks);
}

float finch_dot_q4_1(const uint8_t *row, const float *x, int64_t blocks, const float *blockSums) {
#if defined(__x86_64__)
    if (level >= 1) return dot_q4_1_avx2(row, x, blocks, blockSums);
#endif
    return dot_q4_1_c(row, x, blocks, blockSums);
}

// Rows [0, rows) of one matrix times n vectors, in one call: y[t * stride + r] (+)= row r . x_t.
// Each row is used for every vector while it is in cache; the kernel is chosen once, and its
// dot products inline here (a call per row cost about a tenth of a 576-wide q4_1 row).
// MARK: - K-quant rows (256 values per block) times f32 x
//
// block_q4_K: f16 d, f16 dmin, 12 bytes of six-bit scales and mins for 8 sub-blocks of 32, 128
// bytes of nibbles (each 32 bytes: low nibbles sub-block 2g, high nibbles 2g + 1); value =
// d * sc * q - dmin * m, so a sub-block's products are d * sc * sum q x - dmin * m * sum x, with
// the sums of x per 32 values given (`blockSums`, as for q4_1).
// block_q6_K: 128 bytes of low nibbles, 64 of high bit pairs, 16 int8 scales (one per 16 values),
// f16 d; value = d * sc * (q6 - 32).

static inline void q4k_scale_min(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) { *sc = q[j] & 63; *m = q[j + 4] & 63; }
    else { *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4); *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4); }
}

static float dot_q4_K_c(const uint8_t *row, const float *x, int64_t blocks, const float *blockSums) {
    float total = 0;
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 144, *scales = block + 4;
        float d = half_c(block), dmin = half_c(block + 2);
        for (int g = 0; g < 4; g++) {
            const uint8_t *qs = block + 16 + g * 32;
            const float *xb = x + b * 256 + g * 64;
            int sc1, m1, sc2, m2;
            q4k_scale_min(2 * g, scales, &sc1, &m1);
            q4k_scale_min(2 * g + 1, scales, &sc2, &m2);
            float s1 = 0, s2 = 0;
            for (int l = 0; l < 32; l++) { s1 += (float)(qs[l] & 0x0f) * xb[l]; s2 += (float)(qs[l] >> 4) * xb[32 + l]; }
            total += d * (float)sc1 * s1 + d * (float)sc2 * s2
                   - dmin * ((float)m1 * blockSums[b * 8 + 2 * g] + (float)m2 * blockSums[b * 8 + 2 * g + 1]);
        }
    }
    return total;
}

// block_q5_K (176 bytes): as q4_K (f16 d, f16 dmin, 12 bytes of scales and mins) then 32 bytes
// of fifth bits (bit 2g of byte l: value l of sub-block 2g, bit 2g + 1: of sub-block 2g + 1) and
// 128 bytes of nibbles; value = d * sc * (q4 + 16 * bit) - dmin * m.
static float dot_q5_K_c(const uint8_t *row, const float *x, int64_t blocks, const float *blockSums) {
    float total = 0;
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 176, *scales = block + 4, *qh = block + 16;
        float d = half_c(block), dmin = half_c(block + 2);
        for (int g = 0; g < 4; g++) {
            const uint8_t *qs = block + 48 + g * 32;
            const float *xb = x + b * 256 + g * 64;
            int sc1, m1, sc2, m2;
            q4k_scale_min(2 * g, scales, &sc1, &m1);
            q4k_scale_min(2 * g + 1, scales, &sc2, &m2);
            float s1 = 0, s2 = 0;
            for (int l = 0; l < 32; l++) {
                s1 += (float)((qs[l] & 0x0f) | (((qh[l] >> (2 * g)) & 1) << 4)) * xb[l];
                s2 += (float)((qs[l] >> 4) | (((qh[l] >> (2 * g + 1)) & 1) << 4)) * xb[32 + l];
            }
            total += d * (float)sc1 * s1 + d * (float)sc2 * s2
                   - dmin * ((float)m1 * blockSums[b * 8 + 2 * g] + (float)m2 * blockSums[b * 8 + 2 * g + 1]);
        }
    }
    return total;
}

// block_q2_K (84 bytes): 16 bytes of (4-bit scale | 4-bit min << 4) per 16 values, 64 bytes of
// 2-bit values, f16 d, f16 dmin; value = d * sc * q - dmin * m. block_q3_K (110 bytes): 32 bytes
// of inverted third bits (a clear bit subtracts 4), 64 bytes of low 2 bits, 12 bytes of sixteen
// 6-bit scales (offset 32), f16 d; value = d * (sc - 32) * q3. Both lay their 256 values out alike:
// half h of 128 (its 32 bytes of 2-bit values), shift 0, 2, 4, 6 (32 values each), 16 + 16 bytes.
static inline int q3k_scale(int j, const uint8_t *packed) {
    int low = j < 8 ? packed[j] & 0x0f : packed[j - 8] >> 4;
    return (low | (((packed[8 + (j & 3)] >> (2 * (j >> 2))) & 3) << 4)) - 32;
}

static float dot_q2_K_c(const uint8_t *row, const float *x, int64_t blocks) {
    float total = 0;
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 84;
        float d = half_c(block + 80), dmin = half_c(block + 82);
        const float *xb = x + b * 256;
        int index = 0;
        for (int part = 0; part < 2; part++) {
            const uint8_t *q = block + 16 + part * 32;
            for (int shift = 0; shift < 8; shift += 2) {
                for (int h = 0; h < 2; h++, index++, xb += 16) {
                    int sc = block[index];
                    float s = 0, sx = 0;
                    for (int l = 0; l < 16; l++) { s += (float)((q[h * 16 + l] >> shift) & 3) * xb[l]; sx += xb[l]; }
                    total += d * (float)(sc & 0x0f) * s - dmin * (float)(sc >> 4) * sx;
                }
            }
        }
    }
    return total;
}

static float dot_q3_K_c(const uint8_t *row, const float *x, int64_t blocks) {
    float total = 0;
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 110, *hmask = block, *scales = block + 96;
        float d = half_c(block + 108);
        const float *xb = x + b * 256;
        int index = 0, bit = 1;
        for (int part = 0; part < 2; part++) {
            const uint8_t *q = block + 32 + part * 32;
            for (int shift = 0; shift < 8; shift += 2, bit <<= 1) {
                for (int h = 0; h < 2; h++, index++, xb += 16) {
                    float s = 0;
                    for (int l = 0; l < 16; l++) {
                        int v = ((q[h * 16 + l] >> shift) & 3) - ((hmask[h * 16 + l] & bit) ? 0 : 4);
                        s += (float)v * xb[l];
                    }
                    total += d * (float)q3k_scale(index, scales) * s;
                }
            }
        }
    }
    return total;
}

static float dot_q6_K_c(const uint8_t *row, const float *x, int64_t blocks) {
    float total = 0;
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 210;
        float d = half_c(block + 208);
        for (int part = 0; part < 2; part++) {
            const uint8_t *ql = block + part * 64, *qh = block + 128 + part * 32;
            const int8_t *sc = (const int8_t *)(block + 192 + part * 8);
            const float *xb = x + b * 256 + part * 128;
            for (int side = 0; side < 2; side++) {
                float s[4] = {0, 0, 0, 0};
                for (int i = 0; i < 16; i++) {
                    int l = side * 16 + i;
                    s[0] += (float)(((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32) * xb[l];
                    s[1] += (float)(((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32) * xb[l + 32];
                    s[2] += (float)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32) * xb[l + 64];
                    s[3] += (float)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32) * xb[l + 96];
                }
                for (int k = 0; k < 4; k++) total += d * (float)sc[side + 2 * k] * s[k];
            }
        }
    }
    return total;
}

// block_q5_0 (22 bytes): f16 d, 32 bits of fifth bits (bit j: value j), 16 bytes of nibbles
// (low: values 0..<16, high: 16..<32); value = d * (q5 - 16). llama.cpp's Q4_K_M and Q5_K_M
// files hold it for the matrices whose rows are not a multiple of 256 (all of SmolLM2's).
static float dot_q5_0_c(const uint8_t *row, const float *x, int64_t blocks) {
    float total = 0;
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 22, *qs = block + 6;
        uint32_t qh;
        memcpy(&qh, block + 2, 4);
        float s = 0;
        for (int j = 0; j < 16; j++) {
            s += (float)((int)((qs[j] & 0x0f) | (((qh >> j) & 1) << 4)) - 16) * x[b * 32 + j];
            s += (float)((int)((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16) * x[b * 32 + j + 16];
        }
        total += half_c(block) * s;
    }
    return total;
}

// block_q5_1 (24 bytes): f16 d, f16 m, 32 fifth bits, 16 bytes of nibbles; value = d * q5 + m, so
// a block's products are d * sum q x + m * sum x (the block sums given, as for q4_1). llama.cpp's
// Q5_K_M files hold it where rows are not a multiple of 256.
static float dot_q5_1_c(const uint8_t *row, const float *x, int64_t blocks, const float *blockSums) {
    float total = 0;
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 24, *qs = block + 8;
        uint32_t qh;
        memcpy(&qh, block + 4, 4);
        float s = 0;
        for (int j = 0; j < 16; j++) {
            s += (float)((qs[j] & 0x0f) | (((qh >> j) & 1) << 4)) * x[b * 32 + j];
            s += (float)((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) * x[b * 32 + j + 16];
        }
        total += half_c(block) * s + half_c(block + 2) * blockSums[b];
    }
    return total;
}

// block_iq4_nl (18 bytes): f16 d, 16 bytes of nibbles indexing ggml's sixteen non-uniform levels
// (low nibbles: values 0..<16, high: 16..<32); value = d * level[q].
static const float iq4_levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

static float dot_iq4_nl_c(const uint8_t *row, const float *x, int64_t blocks) {
    float total = 0;
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 18, *qs = block + 2;
        float s = 0;
        for (int j = 0; j < 16; j++) s += iq4_levels[qs[j] & 0x0f] * x[b * 32 + j] + iq4_levels[qs[j] >> 4] * x[b * 32 + j + 16];
        total += half_c(block) * s;
    }
    return total;
}

// block_iq4_xs (136 bytes per 256): f16 d, 16 bits of high scale pairs, 4 bytes of low scale
// nibbles, then per 32 values 16 bytes of nibbles as IQ4_NL's; value = d * (ls - 32) * level[q].
static inline int iq4xs_scale(const uint8_t *block, int sub) {
    int high = (block[2] | block[3] << 8) >> (2 * sub) & 3;
    return (((block[4 + sub / 2] >> (4 * (sub % 2))) & 0x0f) | (high << 4)) - 32;
}

static float dot_iq4_xs_c(const uint8_t *row, const float *x, int64_t blocks) {
    float total = 0;
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 136;
        float d = half_c(block);
        for (int sub = 0; sub < 8; sub++) {
            const uint8_t *qs = block + 8 + sub * 16;
            const float *xb = x + b * 256 + sub * 32;
            float s = 0;
            for (int j = 0; j < 16; j++) s += iq4_levels[qs[j] & 0x0f] * xb[j] + iq4_levels[qs[j] >> 4] * xb[j + 16];
            total += d * (float)iq4xs_scale(block, sub) * s;
        }
    }
    return total;
}

#if defined(__x86_64__)
// 8 bytes widened to 8 int32 lanes.
AVX2 static inline __m256i bytes8u(const uint8_t *p) {
    int64_t v;
    memcpy(&v, p, 8);
    return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v));
}

// The levels of 8 nibble indices: two in-register tables of 8, chosen by the index's bit 3.
AVX2 static inline __m256 iq4_levels8(__m256i index, __m256 lowTable, __m256 highTable) {
    __m256 low = _mm256_permutevar8x32_ps(lowTable, index), high = _mm256_permutevar8x32_ps(highTable, index);
    __m256 upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(index, _mm256_set1_epi32(7)));
    return _mm256_blendv_ps(low, high, upper);
}

// 32 IQ4 values (16 bytes of nibbles: low ones values 0..<16, high ones 16..<32) times x, as 8 partial sums.
AVX2 static inline __m256 iq4_sum32(const uint8_t *qs, const float *x, __m256 lowTable, __m256 highTable) {
    const __m256i low4 = _mm256_set1_epi32(0x0f);
    __m256 s = _mm256_setzero_ps();
    for (int half = 0; half < 2; half++) {   // bytes 0..<8, then 8..<16
        __m256i bytes = bytes8u(qs + half * 8);
        s = _mm256_fmadd_ps(iq4_levels8(_mm256_and_si256(bytes, low4), lowTable, highTable), load8(x + half * 8), s);
        s = _mm256_fmadd_ps(iq4_levels8(_mm256_srli_epi32(bytes, 4), lowTable, highTable), load8(x + 16 + half * 8), s);
    }
    return s;
}

AVX2 static float dot_iq4_nl_avx2(const uint8_t *row, const float *x, int64_t blocks) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    const __m256 lowTable = _mm256_loadu_ps(iq4_levels), highTable = _mm256_loadu_ps(iq4_levels + 8);
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 18;
        __m256 s = iq4_sum32(block + 2, x + b * 32, lowTable, highTable);
        if (b & 1) acc1 = _mm256_fmadd_ps(s, _mm256_set1_ps(half_avx2(block)), acc1);
        else acc0 = _mm256_fmadd_ps(s, _mm256_set1_ps(half_avx2(block)), acc0);
    }
    return hsum8(_mm256_add_ps(acc0, acc1));
}

AVX2 static float dot_iq4_xs_avx2(const uint8_t *row, const float *x, int64_t blocks) {
    __m256 acc = _mm256_setzero_ps();
    const __m256 lowTable = _mm256_loadu_ps(iq4_levels), highTable = _mm256_loadu_ps(iq4_levels + 8);
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 136;
        float d = half_avx2(block);
        for (int sub = 0; sub < 8; sub++) {
            __m256 s = iq4_sum32(block + 8 + sub * 16, x + b * 256 + sub * 32, lowTable, highTable);
            acc = _mm256_fmadd_ps(s, _mm256_set1_ps(d * (float)iq4xs_scale(block, sub)), acc);
        }
    }
    return hsum8(acc);
}

// 32 five-bit values (16 bytes of nibbles: low ones values 0..<16, high ones 16..<32; bit j of
// qh the fifth bit of value j), minus `offset`, times x, as 8 partial sums.
AVX2 static inline __m256 q5_sum32(const uint8_t *qs, uint32_t qh, const float *x, int32_t offset) {
    const __m256i low4 = _mm256_set1_epi32(0x0f), one = _mm256_set1_epi32(1), sixteen = _mm256_set1_epi32(16);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), o = _mm256_set1_epi32(offset);
    __m256i h = _mm256_set1_epi32((int)qh);
    __m256 s = _mm256_setzero_ps();
    for (int half = 0; half < 2; half++) {   // bytes 0..<8, then 8..<16
        __m256i bytes = bytes8u(qs + half * 8);
        __m256i shift = _mm256_add_epi32(lanes, _mm256_set1_epi32(half * 8));
        __m256i bitLow = _mm256_and_si256(_mm256_srlv_epi32(h, shift), one);
        __m256i bitHigh = _mm256_and_si256(_mm256_srlv_epi32(h, _mm256_add_epi32(shift, sixteen)), one);
        __m256i low = _mm256_sub_epi32(_mm256_or_si256(_mm256_and_si256(bytes, low4), _mm256_slli_epi32(bitLow, 4)), o);
        __m256i high = _mm256_sub_epi32(_mm256_or_si256(_mm256_srli_epi32(bytes, 4), _mm256_slli_epi32(bitHigh, 4)), o);
        s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(low), load8(x + half * 8), s);
        s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(high), load8(x + 16 + half * 8), s);
    }
    return s;
}

AVX2 static float dot_q5_1_avx2(const uint8_t *row, const float *x, int64_t blocks, const float *blockSums) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float minimums = 0, d, m;
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 24, *qs = block + 8;
        const float *xb = x + b * 32;
        uint32_t qh;
        memcpy(&qh, block + 4, 4);
        halves_avx2(block, &d, &m);
        __m256 s = q5_sum32(qs, qh, xb, 0);
        if (b & 1) acc1 = _mm256_fmadd_ps(s, _mm256_set1_ps(d), acc1);
        else acc0 = _mm256_fmadd_ps(s, _mm256_set1_ps(d), acc0);
        minimums += m * blockSums[b];
    }
    return hsum8(_mm256_add_ps(acc0, acc1)) + minimums;
}

AVX2 static float dot_q5_0_avx2(const uint8_t *row, const float *x, int64_t blocks) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 22, *qs = block + 6;
        const float *xb = x + b * 32;
        uint32_t qh;
        memcpy(&qh, block + 2, 4);
        __m256 s = q5_sum32(qs, qh, xb, 16);
        if (b & 1) acc1 = _mm256_fmadd_ps(s, _mm256_set1_ps(half_avx2(block)), acc1);
        else acc0 = _mm256_fmadd_ps(s, _mm256_set1_ps(half_avx2(block)), acc0);
    }
    return hsum8(_mm256_add_ps(acc0, acc1));
}
#endif

#if defined(__x86_64__)
AVX2 static float dot_q4_K_avx2(const uint8_t *row, const float *x, int64_t blocks, const float *blockSums) {
    __m256 acc = _mm256_setzero_ps();
    float minimums = 0, d, dmin;
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 144, *scales = block + 4;
        halves_avx2(block, &d, &dmin);
        for (int g = 0; g < 4; g++) {
            const uint8_t *qs = block + 16 + g * 32;
            const float *xb = x + b * 256 + g * 64;
            int sc1, m1, sc2, m2;
            q4k_scale_min(2 * g, scales, &sc1, &m1);
            q4k_scale_min(2 * g + 1, scales, &sc2, &m2);
            __m256 s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), low, high;
            for (int l = 0; l < 32; l += 8) {
                nibbles16(qs + l, 0, &low, &high);
                s1 = _mm256_fmadd_ps(low, load8(xb + l), s1);
                s2 = _mm256_fmadd_ps(high, load8(xb + 32 + l), s2);
            }
            acc = _mm256_fmadd_ps(s1, _mm256_set1_ps(d * (float)sc1), acc);
            acc = _mm256_fmadd_ps(s2, _mm256_set1_ps(d * (float)sc2), acc);
            minimums += dmin * ((float)m1 * blockSums[b * 8 + 2 * g] + (float)m2 * blockSums[b * 8 + 2 * g + 1]);
        }
    }
    return hsum8(acc) - minimums;
}


// 16 values of 2 bits (bytes p[0..<16] shifted by `shift`) times x[0..<16], and (q3) minus 4
// where the bit `bit` of hm[0..<16] is clear.
AVX2 static inline __m256 low2_times_x(const uint8_t *p, const uint8_t *hm, int bit, int shift, const float *x, __m256 s) {
    const __m128i count = _mm_cvtsi32_si128(shift);
    const __m256i three = _mm256_set1_epi32(3);
    for (int l = 0; l < 16; l += 8) {
        __m256i v = _mm256_and_si256(_mm256_srl_epi32(bytes8u(p + l), count), three);
        if (hm) {
            __m256i clear = _mm256_cmpeq_epi32(_mm256_and_si256(bytes8u(hm + l), _mm256_set1_epi32(bit)), _mm256_setzero_si256());
            v = _mm256_add_epi32(v, _mm256_and_si256(clear, _mm256_set1_epi32(-4)));
        }
        s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), load8(x + l), s);
    }
    return s;
}

AVX2 static float dot_q2_K_avx2(const uint8_t *row, const float *x, int64_t blocks) {
    __m256 acc = _mm256_setzero_ps(), mins = _mm256_setzero_ps();
    float d, dmin;
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 84;
        halves_avx2(block + 80, &d, &dmin);
        const float *xb = x + b * 256;
        int index = 0;
        for (int part = 0; part < 2; part++) {
            const uint8_t *q = block + 16 + part * 32;
            for (int shift = 0; shift < 8; shift += 2) {
                for (int h = 0; h < 2; h++, index++, xb += 16) {
                    int sc = block[index];
                    __m256 s = low2_times_x(q + h * 16, NULL, 0, shift, xb, _mm256_setzero_ps());
                    acc = _mm256_fmadd_ps(s, _mm256_set1_ps(d * (float)(sc & 0x0f)), acc);
                    mins = _mm256_fmadd_ps(_mm256_add_ps(load8(xb), load8(xb + 8)), _mm256_set1_ps(dmin * (float)(sc >> 4)), mins);
                }
            }
        }
    }
    return hsum8(_mm256_sub_ps(acc, mins));
}

AVX2 static float dot_q3_K_avx2(const uint8_t *row, const float *x, int64_t blocks) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 110, *hmask = block, *scales = block + 96;
        float d = half_avx2(block + 108);
        const float *xb = x + b * 256;
        int index = 0, bit = 1;
        for (int part = 0; part < 2; part++) {
            const uint8_t *q = block + 32 + part * 32;
            for (int shift = 0; shift < 8; shift += 2, bit <<= 1) {
                for (int h = 0; h < 2; h++, index++, xb += 16) {
                    __m256 s = low2_times_x(q + h * 16, hmask + h * 16, bit, shift, xb, _mm256_setzero_ps());
                    acc = _mm256_fmadd_ps(s, _mm256_set1_ps(d * (float)q3k_scale(index, scales)), acc);
                }
            }
        }
    }
    return hsum8(acc);
}

AVX2 static float dot_q5_K_avx2(const uint8_t *row, const float *x, int64_t blocks, const float *blockSums) {
    __m256 acc = _mm256_setzero_ps();
    float minimums = 0, d, dmin;
    const __m256i low4 = _mm256_set1_epi32(0x0f), one = _mm256_set1_epi32(1);
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 176, *scales = block + 4, *qh = block + 16;
        halves_avx2(block, &d, &dmin);
        for (int g = 0; g < 4; g++) {
            const uint8_t *qs = block + 48 + g * 32;
            const float *xb = x + b * 256 + g * 64;
            int sc1, m1, sc2, m2;
            q4k_scale_min(2 * g, scales, &sc1, &m1);
            q4k_scale_min(2 * g + 1, scales, &sc2, &m2);
            const __m128i shiftLow = _mm_cvtsi32_si128(2 * g), shiftHigh = _mm_cvtsi32_si128(2 * g + 1);
            __m256 s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps();
            for (int l = 0; l < 32; l += 8) {
                __m256i bytes = bytes8u(qs + l), bits = bytes8u(qh + l);
                __m256i low = _mm256_or_si256(_mm256_and_si256(bytes, low4),
                                              _mm256_slli_epi32(_mm256_and_si256(_mm256_srl_epi32(bits, shiftLow), one), 4));
                __m256i high = _mm256_or_si256(_mm256_srli_epi32(bytes, 4),
                                               _mm256_slli_epi32(_mm256_and_si256(_mm256_srl_epi32(bits, shiftHigh), one), 4));
                s1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(low), load8(xb + l), s1);
                s2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(high), load8(xb + 32 + l), s2);
            }
            acc = _mm256_fmadd_ps(s1, _mm256_set1_ps(d * (float)sc1), acc);
            acc = _mm256_fmadd_ps(s2, _mm256_set1_ps(d * (float)sc2), acc);
            minimums += dmin * ((float)m1 * blockSums[b * 8 + 2 * g] + (float)m2 * blockSums[b * 8 + 2 * g + 1]);
        }
    }
    return hsum8(acc) - minimums;
}

AVX2 static float dot_q6_K_avx2(const uint8_t *row, const float *x, int64_t blocks) {
    __m256 acc = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi32(0x0f), two = _mm256_set1_epi32(3), offset = _mm256_set1_epi32(32);
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 210;
        float d = half_avx2(block + 208);
        for (int part = 0; part < 2; part++) {
            const uint8_t *ql = block + part * 64, *qh = block + 128 + part * 32;
            const int8_t *sc = (const int8_t *)(block + 192 + part * 8);
            const float *xb = x + b * 256 + part * 128;
            for (int side = 0; side < 2; side++) {
                __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
                for (int half = 0; half < 2; half++) {
                    int l = side * 16 + half * 8;
                    __m256i a = bytes8u(ql + l), c = bytes8u(ql + l + 32), h = bytes8u(qh + l);
                    __m256i q0 = _mm256_or_si256(_mm256_and_si256(a, low4), _mm256_slli_epi32(_mm256_and_si256(h, two), 4));
                    __m256i q1 = _mm256_or_si256(_mm256_and_si256(c, low4), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(h, 2), two), 4));
                    __m256i q2 = _mm256_or_si256(_mm256_srli_epi32(a, 4), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(h, 4), two), 4));
                    __m256i q3 = _mm256_or_si256(_mm256_srli_epi32(c, 4), _mm256_slli_epi32(_mm256_srli_epi32(h, 6), 4));
                    s0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q0, offset)), load8(xb + l), s0);
                    s1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q1, offset)), load8(xb + l + 32), s1);
                    s2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q2, offset)), load8(xb + l + 64), s2);
                    s3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q3, offset)), load8(xb + l + 96), s3);
                }
                acc = _mm256_fmadd_ps(s0, _mm256_set1_ps(d * (float)sc[side]), acc);
                acc = _mm256_fmadd_ps(s1, _mm256_set1_ps(d * (float)sc[side + 2]), acc);
                acc = _mm256_fmadd_ps(s2, _mm256_set1_ps(d * (float)sc[side + 4]), acc);
                acc = _mm256_fmadd_ps(s3, _mm256_set1_ps(d * (float)sc[side + 6]), acc);
            }
        }
    }
    return hsum8(acc);
}
#endif

#define MATVEC_LOOP(DOT) \
    for (int64_t r = 0; r < rows; r++) { \
        const uint8_t *row = w + r * rowBytes; \
        for (int64_t t = 0; t < n; t++) { \
            float v = DOT; \
            float *out = y + t * stride + r; \
            *out = accumulate ? *out + v : v; \
        } \
    }

#if defined(__x86_64__)
AVX2 static void matvec_avx2(int type, const uint8_t *w, int64_t rowBytes, int64_t rows, const float *x, int64_t columns, int64_t n,
                             const float *blockSums, float *y, int64_t stride, int accumulate) {
    int64_t blocks = columns / 32;
    switch (type) {
    case FINCH_MATVEC_F32: MATVEC_LOOP(dot_f32_avx2((const float *)row, x + t * columns, columns)) break;
    case FINCH_MATVEC_Q8_0: MATVEC_LOOP(dot_q8_0_avx2(row, x + t * columns, blocks)) break;
    case FINCH_MATVEC_Q4_0: MATVEC_LOOP(dot_q4_0_avx2(row, x + t * columns, blocks)) break;
    case FINCH_MATVEC_Q4_K: MATVEC_LOOP(dot_q4_K_avx2(row, x + t * columns, columns / 256, blockSums + t * blocks)) break;
    case FINCH_MATVEC_Q6_K: MATVEC_LOOP(dot_q6_K_avx2(row, x + t * columns, columns / 256)) break;
    case FINCH_MATVEC_Q5_0: MATVEC_LOOP(dot_q5_0_avx2(row, x + t * columns, blocks)) break;
    case FINCH_MATVEC_Q5_K: MATVEC_LOOP(dot_q5_K_avx2(row, x + t * columns, columns / 256, blockSums + t * blocks)) break;
    case FINCH_MATVEC_Q5_1: MATVEC_LOOP(dot_q5_1_avx2(row, x + t * columns, blocks, blockSums + t * blocks)) break;
    case FINCH_MATVEC_IQ4_NL: MATVEC_LOOP(dot_iq4_nl_avx2(row, x + t * columns, blocks)) break;
    case FINCH_MATVEC_Q2_K: MATVEC_LOOP(dot_q2_K_avx2(row, x + t * columns, columns / 256)) break;
    case FINCH_MATVEC_Q3_K: MATVEC_LOOP(dot_q3_K_avx2(row, x + t * columns, columns / 256)) break;
    case FINCH_MATVEC_IQ4_XS: MATVEC_LOOP(dot_iq4_xs_avx2(row, x + t * columns, columns / 256)) break;
    default: MATVEC_LOOP(dot_q4_1_avx2(row, x + t * columns, blocks, blockSums + t * blocks)) break;
    }
}
#endif

void finch_matvec(int type, const uint8_t *w, int64_t rowBytes, int64_t rows, const float *x, int64_t columns, int64_t n,
                  const float *blockSums, float *y, int64_t stride, int accumulate) {
#if defined(__x86_64__)
    if (level >= 1) { matvec_avx2(type, w, rowBytes, rows, x, columns, n, blockSums, y, stride, accumulate); return; }
#endif
    int64_t blocks = columns / 32;
    switch (type) {
    case FINCH_MATVEC_F32: MATVEC_LOOP(dot_f32_c((const float *)row, x + t * columns, columns)) break;
    case FINCH_MATVEC_Q8_0: MATVEC_LOOP(dot_q8_0_c(row, x + t * columns, blocks)) break;
    case FINCH_MATVEC_Q4_0: MATVEC_LOOP(dot_q4_0_c(row, x + t * columns, blocks)) break;
    case FINCH_MATVEC_Q4_K: MATVEC_LOOP(dot_q4_K_c(row, x + t * columns, columns / 256, blockSums + t * blocks)) break;
    case FINCH_MATVEC_Q6_K: MATVEC_LOOP(dot_q6_K_c(row, x + t * columns, columns / 256)) break;
    case FINCH_MATVEC_Q5_0: MATVEC_LOOP(dot_q5_0_c(row, x + t * columns, blocks)) break;
    case FINCH_MATVEC_Q5_K: MATVEC_LOOP(dot_q5_K_c(row, x + t * columns, columns / 256, blockSums + t * blocks)) break;
    case FINCH_MATVEC_Q5_1: MATVEC_LOOP(dot_q5_1_c(row, x + t * columns, blocks, blockSums + t * blocks)) break;
    case FINCH_MATVEC_IQ4_NL: MATVEC_LOOP(dot_iq4_nl_c(row, x + t * columns, blocks)) break;
    case FINCH_MATVEC_Q2_K: MATVEC_LOOP(dot_q2_K_c(row, x + t * columns, columns / 256)) break;
    case FINCH_MATVEC_Q3_K: MATVEC_LOOP(dot_q3_K_c(row, x + t * columns, columns / 256)) break;
    case FINCH_MATVEC_IQ4_XS: MATVEC_LOOP(dot_iq4_xs_c(row, x + t * columns, columns / 256)) break;
    default: MATVEC_LOOP(dot_q4_1_c(row, x + t * columns, blocks, blockSums + t * blocks)) break;
    }
}

// MARK: - Quantized rows times 8-bit activations (AVX2; AVX512_VNNI in int8_dot.c)
//
// Per block, for weights w = dw * qw (+ m for q4_1) and activations x ≈ dx * qx:
//   q8_0: sum w x ≈ dw dx sum qw qx;  q4_0: dw dx (sum q qx - 8 sum qx);  q4_1: dw dx sum q qx + m dx sum qx.
// The integer sums are exact on every path, so the paths differ only in the order of float additions.

#if defined(__x86_64__)
// 32 products of bytes (unsigned u, signed s) summed into 8 int32 lanes, as floats.
AVX2 static inline __m256 product_sums(__m256i u, __m256i s) {
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}

// A q4 block's 16 bytes of nibbles as 32 bytes 0..<16: low nibbles first, then high.
AVX2 static inline __m256i nibbles32(const uint8_t *p) {
    __m128i packed = _mm_loadu_si128((const __m128i *)p);
    __m256i both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

AVX2 static float int8_dot_q8_0_avx2(const uint8_t *row, const int8_t *qx, const float *dx, int64_t blocks) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 34;
        __m256i w = _mm256_loadu_si256((const __m256i *)(block + 2)), x = _mm256_loadu_si256((const __m256i *)(qx + b * 32));
        // signed x signed through the unsigned x signed instruction: |w|, and x with w's sign.
        __m256 p = product_sums(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        acc = _mm256_fmadd_ps(p, _mm256_set1_ps(half_avx2(block) * dx[b]), acc);
    }
    return hsum8(acc);
}

AVX2 static float int8_dot_q4_0_avx2(const uint8_t *row, const int8_t *qx, const float *dx, const int32_t *sx, int64_t blocks) {
    __m256 acc = _mm256_setzero_ps();
    float offsets = 0;
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *block = row + b * 18;
        float scale = half_avx2(block) * dx[b];
        acc = _mm256_fmadd_ps(product_sums(nibbles32(block + 2), _mm256_loadu_si256((const __m256i *)(qx + b * 32))),
                              _mm256_set1_ps(scale), acc);
        offsets += scale * (float)(8 * sx[b]);
    }
    return hsum8(acc) - offsets;
}

AVX2 static float int8_dot_q4_1_avx2(const uint8_t *row, const int8_t *qx, const float *dx, const int32_t *sx, int64_t blocks) {
    // Two accumulators: consecutive blocks do not wait on each other's multiply-add.
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float minimums = 0, d0, m0, d1, m1;
    int64_t b = 0;
    for (; b + 2 <= blocks; b += 2) {
        const uint8_t *b0 = row + b * 20, *b1 = b0 + 20;
        halves_avx2(b0, &d0, &m0);
        halves_avx2(b1, &d1, &m1);
        acc0 = _mm256_fmadd_ps(product_sums(nibbles32(b0 + 4), _mm256_loadu_si256((const __m256i *)(qx + b * 32))),
                               _mm256_set1_ps(d0 * dx[b]), acc0);
        acc1 = _mm256_fmadd_ps(product_sums(nibbles32(b1 + 4), _mm256_loadu_si256((const __m256i *)(qx + b * 32 + 32))),
                               _mm256_set1_ps(d1 * dx[b + 1]), acc1);
        minimums += m0 * dx[b] * (float)sx[b] + m1 * dx[b + 1] * (float)sx[b + 1];
    }
    if (b < blocks) {
        const uint8_t *b0 = row + b * 20;
        halves_avx2(b0, &d0, &m0);
        acc0 = _mm256_fmadd_ps(product_sums(nibbles32(b0 + 4), _mm256_loadu_si256((const __m256i *)(qx + b * 32))),
                               _mm256_set1_ps(d0 * dx[b]), acc0);
        minimums += m0 * dx[b] * (float)sx[b];
    }
    return hsum8(_mm256_add_ps(acc0, acc1)) + minimums;
}
#endif

// sum q_i qx_i over a q4 block's 16 bytes of nibbles (low: values 0..<16, high: 16..<32).
static int32_t nibble_products(const uint8_t *q, const int8_t *xb) {
    int32_t sum = 0;
    for (int i = 0; i < 16; i++) sum += (int32_t)(q[i] & 0x0f) * xb[i] + (int32_t)(q[i] >> 4) * xb[16 + i];
    return sum;
}

float finch_int8_dot(int type, const uint8_t *row, const int8_t *qx, const float *dx, const int32_t *sx, int64_t blocks,
                     int vnni) {
#if defined(__x86_64__)
    if (vnni) {
        switch (type) {
        case FINCH_INT8_Q8_0: return finch_int8_dot_q8_0(row, qx, dx, blocks);
        case FINCH_INT8_Q4_0: return finch_int8_dot_q4_0(row, qx, dx, sx, blocks);
        default: return finch_int8_dot_q4_1(row, qx, dx, sx, blocks);
        }
    }
    if (level >= 1) {
        switch (type) {
        case FINCH_INT8_Q8_0: return int8_dot_q8_0_avx2(row, qx, dx, blocks);
        case FINCH_INT8_Q4_0: return int8_dot_q4_0_avx2(row, qx, dx, sx, blocks);
        default: return int8_dot_q4_1_avx2(row, qx, dx, sx, blocks);
        }
    }
#else
    (void)vnni;
#endif
    float total = 0;
    for (int64_t b = 0; b < blocks; b++) {
        const int8_t *xb = qx + b * 32;
        switch (type) {
        case FINCH_INT8_Q8_0: {
            const uint8_t *block = row + b * 34;
            int32_t sum = 0;
            for (int i = 0; i < 32; i++) sum += (int32_t)(int8_t)block[2 + i] * xb[i];
            total += (float)sum * half_c(block) * dx[b];
            break;
        }
        case FINCH_INT8_Q4_0: {
            const uint8_t *block = row + b * 18;
            total += (float)(nibble_products(block + 2, xb) - 8 * sx[b]) * half_c(block) * dx[b];
            break;
        }
        default: {
            const uint8_t *block = row + b * 20;
            total += (float)nibble_products(block + 4, xb) * half_c(block) * dx[b] + half_c(block + 2) * dx[b] * (float)sx[b];
        }
        }
    }
    return total;
}

// MARK: - Decoding attention

#if defined(__x86_64__)
// Four keys at a time, each into its own sum: one key's products are a chain of dependent
// multiply-adds, and four chains keep the FMA units busy.
AVX2 static void key_scores_avx2(const float *q, const float *keys, int64_t stride, int64_t count, int64_t width, float scale,
                                 float *scores) {
    int64_t j = 0;
    for (; j + 4 <= count; j += 4) {
        const float *k0 = keys + j * stride, *k1 = k0 + stride, *k2 = k1 + stride, *k3 = k2 + stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t i = 0; i < width; i += 8) {
            __m256 qi = load8(q + i);
            a0 = _mm256_fmadd_ps(qi, load8(k0 + i), a0);
            a1 = _mm256_fmadd_ps(qi, load8(k1 + i), a1);
            a2 = _mm256_fmadd_ps(qi, load8(k2 + i), a2);
            a3 = _mm256_fmadd_ps(qi, load8(k3 + i), a3);
        }
        scores[j] = scale * hsum8(a0);
        scores[j + 1] = scale * hsum8(a1);
        scores[j + 2] = scale * hsum8(a2);
        scores[j + 3] = scale * hsum8(a3);
    }
    for (; j < count; j++) {
        const float *k = keys + j * stride;
        __m256 a = _mm256_setzero_ps();
        for (int64_t i = 0; i < width; i += 8) a = _mm256_fmadd_ps(load8(q + i), load8(k + i), a);
        scores[j] = scale * hsum8(a);
    }
}

// The sums stay in registers, 32 columns at a time over every value row (two rows per step into
// two sets of sums): a store-to-load chain once per value row was most of decoding's attention.
AVX2 static void weighted_values_avx2(const float *p, const float *values, int64_t stride, int64_t count, int64_t width,
                                      float *out) {
    int64_t c = 0;
    for (; c + 32 <= width; c += 32) {
        __m256 o0 = _mm256_setzero_ps(), o1 = o0, o2 = o0, o3 = o0, e0 = o0, e1 = o0, e2 = o0, e3 = o0;
        int64_t j = 0;
        for (; j + 2 <= count; j += 2) {
            const float *v = values + j * stride + c, *w = v + stride;
            __m256 pv = _mm256_set1_ps(p[j]), pw = _mm256_set1_ps(p[j + 1]);
            o0 = _mm256_fmadd_ps(pv, load8(v), o0); o1 = _mm256_fmadd_ps(pv, load8(v + 8), o1);
            o2 = _mm256_fmadd_ps(pv, load8(v + 16), o2); o3 = _mm256_fmadd_ps(pv, load8(v + 24), o3);
            e0 = _mm256_fmadd_ps(pw, load8(w), e0); e1 = _mm256_fmadd_ps(pw, load8(w + 8), e1);
            e2 = _mm256_fmadd_ps(pw, load8(w + 16), e2); e3 = _mm256_fmadd_ps(pw, load8(w + 24), e3);
        }
        if (j < count) {
            const float *v = values + j * stride + c;
            __m256 pv = _mm256_set1_ps(p[j]);
            o0 = _mm256_fmadd_ps(pv, load8(v), o0); o1 = _mm256_fmadd_ps(pv, load8(v + 8), o1);
            o2 = _mm256_fmadd_ps(pv, load8(v + 16), o2); o3 = _mm256_fmadd_ps(pv, load8(v + 24), o3);
        }
        _mm256_storeu_ps(out + c, _mm256_add_ps(o0, e0)); _mm256_storeu_ps(out + c + 8, _mm256_add_ps(o1, e1));
        _mm256_storeu_ps(out + c + 16, _mm256_add_ps(o2, e2)); _mm256_storeu_ps(out + c + 24, _mm256_add_ps(o3, e3));
    }
    for (; c < width; c += 8) {
        __m256 o = _mm256_setzero_ps();
        for (int64_t j = 0; j < count; j++) o = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), load8(values + j * stride + c), o);
        _mm256_storeu_ps(out + c, o);
    }
}
#endif

void finch_key_scores(const float *q, const float *keys, int64_t stride, int64_t count, int64_t width, float scale, float *scores) {
#if defined(__x86_64__)
    if (level >= 1) { key_scores_avx2(q, keys, stride, count, width, scale, scores); return; }
#endif
    for (int64_t j = 0; j < count; j++) {
        const float *k = keys + j * stride;
        float a[8] = {0};
        for (int64_t i = 0; i < width; i += 8) fma8(a, q + i, k + i);
        scores[j] = scale * hsum8_c(a);
    }
}

void finch_weighted_values(const float *p, const float *values, int64_t stride, int64_t count, int64_t width, float *out) {
#if defined(__x86_64__)
    if (level >= 1) { weighted_values_avx2(p, values, stride, count, width, out); return; }
#endif
    // Columns in whole groups of 32 take the rows in pairs into two sums, as the vector path does.
    int64_t paired = width / 32 * 32;
    for (int64_t c = 0; c < width; c++) {
        float o = 0, e = 0;
        int64_t j = 0;
        if (c < paired) for (; j + 2 <= count; j += 2) { o = fmaf(p[j], values[j * stride + c], o); e = fmaf(p[j + 1], values[(j + 1) * stride + c], e); }
        for (; j < count; j++) o = fmaf(p[j], values[j * stride + c], o);
        out[c] = o + e;
    }
}
