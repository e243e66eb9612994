// Checks of the arguments both generators take: the range of sample indices and the number of
// OpenMP threads. Thousands of threads make libgomp fail inside the runtime (a segfault, not an
// error), so the thread count is bounded by a small multiple of the machine's processors.
#pragma once

#include "core/error.hpp"
#include "core/view.hpp"

#include <algorithm>
#include <limits>
#include <thread>

#ifdef FLASHLSTM_OPENMP
#include <omp.h>
#endif

namespace flashlstm::datasets {

// Samples first, ..., first + count - 1: both >= 0, and every index fits index_t.
inline void check_range(index_t first, index_t count) {
  constexpr index_t largest = std::numeric_limits<index_t>::max();
  require(first >= 0, "first", "must be >= 0, got {}", first);
  require(count >= 0, "count", "must be >= 0, got {}", count);
  require(count <= largest - first, "count", "first + count must be <= {}, got first = {} and count = {}", largest,
          first, count);
}

// The most threads a generator accepts: 4 per processor, at least 16.
inline int max_threads() { return 4 * std::max(4, static_cast<int>(std::thread::hardware_concurrency())); }

// `threads` checked against [0, max_threads()]; the number to run on (0: OpenMP's default, itself
// bounded by max_threads(), so that OMP_NUM_THREADS cannot ask for thousands either).
inline int thread_count(int threads) {
  require(threads >= 0 && threads <= max_threads(), "threads",
          "must be in [0, {}] (0: the default; at most 4 per processor of this machine), got {}", max_threads(),
          threads);
#ifdef FLASHLSTM_OPENMP
  return threads > 0 ? threads : std::min(omp_get_max_threads(), max_threads());
#else
  return 1;
#endif
}

}  // namespace flashlstm::datasets
