// The catalogue softmax's logsumexp and its gradients on a CPU, logits fused away.
//
// Two XLA FFI handlers behind catalogue_softmax.cross_entropy(method="fused_cpu"):
//
//   lse_t = log sum_j exp(q_t . e_j)          over the candidate rows j
//   dq_t  = g_t sum_j p_tj e_j,   de_j = sum_t g_t p_tj q_t,   p_tj = exp(q_t . e_j - lse_t)
//
// Candidates are the local rows holding ids 1..num_items (the id of row 0 is
// an input: a block of a table split over devices starts further on). XLA
// writes each chunk of [queries x rows] logits to memory and reads it back for
// the max, the exp-sum and the backward products; here a register tile of
// logits (cpu_tiles.h) is consumed where it is made: the forward pass keeps a
// running max and a vector of exp-sums per query, and the backward pass turns
// the tile into softmax weights and feeds them straight to the two gradient
// products, each again a register tile. No logit is stored beyond the tile.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu_parallel.h"
#include "cpu_tiles.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace s3rec_tiles;  // NOLINT: the tile layer of this kernel family

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Problem {
  const float* queries;  // [T, H]
  const float* table;    // [R, H]
  int64_t num_queries, hidden, rows;
  int64_t lo, hi;        // local rows [lo, hi) are candidates
};

ffi::Error Describe(ffi::Buffer<ffi::F32>& queries, ffi::Buffer<ffi::F32>& table,
                    ffi::Buffer<ffi::S32>& first_id, int64_t num_items, Problem* problem) {
  auto q = queries.dimensions(), t = table.dimensions();
  if (q.size() != 2 || t.size() != 2 || q[1] != t[1])
    return ffi::Error::InvalidArgument("catalogue_softmax_cpu: need queries [T, H], table [R, H]");
  const int64_t id0 = first_id.typed_data()[0];
  *problem = Problem{queries.typed_data(), table.typed_data(), q[0], q[1], t[0],
                     std::max<int64_t>(0, 1 - id0), std::min<int64_t>(t[0], num_items - id0 + 1)};
  return ffi::Error::Success();
}

// Queries padded to whole tiles (zero rows, whose results are never read).
std::vector<float> PaddedQueries(const Problem& p) {
  const int64_t padded = (p.num_queries + kUsers - 1) / kUsers * kUsers;
  std::vector<float> out(padded * p.hidden, 0.0f);
  std::copy(p.queries, p.queries + p.num_queries * p.hidden, out.begin());
  return out;
}

ffi::Error LogSumExpImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> queries,
                         ffi::Buffer<ffi::F32> table, ffi::Buffer<ffi::S32> first_id,
                         int64_t num_items, int64_t threads, ffi::ResultBuffer<ffi::F32> lse) {
  Problem p;
  if (ffi::Error e = Describe(queries, table, first_id, num_items, &p); e.failure()) return e;
  std::vector<float> rows = PaddedQueries(p);
  const int64_t padded = static_cast<int64_t>(rows.size()) / std::max<int64_t>(p.hidden, 1);
  // Per query: the running max, and the sum of exp(logit - max) in double
  // (each tile's sum is a vector sum in float, then one horizontal add).
  std::vector<float> running_max(padded, kNegInf);
  std::vector<double> sums(padded, 0.0);
  // Parts of the queries, one per thread, each with the blocks packed for itself.
  const int64_t query_tiles = padded / kUsers;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, query_tiles / 16));
  ParallelFor(pool, parts, parts - 1, [&](int64_t part) {
    const int64_t first = query_tiles * part / parts * kUsers;
    const int64_t last = query_tiles * (part + 1) / parts * kUsers;
    std::vector<float> panel(p.hidden * kBlockItems);
    alignas(64) float tile[kUsers * kTileItems];
    for (int64_t block0 = p.lo; block0 < p.hi; block0 += kBlockItems) {
      const int64_t width = std::min<int64_t>(kBlockItems, p.hi - block0);
      PackBlock(p.table, p.hidden, block0, width, panel.data());
      const int64_t tiles = (width + kTileItems - 1) / kTileItems;
      for (int64_t q0 = first; q0 < last; q0 += kUsers) {
        for (int64_t t = 0; t < tiles; ++t) {
          const int64_t row0 = block0 + t * kTileItems;
          TileScores(rows.data() + q0 * p.hidden, p.hidden, panel.data() + t * kTileItems, tile);
          uint32_t valid[kVectors];
          for (int v = 0; v < kVectors; ++v) valid[v] = LanesBelow(row0, v, p.hi);
          for (int u = 0; u < kUsers; ++u) {
            const float* logits = tile + u * kTileItems;
            Vec top = Broadcast(kNegInf);
            for (int v = 0; v < kVectors; ++v)
              top = Max(top, Add(KeepLanes(Load(logits + v * kLanes), valid[v]),
                                 KeepLanes(Broadcast(kNegInf), ~valid[v] & kAllLanes)));
            float& m = running_max[q0 + u];
            const float tile_max = HorizontalMax(top);
            if (tile_max > m) {  // rare once the max has settled: rescale the sum
              sums[q0 + u] *= std::exp(static_cast<double>(m) - tile_max);
              m = tile_max;
            }
            if (m == kNegInf) continue;  // no finite logit yet
            const Vec shift = Broadcast(m);
            Vec tile_sum = Zero();
            for (int v = 0; v < kVectors; ++v)
              tile_sum = Add(tile_sum, KeepLanes(ExpNonPositive(Sub(Load(logits + v * kLanes),
                                                                    shift)), valid[v]));
            sums[q0 + u] += HorizontalSum(tile_sum);
          }
        }
      }
    }
  });
  float* out = lse->typed_data();
  for (int64_t t = 0; t < p.num_queries; ++t)
    out[t] = running_max[t] == kNegInf
                 ? kNegInf
                 : static_cast<float>(running_max[t] + std::log(sums[t]));
  return ffi::Error::Success();
}

