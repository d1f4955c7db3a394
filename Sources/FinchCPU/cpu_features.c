// Which instruction sets this CPU has, from cpuid, and whether the OS saves their registers (xgetbv).
#include "FinchCPU.h"
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static uint64_t xgetbv0(void) {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

uint32_t finch_cpu_features(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!osxsave || !avx) return 0;
    uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return 0;                 // XMM and YMM state
    uint32_t f = 0;
    if ((c >> 12) & 1) f |= FINCH_CPU_FMA;
    if ((c >> 29) & 1) f |= FINCH_CPU_F16C;
    if (__get_cpuid_max(0, 0) < 7) return f;
    unsigned b7, c7, d7, a7;
    __cpuid_count(7, 0, a7, b7, c7, d7);
    unsigned maxSub = a7;
    if ((b7 >> 5) & 1) f |= FINCH_CPU_AVX2;
    int zmm = (xcr0 & 0xe0) == 0xe0;                   // opmask, upper ZMM0-15, ZMM16-31
    if (zmm) {
        if ((b7 >> 16) & 1) f |= FINCH_CPU_AVX512F;
        if ((b7 >> 17) & 1) f |= FINCH_CPU_AVX512DQ;
        if ((b7 >> 30) & 1) f |= FINCH_CPU_AVX512BW;
        if ((b7 >> 31) & 1) f |= FINCH_CPU_AVX512VL;
        if ((c7 >> 11) & 1) f |= FINCH_CPU_AVX512VNNI;
    }
    int amx = (xcr0 & 0x60000) == 0x60000;             // XTILECFG, XTILEDATA
    if (amx) {
        if ((d7 >> 22) & 1) f |= FINCH_CPU_AMX_BF16;
        if ((d7 >> 24) & 1) f |= FINCH_CPU_AMX_TILE;
    }
    if (maxSub >= 1) {
        unsigned a71, b71, c71, d71;
        __cpuid_count(7, 1, a71, b71, c71, d71);
        if ((a71 >> 4) & 1) f |= FINCH_CPU_AVXVNNI;
        if (zmm && ((a71 >> 5) & 1)) f |= FINCH_CPU_AVX512BF16;
    }
    return f;
}

void finch_cpu_brand(char *buffer, size_t size) {
    if (size == 0) return;
    buffer[0] = 0;
    unsigned a, b, c, d;
    if (!__get_cpuid(0x80000000, &a, &b, &c, &d) || a < 0x80000004 || size < 49) return;
    unsigned words[12];
    for (unsigned i = 0; i < 3; i++) __get_cpuid(0x80000002 + i, &words[4 * i], &words[4 * i + 1], &words[4 * i + 2], &words[4 * i + 3]);
    memcpy(buffer, words, 48);
    buffer[48] = 0;
    // Trim the padding some vendors put around the name.
    size_t start = 0, end = strlen(buffer);
    while (buffer[start] == ' ') start++;
    while (end > start && buffer[end - 1] == ' ') end--;
    memmove(buffer, buffer + start, end - start);
    buffer[end - start] = 0;
}
#else
uint32_t finch_cpu_features(void) { return 0; }
void finch_cpu_brand(char *buffer, size_t size) { if (size) buffer[0] = 0; }
#endif
