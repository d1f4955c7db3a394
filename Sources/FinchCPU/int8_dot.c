// Dot products of quantized rows (ggml blocks of 32) with activations rounded to 8 bits, on
// AVX512_VNNI: one vpdpbusd does the 32 byte products and sums them into 8 int32 lanes, where
// AVX2 needs vpmaddubsw + vpmaddwd. The arithmetic is MatVecInt8.swift's (llama.cpp's), so the
// integer sums are equal and the results equal up to the order of float additions.
#include "FinchCPU.h"
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>

#define VNNI __attribute__((target("avx512f,avx512vl,avx512bw,avx512vnni,f16c,fma,avx2")))

// f16 scales through vmovd, which zeroes the rest of the register, then vcvtph2ps. (_cvtsh_ss
// became vpinsrw into whatever register the compiler picked, here the running sum of block
// minimums, chaining every block to the previous one: decoding ran 20% slower.)
VNNI static inline float half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((int)h)));
}

// A q4_1 block's d and m (two f16 at p) as floats, one 4-byte load.
VNNI static inline __m128 halves(const uint8_t *p) {
    int32_t both;
    memcpy(&both, p, 4);
    return _mm_cvtph_ps(_mm_cvtsi32_si128(both));
}

VNNI static inline __m256i load32(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

// 16 bytes of nibbles as 32 values 0..<16: low nibbles first, then high.
VNNI static inline __m256i nibbles(const uint8_t *p) {
    __m128i packed = _mm_loadu_si128((const __m128i *)p);
    __m256i both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

VNNI static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

VNNI float finch_int8_dot_q8_0(const uint8_t *row, const int8_t *qx, const float *dx, int64_t blocks) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 1 < blocks; b += 2) {
        const uint8_t *b0 = row + b * 34, *b1 = b0 + 34;
        __m256i w0 = load32(b0 + 2), w1 = load32(b1 + 2);
        __m256i x0 = load32(qx + b * 32), x1 = load32(qx + (b + 1) * 32);
        // signed x signed on the unsigned x signed instruction: |w|, and x with w's sign.
        __m256i p0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w0, w0), _mm256_sign_epi8(x0, w0));
        __m256i p1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w1, w1), _mm256_sign_epi8(x1, w1));
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(half(b0) * dx[b]), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(half(b1) * dx[b + 1]), acc1);
    }
    if (b < blocks) {
        const uint8_t *b0 = row + b * 34;
        __m256i w0 = load32(b0 + 2), x0 = load32(qx + b * 32);
        __m256i p0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w0, w0), _mm256_sign_epi8(x0, w0));
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(half(b0) * dx[b]), acc0);
    }
    return hsum(_mm256_add_ps(acc0, acc1));
}

VNNI float finch_int8_dot_q4_0(const uint8_t *row, const int8_t *qx, const float *dx, const int32_t *sx, int64_t blocks) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float offsets = 0;
    int64_t b = 0;
    for (; b + 1 < blocks; b += 2) {
        const uint8_t *b0 = row + b * 18, *b1 = b0 + 18;
        float s0 = half(b0) * dx[b], s1 = half(b1) * dx[b + 1];
        __m256i p0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), nibbles(b0 + 2), load32(qx + b * 32));
        __m256i p1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), nibbles(b1 + 2), load32(qx + (b + 1) * 32));
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(s0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(s1), acc1);
        offsets += s0 * (float)(8 * sx[b]) + s1 * (float)(8 * sx[b + 1]);
    }
    if (b < blocks) {
        const uint8_t *b0 = row + b * 18;
        float s0 = half(b0) * dx[b];
        __m256i p0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), nibbles(b0 + 2), load32(qx + b * 32));
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(s0), acc0);
        offsets += s0 * (float)(8 * sx[b]);
    }
    return hsum(_mm256_add_ps(acc0, acc1)) - offsets;
}

VNNI float finch_int8_dot_q4_1(const uint8_t *row, const int8_t *qx, const float *dx, const int32_t *sx, int64_t blocks) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float minimums = 0;
    int64_t b = 0;
    for (; b + 1 < blocks; b += 2) {
        const uint8_t *b0 = row + b * 20, *b1 = b0 + 20;
        __m256i p0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), nibbles(b0 + 4), load32(qx + b * 32));
        __m256i p1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), nibbles(b1 + 4), load32(qx + (b + 1) * 32));
        __m128 h0 = halves(b0), h1 = halves(b1);
        float d0 = _mm_cvtss_f32(h0), m0 = _mm_cvtss_f32(_mm_movehdup_ps(h0));
        float d1 = _mm_cvtss_f32(h1), m1 = _mm_cvtss_f32(_mm_movehdup_ps(h1));
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(d0 * dx[b]), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(d1 * dx[b + 1]), acc1);
        minimums += m0 * dx[b] * (float)sx[b] + m1 * dx[b + 1] * (float)sx[b + 1];
    }
    if (b < blocks) {
        const uint8_t *b0 = row + b * 20;
        __m256i p0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), nibbles(b0 + 4), load32(qx + b * 32));
        __m128 h0 = halves(b0);
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(_mm_cvtss_f32(h0) * dx[b]), acc0);
        minimums += _mm_cvtss_f32(_mm_movehdup_ps(h0)) * dx[b] * (float)sx[b];
    }
    return hsum(_mm256_add_ps(acc0, acc1)) + minimums;
}
#else
float finch_int8_dot_q8_0(const uint8_t *row, const int8_t *qx, const float *dx, int64_t blocks) { (void)row; (void)qx; (void)dx; (void)blocks; return 0; }
float finch_int8_dot_q4_0(const uint8_t *row, const int8_t *qx, const float *dx, const int32_t *sx, int64_t blocks) { (void)row; (void)qx; (void)dx; (void)sx; (void)blocks; return 0; }
float finch_int8_dot_q4_1(const uint8_t *row, const int8_t *qx, const float *dx, const int32_t *sx, int64_t blocks) { (void)row; (void)qx; (void)dx; (void)sx; (void)blocks; return 0; }
#endif