// d_queries rows q0.. += weights [kUsers, kTileItems] x table rows row0.. ([kTileItems, H]):
// a register tile of kUsers x NV vectors of the hidden units at h0.
template <int NV>
void AddWeightedRows(const float* weights, const float* table, int64_t hidden, int64_t row0,
                     int items, int64_t h0, float* d_queries) {
  Vec acc[kUsers][NV];
  for (int u = 0; u < kUsers; ++u)
    for (int v = 0; v < NV; ++v) acc[u][v] = Zero();
  for (int i = 0; i < items; ++i) {
    const float* row = table + (row0 + i) * hidden + h0;
    Vec e[NV];
    for (int v = 0; v < NV; ++v) e[v] = Load(row + v * kLanes);
    for (int u = 0; u < kUsers; ++u) {
      const Vec w = Broadcast(weights[u * kTileItems + i]);
      for (int v = 0; v < NV; ++v) acc[u][v] = Fma(w, e[v], acc[u][v]);
    }
  }
  for (int u = 0; u < kUsers; ++u)
    for (int v = 0; v < NV; ++v) {
      float* dst = d_queries + u * hidden + h0 + v * kLanes;
      Store(dst, Add(Load(dst), acc[u][v]));
    }
}

// d_table rows row0.. += weights^T x queries q0.. ([kUsers, H]), NV vectors at h0:
// the queries' vectors stay in registers while the tile's rows pass.
template <int NV>
void AddWeightedQueries(const float* weights, const float* queries, int64_t hidden,
                        int64_t row0, int items, int64_t h0, float* d_table) {
  Vec q[kUsers][NV];
  for (int u = 0; u < kUsers; ++u)
    for (int v = 0; v < NV; ++v) q[u][v] = Load(queries + u * hidden + h0 + v * kLanes);
  for (int i = 0; i < items; ++i) {
    float* dst = d_table + (row0 + i) * hidden + h0;
    Vec acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = Load(dst + v * kLanes);
    for (int u = 0; u < kUsers; ++u) {
      const Vec w = Broadcast(weights[u * kTileItems + i]);
      for (int v = 0; v < NV; ++v) acc[v] = Fma(w, q[u][v], acc[v]);
    }
    for (int v = 0; v < NV; ++v) Store(dst + v * kLanes, acc[v]);
  }
}

// Both products over the hidden units in groups of up to kVectors vectors.
template <void (*Full)(const float*, const float*, int64_t, int64_t, int, int64_t, float*),
          void (*One)(const float*, const float*, int64_t, int64_t, int, int64_t, float*)>
void OverHidden(const float* weights, const float* data, int64_t hidden, int64_t row0, int items,
                float* out) {
  int64_t h0 = 0;
  for (; h0 + kVectors * kLanes <= hidden; h0 += kVectors * kLanes)
    Full(weights, data, hidden, row0, items, h0, out);
  for (; h0 < hidden; h0 += kLanes) One(weights, data, hidden, row0, items, h0, out);
}

