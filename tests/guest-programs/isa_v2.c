/* x86-64-v2 workload for tests/emu_isa_v2.rs: built on the host with
 * `gcc -O2 -static -march=x86-64-v2 -mcx16`, run on the host and in the default guest under
 * `--accel emu`; every line it prints must be the same in both.
 *
 * It uses glibc's string functions (whose IFUNCs pick SSE4.2/SSSE3/SSE2 variants by CPUID;
 * glibc's x86-64-v2 features must be "active"), SSE4.2 string compares and CRC32, SSSE3 and
 * SSE4.1 integer and float forms, SSE3 float forms, POPCNT, CMPXCHG16B and LAHF/SAHF. */
#define _GNU_SOURCE
#include <nmmintrin.h>
#include <pmmintrin.h>
#include <smmintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/platform/x86.h>
#include <tmmintrin.h>

#define N 32768
static char text[N + 64];
static char *words[4096];
static uint64_t fnv = 1469598103934665603ull;

static void mix(uint64_t v) {
    fnv = (fnv ^ v) * 1099511628211ull;
}

static uint32_t lcg(void) {
    static uint32_t s = 12345;
    s = s * 1103515245u + 12345u;
    return s >> 8;
}

static int cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmpcase(const void *a, const void *b) {
    return strcasecmp(*(char *const *)a, *(char *const *)b);
}

/* Words of 1-12 letters (some upper case) separated by spaces and punctuation. */
static int make_text(void) {
    int n = 0, at = 0;
    while (at < N - 16 && n < 4096) {
        int len = 1 + lcg() % 12;
        words[n++] = text + at;
        for (int i = 0; i < len; i++)
            text[at++] = (lcg() % 7 == 0 ? 'A' : 'a') + lcg() % 6;
        text[at++] = 0;
    }
    return n;
}

static void strings(int n) {
    /* Join into one line with separators for the scanning functions. */
    static char line[N + 64];
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        size_t l = strlen(words[i]);
        memcpy(line + len, words[i], l);
        len += l;
        line[len++] = " ,.;"[i % 4];
    }
    line[len] = 0;
    mix(strlen(line));
    const char *needles[] = {"abc", "fed", "aAb", "ffff", "dcba", "eeeee", "b,a", "zz"};
    for (int i = 0; i < 8; i++) {
        const char *p = strstr(line, needles[i]);
        mix(p ? (uint64_t)(p - line) : ~0ull);
        const char *q = memmem(line, len, needles[i], strlen(needles[i]));
        mix(q ? (uint64_t)(q - line) : ~0ull);
    }
    for (size_t off = 0; off < len; off += 997) {
        mix(strcspn(line + off, ".;"));
        mix(strspn(line + off, "abcdef"));
        const char *p = strpbrk(line + off, "F;");
        mix(p ? (uint64_t)(p - line) : 0);
        p = strchr(line + off, 'E');
        mix(p ? (uint64_t)(p - line) : 0);
        p = strrchr(line + off, 'C');
        mix(p ? (uint64_t)(p - line) : 0);
        p = memchr(line + off, ';', len - off);
        mix(p ? (uint64_t)(p - line) : 0);
        mix(strnlen(line + off, 300));
    }
    printf("isa-v2 strings: %016llx\n", (unsigned long long)fnv);
    qsort(words, n, sizeof words[0], cmp);
    for (int i = 1; i < n; i++) {
        mix(strcmp(words[i - 1], words[i]) > 0);
        mix(strncmp(words[i - 1], words[i], 3) + 1000);
        mix(memcmp(words[i - 1], words[i], 1) < 0);
    }
    mix(strlen(words[0]) + strlen(words[n - 1]) * 100);
    printf("isa-v2 sorted: %016llx %s %s\n", (unsigned long long)fnv, words[0], words[n - 1]);
    qsort(words, n, sizeof words[0], cmpcase);
    for (int i = 1; i < n; i++)
        mix(strncasecmp(words[i - 1], words[i], 4) < 0);
    printf("isa-v2 casesorted: %016llx\n", (unsigned long long)fnv);
}

