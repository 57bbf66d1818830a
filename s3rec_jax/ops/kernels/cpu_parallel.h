// Splitting a kernel's work over XLA's intra-op thread pool.

#ifndef S3REC_JAX_KERNELS_CPU_PARALLEL_H_
#define S3REC_JAX_KERNELS_CPU_PARALLEL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace s3rec_tiles {

// Runs body(part) once for every part in [0, parts): on the calling thread
// and on up to `helpers` tasks of the pool. Parts are claimed from a shared
// counter, so the caller never waits for a task that has not started (it does
// the unclaimed parts itself): no deadlock when every pool thread is busy,
// e.g. running other devices' programs. A task that starts after the work is
// over finds nothing to claim and touches only the shared counters, which it
// keeps alive.
template <typename Body>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t parts, int64_t helpers, const Body& body) {
  struct Shared {
    std::atomic<int64_t> next{0}, done{0};
    int64_t parts = 0;
    const Body* body = nullptr;
    std::mutex mu;
    std::condition_variable finished;
  };
  auto shared = std::make_shared<Shared>();
  shared->parts = parts;
  shared->body = &body;
  auto work = [shared]() {
    for (int64_t part; (part = shared->next.fetch_add(1)) < shared->parts;) {
      (*shared->body)(part);
      if (shared->done.fetch_add(1) + 1 == shared->parts) {
        std::lock_guard<std::mutex> lock(shared->mu);
        shared->finished.notify_all();
      }
    }
  };
  for (int64_t h = 0; h < std::min(helpers, parts - 1); ++h) {
    auto task = work;  // the pool takes its own copy
    pool.Schedule(std::move(task));
  }
  work();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->finished.wait(lock, [&] { return shared->done.load() == shared->parts; });
}

}  // namespace s3rec_tiles

#endif  // S3REC_JAX_KERNELS_CPU_PARALLEL_H_
