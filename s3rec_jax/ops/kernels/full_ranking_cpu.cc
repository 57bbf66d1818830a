// Full ranking on a CPU in one pass: score tiles, count and top-k fused.
//
// An XLA FFI handler with the semantics of metrics.full_ranking on one
// device's block of the catalogue. XLA:CPU writes a score tile to memory and
// reads it back for every reduction over it; here each [users x items] tile
// of scores is made in registers by a register-blocked multiply-add loop and
// is compared there with the answer's score (the rank count) and with each
// user's current k-th best (the top-k), so a score is never stored. Nearly
// every item loses to the k-th best once the lists fill, so the top-k costs a
// compare per score and a heap update for the rare winner.
//
// Every score, the answer's included, is the same sequence of fused
// multiply-adds over the hidden units in order (vector lanes and the scalar
// dot alike), so items whose rows are bit-identical to the answer's get the
// answer's score exactly: the ties metrics.full_ranking settles with row
// fingerprints settle themselves here.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_parallel.h"
#include "cpu_tiles.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace s3rec_tiles;  // NOLINT: the tile layer of this kernel family

// The order lax.top_k gives canonical float32 scores (-0.0 as 0.0, every NaN
// as the positive quiet NaN, above everything), as int32 keys.
inline int32_t OrderKey(float score) {
  if (score == 0.0f) score = 0.0f;
  if (std::isnan(score)) score = std::numeric_limits<float>::quiet_NaN();
  int32_t bits;
  std::memcpy(&bits, &score, sizeof(bits));
  return bits < 0 ? bits ^ 0x7FFFFFFF : bits;
}

inline float FromOrderKey(int32_t key) {
  int32_t bits = key < 0 ? key ^ 0x7FFFFFFF : key;
  float score;
  std::memcpy(&score, &bits, sizeof(score));
  return score;
}

// A user's running top-k: a binary heap whose root is the worst entry (lowest
// key; of equal keys the highest id, as lax.top_k keeps the lower column).
struct Entry {
  int32_t key;
  int32_t id;
};

inline bool Worse(const Entry& a, const Entry& b) {
  return a.key < b.key || (a.key == b.key && a.id > b.id);
}

struct UserState {
  float answer_score;
  bool answer_nan;
  float threshold;              // the worst entry's score: a vector pre-filter
  int64_t answer_row;           // local row of the answer (may be outside this block)
  std::vector<int32_t> excluded;  // sorted local rows of excluded history items
  size_t next_excluded;         // tiles reach a user in row order: the first not yet passed
  Entry* heap;
};

void SiftDown(Entry* heap, int64_t size, int64_t i) {
  while (true) {
    int64_t worst = i, left = 2 * i + 1, right = left + 1;
    if (left < size && Worse(heap[left], heap[worst])) worst = left;
    if (right < size && Worse(heap[right], heap[worst])) worst = right;
    if (worst == i) return;
    std::swap(heap[i], heap[worst]);
    i = worst;
  }
}

// Items are offered in increasing id order, so an item whose key equals the
// worst entry's loses the tie: only a strictly larger key enters.
inline void Offer(UserState& user, int64_t top_k, int64_t row, int32_t first_id, float score) {
  int32_t key = OrderKey(score);
  if (key <= user.heap[0].key) return;
  user.heap[0] = Entry{key, static_cast<int32_t>(first_id + row)};
  SiftDown(user.heap, top_k, 0);
  user.threshold = FromOrderKey(user.heap[0].key);
}

struct Scan {
  const float* users;   // [padded users, hidden]
  int64_t num_users;
  int64_t hidden;
  int64_t top_k;
  int32_t first_id;
  int64_t lo, hi;       // local rows [lo, hi) are real items
  std::vector<UserState>* state;
  std::vector<int64_t>* counts;
};

