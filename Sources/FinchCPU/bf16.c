// f32 <-> bf16 with round-to-nearest-even (NaN stays NaN), one kernel per instruction set.
#include "FinchCPU.h"
#include "bf16_round.h"

static int level = 0;

static inline float f32_of(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

static void to_bf16_c(const float *src, uint16_t *dst, size_t n) { for (size_t i = 0; i < n; i++) dst[i] = bf16_of(src[i]); }
static void to_f32_c(const uint16_t *src, float *dst, size_t n) { for (size_t i = 0; i < n; i++) dst[i] = f32_of(src[i]); }

#if defined(__x86_64__)
__attribute__((target("avx2")))
static void to_bf16_avx2(const float *src, uint16_t *dst, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), pack_bf16x16(_mm256_loadu_ps(src + i), _mm256_loadu_ps(src + i + 8)));
    for (; i < n; i++) dst[i] = bf16_of(src[i]);
}

__attribute__((target("avx2")))
static void to_f32_avx2(const uint16_t *src, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(h, 16)));
    }
    for (; i < n; i++) dst[i] = f32_of(src[i]);
}

__attribute__((target("avx2")))
static void round_avx2(const float *src, float *dst, size_t n) {
    size_t i = 0;
    __m256i mask = _mm256_set1_epi32((int)0xffff0000u);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_and_si256(round8(_mm256_loadu_ps(src + i)), mask)));
    for (; i < n; i++) dst[i] = f32_of(bf16_of(src[i]));
}

__attribute__((target("avx512f,avx512bw")))
static void to_f32_avx512(const uint16_t *src, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + i)));
        _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(h, 16)));
    }
    for (; i < n; i++) dst[i] = f32_of(src[i]);
}

// Integer rounding on 16 lanes, as round8. (vcvtneps2bf16 would be one instruction, but it
// flushes subnormals to zero, and bf16 must round alike on every CPU: PyTorch keeps them.)
__attribute__((target("avx512f,avx512bw")))
static inline __m512i round16(__m512 x) {
    __m512i u = _mm512_castps_si512(x);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    return _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x400000));
}

__attribute__((target("avx512f,avx512bw")))
static void to_bf16_avx512(const float *src, uint16_t *dst, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i h = _mm512_srli_epi32(round16(_mm512_loadu_ps(src + i)), 16);
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtepi32_epi16(h));
    }
    for (; i < n; i++) dst[i] = bf16_of(src[i]);
}

__attribute__((target("avx512f,avx512bw")))
static void round_avx512(const float *src, float *dst, size_t n) {
    size_t i = 0;
    __m512i mask = _mm512_set1_epi32((int)0xffff0000u);
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_and_si512(round16(_mm512_loadu_ps(src + i)), mask)));
    for (; i < n; i++) dst[i] = f32_of(bf16_of(src[i]));
}
#endif

int finch_bf16_set_level(int maxLevel, uint32_t f) {
    int l = 0;
#if defined(__x86_64__)
    if ((f & FINCH_CPU_AVX2)) l = 1;
    if (l == 1 && (f & FINCH_CPU_AVX512F) && (f & FINCH_CPU_AVX512BW)) l = 2;
#endif
    level = l < maxLevel ? l : maxLevel;
    return level;
}

void finch_f32_to_bf16(const float *src, uint16_t *dst, size_t n) {
#if defined(__x86_64__)
    if (level >= 2) { to_bf16_avx512(src, dst, n); return; }
    if (level >= 1) { to_bf16_avx2(src, dst, n); return; }
#endif
    to_bf16_c(src, dst, n);
}

void finch_bf16_to_f32(const uint16_t *src, float *dst, size_t n) {
#if defined(__x86_64__)
    if (level >= 2) { to_f32_avx512(src, dst, n); return; }
    if (level >= 1) { to_f32_avx2(src, dst, n); return; }
#endif
    to_f32_c(src, dst, n);
}

void finch_round_to_bf16(const float *src, float *dst, size_t n) {
#if defined(__x86_64__)
    if (level >= 2) { round_avx512(src, dst, n); return; }
    if (level >= 1) { round_avx2(src, dst, n); return; }
#endif
    for (size_t i = 0; i < n; i++) dst[i] = f32_of(bf16_of(src[i]));
}

void finch_f32_to_bf16_rows(const float *src, size_t ld, uint16_t *dst, size_t rows, size_t columns) {
    if (ld == columns) { finch_f32_to_bf16(src, dst, rows * columns); return; }
    for (size_t r = 0; r < rows; r++) finch_f32_to_bf16(src + r * ld, dst + r * columns, columns);
}
