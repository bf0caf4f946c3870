/* Vectors of LANES floats for the native kernels, on any target.
 *
 * LANES is the target's float vector width (16 with AVX-512, 8 with AVX, 4
 * otherwise: SSE2, NEON, or plain C that the compiler lowers), or -DSNN_LANES.
 * The kernels are written once with GCC vector extensions (each operation is
 * the scalar one on every lane; no contraction: build with -ffp-contract=off);
 * the few operations C has no operator for (a fused multiply-add for free-order
 * sums, partial loads and stores, listing the true lanes) use the target's
 * instructions where it has them and plain C elsewhere, with the same results.
 * A vector as wide as the target's registers keeps the compile in seconds
 * (wider ones are split by the compiler, slowly, into worse code).
 */
#ifndef SNN_LANES_H
#define SNN_LANES_H

#include <stdint.h>
#if defined(__AVX__) || defined(__SSE2__)
#include <immintrin.h>
#endif
#if defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#ifndef SNN_LANES
#if defined(__AVX512F__)
#define SNN_LANES 16
#elif defined(__AVX__)
#define SNN_LANES 8
#else
#define SNN_LANES 4
#endif
#endif
#define LANES SNN_LANES
#if LANES != 4 && LANES != 8 && LANES != 16
#error "SNN_LANES must be 4, 8 or 16"
#endif

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(float))));
/* unaligned vector loads and stores of floats, without taking addresses */
typedef float vfu __attribute__((vector_size(LANES * sizeof(float)), aligned(4),
                                 may_alias));
typedef int32_t viu __attribute__((vector_size(LANES * sizeof(float)),
                                   aligned(4), may_alias));

static inline vf ones_where(vi mask) { return (vf)(mask & 0x3f800000); }

/* x on every lane (not 0 + x: that is an addition, kept for the sign of 0) */
static inline vf splat(float x) {
#if LANES == 16
  const vf v = {x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
#elif LANES == 8
  const vf v = {x, x, x, x, x, x, x, x};
#else
  const vf v = {x, x, x, x};
#endif
  return v;
}

/* a * b + c, fused where the target has it: only for sums whose order and
 * rounding are free (gradient sums), never for the membranes. */
static inline vf fmadd(vf a, vf b, vf c) {
#if LANES == 16 && defined(__AVX512F__)
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif LANES == 8 && defined(__FMA__)
  return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#elif LANES == 4 && defined(__FMA__)
  return (vf)_mm_fmadd_ps((__m128)a, (__m128)b, (__m128)c);
#elif LANES == 4 && defined(__aarch64__) && defined(__ARM_NEON)
  return (vf)vfmaq_f32((float32x4_t)c, (float32x4_t)a, (float32x4_t)b);
#else
  return a * b + c;
#endif
}

/* lanes 0 .. LANES-1 as integers */
static inline vi lane_index(void) {
#if LANES == 16
  const vi index = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
#elif LANES == 8
  const vi index = {0, 1, 2, 3, 4, 5, 6, 7};
#else
  const vi index = {0, 1, 2, 3};
#endif
  return index;
}

/* The first n <= LANES floats at `from` (the other lanes 0), and stored (the
 * floats past n untouched); a library call of memcpy would cost more than
 * these in the loops over steps and rows. */
static inline vf load_lanes(const float *from, int n) {
  if (n == LANES) return (vf)(*(const vfu *)from);
#if LANES == 16 && defined(__AVX512F__)
  return (vf)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), from);
#elif LANES == 8 && defined(__AVX__)
  const vi mask = lane_index() < n;
  return (vf)_mm256_maskload_ps(from, (__m256i)mask);
#else
  vf v = {0};
  for (int j = 0; j < n; j++) v[j] = from[j];
  return v;
#endif
}

