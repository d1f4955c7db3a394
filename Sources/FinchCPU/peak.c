// Loops that reach the CPU's arithmetic peak: 12 independent accumulators hide the FMA
// latency (4-5 cycles on two pipes), so the loop measures throughput, not latency.
#include "FinchCPU.h"
#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

#define ROUND(OP) a0 = OP(a0); a1 = OP(a1); a2 = OP(a2); a3 = OP(a3); a4 = OP(a4); a5 = OP(a5); \
    a6 = OP(a6); a7 = OP(a7); a8 = OP(a8); a9 = OP(a9); a10 = OP(a10); a11 = OP(a11);

__attribute__((target("avx2,fma")))
static float peak_avx2(int64_t iterations) {
    __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    __m256 a0 = _mm256_set1_ps(0), a1 = _mm256_set1_ps(1), a2 = _mm256_set1_ps(2), a3 = _mm256_set1_ps(3),
           a4 = _mm256_set1_ps(4), a5 = _mm256_set1_ps(5), a6 = _mm256_set1_ps(6), a7 = _mm256_set1_ps(7),
           a8 = _mm256_set1_ps(8), a9 = _mm256_set1_ps(9), a10 = _mm256_set1_ps(10), a11 = _mm256_set1_ps(11);
#define F(x) _mm256_fmadd_ps(x, m, c)
    for (int64_t i = 0; i < iterations; i++) { ROUND(F) }
#undef F
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[7];
}

__attribute__((target("avx512f")))
static float peak_avx512(int64_t iterations) {
    __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    __m512 a0 = _mm512_set1_ps(0), a1 = _mm512_set1_ps(1), a2 = _mm512_set1_ps(2), a3 = _mm512_set1_ps(3),
           a4 = _mm512_set1_ps(4), a5 = _mm512_set1_ps(5), a6 = _mm512_set1_ps(6), a7 = _mm512_set1_ps(7),
           a8 = _mm512_set1_ps(8), a9 = _mm512_set1_ps(9), a10 = _mm512_set1_ps(10), a11 = _mm512_set1_ps(11);
#define F(x) _mm512_fmadd_ps(x, m, c)
    for (int64_t i = 0; i < iterations; i++) { ROUND(F) }
#undef F
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx512f,avx512bf16")))
static float peak_bf16(int64_t iterations) {
    __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3400);
    __m512 a0 = _mm512_set1_ps(0), a1 = _mm512_set1_ps(1), a2 = _mm512_set1_ps(2), a3 = _mm512_set1_ps(3),
           a4 = _mm512_set1_ps(4), a5 = _mm512_set1_ps(5), a6 = _mm512_set1_ps(6), a7 = _mm512_set1_ps(7),
           a8 = _mm512_set1_ps(8), a9 = _mm512_set1_ps(9), a10 = _mm512_set1_ps(10), a11 = _mm512_set1_ps(11);
#define F(acc) _mm512_dpbf16_ps(acc, x, y)
    for (int64_t i = 0; i < iterations; i++) { ROUND(F) }
#undef F
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    return _mm512_reduce_add_ps(s);
}

// AMX: Linux hands out the tile data state only on request (arch_prctl, once per process).
#include <sys/syscall.h>
#include <unistd.h>
enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };

int finch_amx_request(void) {
#if defined(SYS_arch_prctl)
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
    return 0;
#endif
}

// The tile configuration (palette 1): tiles 0-3 accumulate 16 x 16 f32, tiles 4-7 hold 16 rows
// of 32 bf16 (A) or 16 rows of 16 bf16 pairs (B, VNNI order).
typedef struct { uint8_t palette, startRow, reserved[14]; uint16_t columnBytes[16]; uint8_t rows[16]; } tile_config_t;

// Four independent tile products per iteration (two A tiles x two B tiles), each 16 x 16 x 32
// multiply-adds: 16384 FLOPs.
__attribute__((target("amx-tile,amx-bf16")))
static float peak_amx(int64_t iterations) {
    tile_config_t config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; t++) { config.rows[t] = 16; config.columnBytes[t] = 64; }
    _Alignas(64) uint16_t x[16 * 32], y[16 * 32];
    _Alignas(64) float out[16 * 16];
    for (int i = 0; i < 16 * 32; i++) { x[i] = 0x3f80; y[i] = 0x3400; }
    _tile_loadconfig(&config);
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_loadd(4, x, 64); _tile_loadd(5, x, 64); _tile_loadd(6, y, 64); _tile_loadd(7, y, 64);
    for (int64_t i = 0; i < iterations; i++) {
        _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, out, 64);
    _tile_release();
    return out[0] + out[255];
}

float finch_peak_loop(int kind, int64_t iterations) {
    switch (kind) {
    case 0: return peak_avx2(iterations);
    case 1: return peak_avx512(iterations);
    case 2: return peak_bf16(iterations);
    case 3: return peak_amx(iterations);
    default: return 0;
    }
}
#else
float finch_peak_loop(int kind, int64_t iterations) { (void)kind; (void)iterations; return 0; }
int finch_amx_request(void) { return 0; }
#endif