// One tile: kUsers users x kTileItems items starting at local row `row0`,
// the packed block `panel` ([hidden, kBlockItems], column `col0` onward).
inline void Tile(const Scan& scan, const float* panel, int64_t col0, int64_t row0, int64_t user0) {
  alignas(64) float tile[kUsers * kTileItems];
  TileScores(scan.users + user0 * scan.hidden, scan.hidden, panel + col0, tile);
  // Lanes that are real items: all of them but in a block's last tile.
  uint32_t valid[kVectors];
  for (int v = 0; v < kVectors; ++v) valid[v] = LanesBelow(row0, v, scan.hi);
  for (int u = 0; u < kUsers; ++u) {
    int64_t user = user0 + u;
    if (user >= scan.num_users) break;
    UserState& state = (*scan.state)[user];
    const float* scores = tile + u * kTileItems;
    // Lanes out of this user's candidates: excluded history items (for the
    // count and the top-k), and the answer itself (for the count).
    uint32_t excluded[kVectors] = {}, answer_lane[kVectors] = {};
    const int64_t end = row0 + kTileItems;
    while (state.next_excluded < state.excluded.size() &&
           state.excluded[state.next_excluded] < end) {
      const int64_t lane = state.excluded[state.next_excluded++] - row0;
      excluded[lane / kLanes] |= 1u << (lane % kLanes);
    }
    if (state.answer_row >= row0 && state.answer_row < end) {
      const int64_t lane = state.answer_row - row0;
      answer_lane[lane / kLanes] = 1u << (lane % kLanes);
    }
    Vec answer = Broadcast(state.answer_score);
    int64_t count = 0;
    for (int v = 0; v < kVectors; ++v)
      count += __builtin_popcount(GreaterEqual(Load(scores + v * kLanes), answer) & valid[v] &
                                  ~excluded[v] & ~answer_lane[v]);
    (*scan.counts)[user] += count;
    if (scan.top_k == 0) continue;
    Vec threshold = Broadcast(state.threshold);
    for (int v = 0; v < kVectors; ++v) {
      uint32_t above = AboveOrNan(Load(scores + v * kLanes), threshold) & valid[v] & ~excluded[v];
      while (above) {
        int lane = __builtin_ctz(above);
        above &= above - 1;
        Offer(state, scan.top_k, row0 + v * kLanes + lane, scan.first_id,
              scores[v * kLanes + lane]);
      }
    }
  }
}