static inline void store_lanes(float *to, vf v, int n) {
  if (n == LANES) {
    *(vfu *)to = v;
    return;
  }
#if LANES == 16 && defined(__AVX512F__)
  _mm512_mask_storeu_ps(to, (__mmask16)((1u << n) - 1), (__m512)v);
#elif LANES == 8 && defined(__AVX__)
  const vi mask = lane_index() < n;
  _mm256_maskstore_ps(to, (__m256i)mask, (__m256)v);
#else
  for (int j = 0; j < n; j++) to[j] = v[j];
#endif
}

/* Bit j set where lane j of `test` (0 or -1 per lane) is true. */
static inline uint32_t lane_bits(vi test) {
#if LANES == 16 && defined(__AVX512F__)
  return _mm512_test_epi32_mask((__m512i)test, (__m512i)test);
#elif LANES == 8 && defined(__AVX__)
  return (uint32_t)_mm256_movemask_ps((__m256)test);
#elif LANES == 4 && defined(__SSE2__)
  return (uint32_t)_mm_movemask_ps((__m128)test);
#else
  uint32_t bits = 0;
  for (int j = 0; j < LANES; j++) bits |= (uint32_t)(test[j] & 1) << j;
  return bits;
#endif
}

/* Whether fmadd is one instruction here. */
#if (LANES == 16 && defined(__AVX512F__)) || defined(__FMA__) || \
    (LANES == 4 && defined(__aarch64__) && defined(__ARM_NEON))
#define SNN_HAS_FMA 1
#else
#define SNN_HAS_FMA 0
#endif

/* For each 4-bit mask, how many bits are set, and their positions in order. */
static const uint8_t SNN_BIT_COUNT[16] = {0, 1, 1, 2, 1, 2, 2, 3,
                                          1, 2, 2, 3, 2, 3, 3, 4};
typedef int32_t vi4 __attribute__((vector_size(16)));
typedef int32_t vi4u __attribute__((vector_size(16), aligned(4), may_alias));
static const vi4 SNN_SET_BITS[16] = {
    {0, 0, 0, 0}, {0, 0, 0, 0}, {1, 0, 0, 0}, {0, 1, 0, 0},
    {2, 0, 0, 0}, {0, 2, 0, 0}, {1, 2, 0, 0}, {0, 1, 2, 0},
    {3, 0, 0, 0}, {0, 3, 0, 0}, {1, 3, 0, 0}, {0, 1, 3, 0},
    {2, 3, 0, 0}, {0, 2, 3, 0}, {1, 2, 3, 0}, {0, 1, 2, 3}};

/* How many of the lanes j < n of `test` are true. */
static inline int count_lanes(vi test, int n) {
  const uint32_t bits = lane_bits(test) & ((1u << n) - 1);
#if defined(__POPCNT__)
  return __builtin_popcount(bits);
#else
  int count = 0;
  for (int q = 0; q < LANES; q += 4) count += SNN_BIT_COUNT[(bits >> q) & 15u];
  return count;
#endif
}

/* Append col + j for the lanes j < n of `test` that are true, in order;
 * returns how many. The list needs LANES entries of room past its end (the
 * entries past the count are scratch). No branch on the data. */
static inline int list_lanes(vi test, int n, int32_t col, int32_t *list) {
  const uint32_t bits = lane_bits(test) & ((1u << n) - 1);
#if LANES == 16 && defined(__AVX512F__)
  const __m512i lanes =
      _mm512_add_epi32(_mm512_set1_epi32(col), (__m512i)lane_index());
  _mm512_storeu_si512(list, _mm512_maskz_compress_epi32((__mmask16)bits, lanes));
  return __builtin_popcount(bits);
#else
  int count = 0; /* four lanes at a time, by the table of set bits */
  for (int q = 0; q < LANES; q += 4) {
    const uint32_t nibble = (bits >> q) & 15u;
    *(vi4u *)(list + count) = SNN_SET_BITS[nibble] + (col + q);
    count += SNN_BIT_COUNT[nibble];
  }
  return count;
#endif
}

#endif