static void vectors(void) {
    uint64_t crc = ~0ull;
    for (int i = 0; i + 8 <= N; i += 8) {
        uint64_t v;
        memcpy(&v, text + i, 8);
        crc = _mm_crc32_u64(crc, v);
    }
    crc = _mm_crc32_u8((uint32_t)crc, 0x5a);
    crc = _mm_crc32_u16((uint32_t)crc, 0x1234);
    crc = _mm_crc32_u32((uint32_t)crc, 0xdeadbeef);
    uint64_t pop = 0, idx = 0;
    __m128i acc = _mm_setzero_si128(), mn = _mm_set1_epi8(-1);
    const __m128i rev = _mm_setr_epi8(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m128i set = _mm_setr_epi8('a', 'e', 'C', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    for (int i = 0; i + 16 <= N; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(text + i));
        pop += __builtin_popcountll((uint64_t)_mm_cvtsi128_si64(v));
        idx += _mm_cmpistri(set, v, _SIDD_CMP_EQUAL_ANY | _SIDD_MOST_SIGNIFICANT);
        idx += _mm_cmpestri(set, 2, v, 16, _SIDD_CMP_RANGES | _SIDD_NEGATIVE_POLARITY);
        __m128i m = _mm_cmpistrm(set, v, _SIDD_CMP_EQUAL_ANY | _SIDD_UNIT_MASK);
        __m128i r = _mm_shuffle_epi8(v, rev);
        r = _mm_alignr_epi8(r, v, 3);
        r = _mm_sign_epi8(_mm_abs_epi8(r), m);
        r = _mm_maddubs_epi16(r, v);
        r = _mm_hadd_epi16(r, _mm_mulhrs_epi16(r, v));
        r = _mm_mullo_epi32(r, _mm_cvtepu8_epi32(v));
        r = _mm_blendv_epi8(r, _mm_max_epu32(r, v), m);
        r = _mm_packus_epi32(r, _mm_cvtepi16_epi64(v));
        acc = _mm_add_epi64(acc, _mm_xor_si128(r, _mm_mpsadbw_epu8(v, r, 5)));
        acc = _mm_insert_epi32(acc, _mm_extract_epi8(r, 7) + _mm_testz_si128(r, m), 2);
        mn = _mm_add_epi32(mn, _mm_minpos_epu16(r));
        acc = _mm_add_epi64(acc, _mm_cmpgt_epi64(r, acc));
    }
    printf("isa-v2 crc32c: %08llx popcnt: %llu pcmpxstri: %llu\n", (unsigned long long)(crc & 0xffffffff),
           (unsigned long long)pop, (unsigned long long)idx);
    printf("isa-v2 vector: %016llx %016llx %016llx\n", (unsigned long long)_mm_extract_epi64(acc, 0),
           (unsigned long long)_mm_extract_epi64(acc, 1), (unsigned long long)_mm_cvtsi128_si64(mn));
}

static void floats(void) {
    __m128 s = _mm_setzero_ps();
    __m128d d = _mm_set1_pd(0.25);
    for (int i = 0; i < 2000; i++) {
        __m128 x = _mm_setr_ps(i * 0.37f, -i * 1.5f, i / 7.0f, 1e-3f * i);
        __m128 y = _mm_addsub_ps(x, _mm_moveldup_ps(x));
        y = _mm_hadd_ps(y, _mm_movehdup_ps(x));
        y = _mm_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        s = _mm_add_ps(s, _mm_dp_ps(y, x, 0xf3));
        s = _mm_blend_ps(s, _mm_floor_ps(_mm_hsub_ps(s, x)), 0x4);
        __m128d e = _mm_setr_pd(i * 0.5, -i / 3.0);
        d = _mm_add_pd(d, _mm_dp_pd(_mm_hadd_pd(e, _mm_movedup_pd(e)), e, 0x31));
        d = _mm_round_pd(_mm_addsub_pd(d, e), _MM_FROUND_TO_ZERO);
    }
    float f[4];
    double g[2];
    _mm_storeu_ps(f, s);
    _mm_storeu_pd(g, d);
    uint32_t fb[4];
    uint64_t gb[2];
    memcpy(fb, f, sizeof fb);
    memcpy(gb, g, sizeof gb);
    printf("isa-v2 floats: %08x %08x %08x %08x %016llx %016llx\n", fb[0], fb[1], fb[2], fb[3],
           (unsigned long long)gb[0], (unsigned long long)gb[1]);
}

static void scalar(void) {
    static __int128 cell __attribute__((aligned(16)));
    unsigned __int128 want = 0, got = 0;
    for (int i = 1; i <= 100; i++) {
        __int128 next = ((__int128)i << 64) | (unsigned)(i * i);
        got = __sync_val_compare_and_swap(&cell, (i % 3 == 0) ? (__int128)12345 : cell, next);
        want += got;
    }
    unsigned char ah = 0;
    __asm__ volatile("mov $0xd5, %%ah\n\tsahf\n\tmov $0, %%ah\n\tlahf\n\tmov %%ah, %0" : "=r"(ah) : : "rax", "cc");
    printf("isa-v2 cmpxchg16b: %016llx %016llx lahf: %02x\n", (unsigned long long)(want >> 64),
           (unsigned long long)want, ah);
}

int main(void) {
    printf("isa-v2 glibc active: sse3=%d ssse3=%d sse4_1=%d sse4_2=%d popcnt=%d cx16=%d lahf64=%d\n",
           CPU_FEATURE_ACTIVE(SSE3), CPU_FEATURE_ACTIVE(SSSE3), CPU_FEATURE_ACTIVE(SSE4_1),
           CPU_FEATURE_ACTIVE(SSE4_2), CPU_FEATURE_ACTIVE(POPCNT), CPU_FEATURE_ACTIVE(CMPXCHG16B),
           CPU_FEATURE_ACTIVE(LAHF64_SAHF64));
    int n = make_text();
    strings(n);
    vectors();
    floats();
    scalar();
    printf("isa-v2 done\n");
    return 0;
}