ffi::Error FullRankingImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> users, ffi::Buffer<ffi::F32> table,
                           ffi::Buffer<ffi::F32> answer_rows, ffi::Buffer<ffi::S32> answers,
                           ffi::Buffer<ffi::S32> history, ffi::Buffer<ffi::S32> first_id_buffer,
                           int64_t num_items, int64_t top_k, int64_t threads,
                           ffi::ResultBuffer<ffi::S32> ranks,
                           ffi::ResultBuffer<ffi::S32> top_items,
                           ffi::ResultBuffer<ffi::F32> top_scores) {
  auto user_dims = users.dimensions();
  auto table_dims = table.dimensions();
  if (user_dims.size() != 2 || table_dims.size() != 2 || user_dims[1] != table_dims[1])
    return ffi::Error::InvalidArgument("full_ranking_cpu: need users [B, H] and table [N, H]");
  const int64_t batch = user_dims[0], hidden = user_dims[1], rows = table_dims[0];
  const int64_t history_width = history.dimensions().size() == 2 ? history.dimensions()[1] : 0;
  const int64_t out_k = top_items->dimensions().size() == 2 ? top_items->dimensions()[1] : 0;
  if (top_k > out_k) return ffi::Error::InvalidArgument("full_ranking_cpu: top_k > output width");
  const int32_t first_id = first_id_buffer.typed_data()[0];
  // Local rows holding ids 1..num_items.
  const int64_t lo = std::max<int64_t>(0, 1 - static_cast<int64_t>(first_id));
  const int64_t hi = std::min<int64_t>(rows, num_items - first_id + 1);
  const float* user_data = users.typed_data();
  const float* table_data = table.typed_data();
  const float* answer_data = answer_rows.typed_data();
  const int32_t* answer_ids = answers.typed_data();
  const int32_t* history_ids = history.typed_data();

  std::vector<Entry> heaps(std::max<int64_t>(1, batch * top_k));
  std::vector<UserState> state(batch);
  std::vector<int64_t> counts(batch, 0);
  const int32_t empty_key = OrderKey(-std::numeric_limits<float>::infinity());
  for (int64_t b = 0; b < batch; ++b) {
    UserState& user = state[b];
    user.answer_score = SequentialDot(user_data + b * hidden, answer_data + b * hidden, hidden);
    user.answer_nan = std::isnan(user.answer_score);
    user.heap = heaps.data() + b * top_k;
    // Unfilled places: score -inf, id 0; a candidate scoring -inf never enters
    // (metrics.full_ranking's running list starts the same way).
    for (int64_t k = 0; k < top_k; ++k) user.heap[k] = Entry{empty_key, 0};
    user.threshold = -std::numeric_limits<float>::infinity();
    user.answer_row = static_cast<int64_t>(answer_ids[b]) - first_id;
    user.next_excluded = 0;
    for (int64_t e = 0; e < history_width; ++e) {
      int64_t id = history_ids[b * history_width + e];
      int64_t row = id - first_id;
      if (id > 0 && id != answer_ids[b] && row >= lo && row < hi)
        user.excluded.push_back(static_cast<int32_t>(row));
    }
    std::sort(user.excluded.begin(), user.excluded.end());
    user.excluded.erase(std::unique(user.excluded.begin(), user.excluded.end()),
                        user.excluded.end());
  }

  // Users padded to whole tiles (zero rows, never read back).
  const int64_t padded_users = (batch + kUsers - 1) / kUsers * kUsers;
  std::vector<float> user_block(padded_users * hidden, 0.0f);
  std::copy(user_data, user_data + batch * hidden, user_block.begin());
  Scan scan{user_block.data(), batch, hidden, top_k, first_id, lo, hi, &state, &counts};

  // Parts of the users, one per thread: each packs the blocks for itself (the
  // packing is small beside a part's tiles) and owns its users' state.
  const int64_t user_tiles = padded_users / kUsers;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, user_tiles / 16));
  ParallelFor(pool, parts, parts - 1, [&](int64_t part) {
    const int64_t first = user_tiles * part / parts * kUsers;
    const int64_t last = user_tiles * (part + 1) / parts * kUsers;
    std::vector<float> panel(hidden * kBlockItems);
    for (int64_t block0 = lo; block0 < hi; block0 += kBlockItems) {
      const int64_t width = std::min<int64_t>(kBlockItems, hi - block0);
      PackBlock(table_data, hidden, block0, width, panel.data());
      const int64_t tiles = (width + kTileItems - 1) / kTileItems;
      for (int64_t user0 = first; user0 < last; user0 += kUsers)
        for (int64_t t = 0; t < tiles; ++t)
          Tile(scan, panel.data(), t * kTileItems, block0 + t * kTileItems, user0);
    }
  });

  int32_t* rank_out = ranks->typed_data();
  int32_t* item_out = top_items->typed_data();
  float* score_out = top_scores->typed_data();
  const int64_t real_rows = std::max<int64_t>(0, hi - lo);
  for (int64_t b = 0; b < batch; ++b) {
    UserState& user = state[b];
    const bool answer_here = user.answer_row >= lo && user.answer_row < hi;
    // A NaN answer loses to every other candidate (the scan counted none).
    const int64_t count =
        user.answer_nan
            ? real_rows - answer_here - static_cast<int64_t>(user.excluded.size())
            : counts[b];
    rank_out[b] = static_cast<int32_t>(count);
    std::sort(user.heap, user.heap + top_k, [](const Entry& a, const Entry& c) {
      return Worse(c, a);
    });
    for (int64_t k = 0; k < out_k; ++k) {
      const bool filled = k < top_k;
      item_out[b * out_k + k] = filled ? user.heap[k].id : 0;
      score_out[b * out_k + k] = filled ? FromOrderKey(user.heap[k].key)
                                        : -std::numeric_limits<float>::infinity();
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(S3RecFullRankingCpu, FullRankingImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // users [B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // table block [N, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // answers' rows [B, H]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // answers [B]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // history [B, E]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // id of row 0 [1]
                                  .Attr<int64_t>("num_items")
                                  .Attr<int64_t>("top_k")
                                  .Attr<int64_t>("threads")      // most threads to use
                                  .Ret<ffi::Buffer<ffi::S32>>()   // ranks [B]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // top items [B, K]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // top scores [B, K]