ffi::Error LogSumExpGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> queries,
                             ffi::Buffer<ffi::F32> table, ffi::Buffer<ffi::S32> first_id,
                             ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> cotangent,
                             int64_t num_items, int64_t threads,
                             ffi::ResultBuffer<ffi::F32> d_queries,
                             ffi::ResultBuffer<ffi::F32> d_table) {
  Problem p;
  if (ffi::Error e = Describe(queries, table, first_id, num_items, &p); e.failure()) return e;
  if (p.hidden % kLanes)
    return ffi::Error::InvalidArgument("catalogue_softmax_cpu: hidden size must be a multiple "
                                       "of the vector width");
  std::vector<float> rows = PaddedQueries(p);
  const int64_t padded = static_cast<int64_t>(rows.size()) / p.hidden;
  // Per query: its lse and cotangent; a query without candidates (lse -inf) or
  // without cotangent adds nothing.
  std::vector<float> shift(padded, 0.0f), scale(padded, 0.0f);
  for (int64_t t = 0; t < p.num_queries; ++t) {
    const float l = lse.typed_data()[t];
    if (std::isfinite(l)) shift[t] = l, scale[t] = cotangent.typed_data()[t];
  }
  float* dt = d_table->typed_data();
  std::fill(dt, dt + p.rows * p.hidden, 0.0f);
  // Parts of the blocks, one per thread: each block's table gradient is one
  // part's alone; each part sums its own query gradient, added up after.
  const int64_t blocks = std::max<int64_t>(0, (p.hi - p.lo + kBlockItems - 1) / kBlockItems);
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, blocks));
  std::vector<std::vector<float>> dq_parts(parts);
  ParallelFor(pool, parts, parts - 1, [&](int64_t part) {
    std::vector<float>& dq = dq_parts[part];
    dq.assign(padded * p.hidden, 0.0f);
    std::vector<float> panel(p.hidden * kBlockItems);
    alignas(64) float tile[kUsers * kTileItems];
    for (int64_t b = blocks * part / parts; b < blocks * (part + 1) / parts; ++b) {
      const int64_t block0 = p.lo + b * kBlockItems;
      const int64_t width = std::min<int64_t>(kBlockItems, p.hi - block0);
      PackBlock(p.table, p.hidden, block0, width, panel.data());
      const int64_t tiles = (width + kTileItems - 1) / kTileItems;
      for (int64_t q0 = 0; q0 < padded; q0 += kUsers) {
        bool any = false;
        for (int u = 0; u < kUsers; ++u) any |= scale[q0 + u] != 0.0f;
        if (!any) continue;
        for (int64_t t = 0; t < tiles; ++t) {
          const int64_t row0 = block0 + t * kTileItems;
          const int items = static_cast<int>(std::min<int64_t>(kTileItems, p.hi - row0));
          TileScores(rows.data() + q0 * p.hidden, p.hidden, panel.data() + t * kTileItems, tile);
          // The tile's logits become g_t p_tj in place (0 past the candidates).
          for (int u = 0; u < kUsers; ++u) {
            float* w = tile + u * kTileItems;
            const Vec s = Broadcast(shift[q0 + u]), g = Broadcast(scale[q0 + u]);
            for (int v = 0; v < kVectors; ++v)
              Store(w + v * kLanes, KeepLanes(Mul(ExpNonPositive(Sub(Load(w + v * kLanes), s)), g),
                                              LanesBelow(row0, v, p.hi)));
          }
          OverHidden<AddWeightedRows<kVectors>, AddWeightedRows<1>>(
              tile, p.table, p.hidden, row0, items, dq.data() + q0 * p.hidden);
          OverHidden<AddWeightedQueries<kVectors>, AddWeightedQueries<1>>(
              tile, rows.data() + q0 * p.hidden, p.hidden, row0, items, dt);
        }
      }
    }
  });
  float* out = d_queries->typed_data();
  std::fill(out, out + p.num_queries * p.hidden, 0.0f);
  for (const std::vector<float>& dq : dq_parts)
    for (int64_t i = 0; i < p.num_queries * p.hidden; ++i) out[i] += dq[i];
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(S3RecCatalogueLogSumExpCpu, LogSumExpImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // queries [T, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // table (block) [R, H]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // id of row 0 [1]
                                  .Attr<int64_t>("num_items")
                                  .Attr<int64_t>("threads")      // most threads to use
                                  .Ret<ffi::Buffer<ffi::F32>>());  // lse [T]

XLA_FFI_DEFINE_HANDLER_SYMBOL(S3RecCatalogueLogSumExpGradCpu, LogSumExpGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // queries [T, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // table (block) [R, H]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // id of row 0 [1]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // lse [T]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // lse's cotangent [T]
                                  .Attr<int64_t>("num_items")
                                  .Attr<int64_t>("threads")      // most threads to use
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d queries [T, H]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // d table [R, H]
