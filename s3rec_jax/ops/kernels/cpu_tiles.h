// Register tiles of dot products for the native CPU kernels (full_ranking_cpu.cc,
// catalogue_softmax_cpu.cc): one vector-ISA layer (AVX-512, AVX2 + FMA, or one
// scalar lane), the packing of catalogue rows, and the multiply-add loop.
//
// Every dot product is the same sequence of fused multiply-adds over the
// hidden units in order, whatever lane or tile it lands in.

#ifndef S3REC_JAX_KERNELS_CPU_TILES_H_
#define S3REC_JAX_KERNELS_CPU_TILES_H_

#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace s3rec_tiles {

// The register tiles: kUsers rows (users, queries) x kVectors vectors of kLanes items.
#if defined(__AVX512F__)
constexpr int kLanes = 16, kUsers = 6, kVectors = 4;
using Vec = __m512;
inline Vec Load(const float* p) { return _mm512_loadu_ps(p); }
inline Vec Broadcast(float x) { return _mm512_set1_ps(x); }
inline Vec Zero() { return _mm512_setzero_ps(); }
inline Vec Fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline uint32_t GreaterEqual(Vec s, Vec t) { return _mm512_cmp_ps_mask(s, t, _CMP_GE_OQ); }
// Greater, or unordered (a NaN score must reach the exact key compare).
inline uint32_t AboveOrNan(Vec s, Vec t) { return _mm512_cmp_ps_mask(s, t, _CMP_NLE_UQ); }
inline void Store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec Add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline Vec Sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
inline Vec Mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
inline Vec Max(Vec a, Vec b) { return _mm512_max_ps(a, b); }
inline Vec KeepLanes(Vec v, uint32_t lanes) { return _mm512_maskz_mov_ps(lanes, v); }
inline float HorizontalSum(Vec v) { return _mm512_reduce_add_ps(v); }
inline float HorizontalMax(Vec v) { return _mm512_reduce_max_ps(v); }
inline Vec RoundToInt(Vec v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT); }
inline Vec TimesPow2(Vec v, Vec n) { return _mm512_scalef_ps(v, n); }
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kLanes = 8, kUsers = 6, kVectors = 2;
using Vec = __m256;
inline Vec Load(const float* p) { return _mm256_loadu_ps(p); }
inline Vec Broadcast(float x) { return _mm256_set1_ps(x); }
inline Vec Zero() { return _mm256_setzero_ps(); }
inline Vec Fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline uint32_t GreaterEqual(Vec s, Vec t) {
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(s, t, _CMP_GE_OQ)));
}
inline uint32_t AboveOrNan(Vec s, Vec t) {
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(s, t, _CMP_NLE_UQ)));
}
inline void Store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec Add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline Vec Sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
inline Vec Mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
inline Vec Max(Vec a, Vec b) { return _mm256_max_ps(a, b); }
inline Vec KeepLanes(Vec v, uint32_t lanes) {
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i set = _mm256_and_si256(_mm256_set1_epi32(static_cast<int>(lanes)), bit);
  return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_cmpeq_epi32(set, bit)));
}
inline float HorizontalSum(Vec v) {
  alignas(32) float x[8];
  _mm256_store_ps(x, v);
  return ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]));
}
inline float HorizontalMax(Vec v) {
  alignas(32) float x[8];
  _mm256_store_ps(x, v);
  return std::max(std::max(std::max(x[0], x[1]), std::max(x[2], x[3])),
                  std::max(std::max(x[4], x[5]), std::max(x[6], x[7])));
}
inline Vec RoundToInt(Vec v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline Vec TimesPow2(Vec v, Vec n) {
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
                                                          _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(v, _mm256_castsi256_ps(bits));
}
#else
// Portable fallback: one lane, still one fused multiply-add per hidden unit.
constexpr int kLanes = 1, kUsers = 4, kVectors = 4;
using Vec = float;
inline Vec Load(const float* p) { return *p; }
inline Vec Broadcast(float x) { return x; }
inline Vec Zero() { return 0.0f; }
inline Vec Fma(Vec a, Vec b, Vec c) { return std::fma(a, b, c); }
inline uint32_t GreaterEqual(Vec s, Vec t) { return s >= t; }
inline uint32_t AboveOrNan(Vec s, Vec t) { return !(s <= t); }
inline void Store(float* p, Vec v) { *p = v; }
inline Vec Add(Vec a, Vec b) { return a + b; }
inline Vec Sub(Vec a, Vec b) { return a - b; }
inline Vec Mul(Vec a, Vec b) { return a * b; }
inline Vec Max(Vec a, Vec b) { return std::max(a, b); }
inline Vec KeepLanes(Vec v, uint32_t lanes) { return (lanes & 1u) ? v : 0.0f; }
inline float HorizontalSum(Vec v) { return v; }
inline float HorizontalMax(Vec v) { return v; }
inline Vec RoundToInt(Vec v) { return std::nearbyint(v); }
inline Vec TimesPow2(Vec v, Vec n) { return std::ldexp(v, static_cast<int>(n)); }
#endif



constexpr int kTileItems = kLanes * kVectors;
constexpr uint32_t kAllLanes = kLanes == 32 ? 0xFFFFFFFFu : (1u << kLanes) - 1;
// Items per packed block: [hidden, kBlockItems] floats stay in a core's L2
// while every row tile passes over them.
constexpr int64_t kBlockItems = 512;

// Lanes of vector v of a tile starting at local row `row0` that are below `hi`.
inline uint32_t LanesBelow(int64_t row0, int v, int64_t hi) {
  const int64_t left = hi - (row0 + v * kLanes);
  return left >= kLanes ? kAllLanes : left <= 0 ? 0u : (1u << left) - 1;
}

// Rows [block0, block0 + width) of a row-major [rows, hidden] table into
// `panel` as [hidden, kBlockItems], zero past `width`.
inline void PackBlock(const float* table, int64_t hidden, int64_t block0, int64_t width,
                      float* panel) {
  for (int64_t h = 0; h < hidden; ++h) {
    float* dst = panel + h * kBlockItems;
    for (int64_t i = 0; i < width; ++i) dst[i] = table[(block0 + i) * hidden + h];
    std::fill(dst + width, dst + kBlockItems, 0.0f);
  }
}

// The dot product in the vector lanes' order: one fused multiply-add per
// hidden unit, first to last, starting from 0.
inline float SequentialDot(const float* a, const float* b, int64_t hidden) {
  float acc = 0.0f;
  for (int64_t h = 0; h < hidden; ++h) acc = std::fma(a[h], b[h], acc);
  return acc;
}

// exp(x) for x <= 0 down to -inf (0 there), relative error about 2e-7: a
// degree-6 polynomial of the remainder after taking out n ln 2.
inline Vec ExpNonPositive(Vec x) {
  x = Max(x, Broadcast(-87.0f));
  const Vec n = RoundToInt(Mul(x, Broadcast(1.44269504088896341f)));
  Vec r = Fma(n, Broadcast(-0.693359375f), x);
  r = Fma(n, Broadcast(2.12194440e-4f), r);
  Vec p = Broadcast(1.9875691500e-4f);
  p = Fma(p, r, Broadcast(1.3981999507e-3f));
  p = Fma(p, r, Broadcast(8.3334519073e-3f));
  p = Fma(p, r, Broadcast(4.1665795894e-2f));
  p = Fma(p, r, Broadcast(1.6666665459e-1f));
  p = Fma(p, r, Broadcast(5.0000001201e-1f));
  p = Fma(Mul(p, r), r, Add(r, Broadcast(1.0f)));
  return TimesPow2(p, n);
}

// The tile's scores into `out` [kUsers][kTileItems]. Kept out of line so that
// the accumulators stay in registers through the loop (inlined beside the
// heap code, the compiler kept them in memory and stored all of them on
// every step).
__attribute__((noinline)) inline void TileScores(const float* user_rows, int64_t hidden,
                                          const float* items, float* out) {
  Vec acc[kUsers][kVectors];
  for (int u = 0; u < kUsers; ++u)
    for (int v = 0; v < kVectors; ++v) acc[u][v] = Zero();
  for (int64_t h = 0; h < hidden; ++h, items += kBlockItems) {
    Vec item[kVectors];
    for (int v = 0; v < kVectors; ++v) item[v] = Load(items + v * kLanes);
    for (int u = 0; u < kUsers; ++u) {
      Vec weight = Broadcast(user_rows[u * hidden + h]);
      for (int v = 0; v < kVectors; ++v) acc[u][v] = Fma(weight, item[v], acc[u][v]);
    }
  }
  for (int u = 0; u < kUsers; ++u)
    for (int v = 0; v < kVectors; ++v) Store(out + u * kTileItems + v * kLanes, acc[u][v]);
}


}  // namespace s3rec_tiles

#endif  // S3REC_JAX_KERNELS_CPU_TILES_H_
