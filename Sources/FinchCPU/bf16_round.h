// f32 -> bf16 round-to-nearest-even (NaNs quieted), shared by bf16.c and vector.c.
#ifndef FINCH_BF16_ROUND_H
#define FINCH_BF16_ROUND_H
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

static inline uint16_t bf16_of(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);   // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

#if defined(__x86_64__)
// Integer rounding on 8 lanes: u + 0x7fff + ((u >> 16) & 1), NaNs quieted instead.
__attribute__((target("avx2")))
static inline __m256i round8(__m256 x) {
    __m256i u = _mm256_castps_si256(x);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    __m256i q = _mm256_or_si256(u, _mm256_set1_epi32(0x400000));
    return _mm256_blendv_epi8(r, q, nan);             // high halves hold the bf16 values
}

// 16 lanes (a, then b) rounded to bf16, as 16 uint16 values in order.
__attribute__((target("avx2")))
static inline __m256i pack_bf16x16(__m256 a, __m256 b) {
    __m256i x = _mm256_srli_epi32(round8(a), 16), y = _mm256_srli_epi32(round8(b), 16);
    return _mm256_permute4x64_epi64(_mm256_packus_epi32(x, y), 0xd8);
}

// 8 lanes rounded to bf16 and stored as 8 uint16 values.
__attribute__((target("avx2")))
static inline void store_bf16x8(uint16_t *dst, __m256 x) {
    __m256i h = _mm256_srli_epi32(round8(x), 16);
    __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    _mm_storeu_si128((__m128i *)dst, packed);
}
#endif
#endif
