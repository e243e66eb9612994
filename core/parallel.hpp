// Exceptions out of OpenMP regions. An exception that leaves an OpenMP region terminates the
// process, so a std::bad_alloc (or any Error) thrown by one iteration of a parallel loop would abort
// a notebook's Python kernel. Every parallel loop of the library runs its bodies through one
// ParallelErrors: the first exception any thread throws is kept, the region's remaining work is
// skipped, and rethrow() throws it on the calling thread after the region, where it becomes Python's
// MemoryError / ValueError or the command-line tool's one-line error.
//
//   ParallelErrors errors;
//   #pragma omp parallel for schedule(dynamic)
//   for (index_t i = 0; i < n; ++i) errors.run([&] { work(i); });
//   errors.rethrow();
//
// parallel_for(n, body) is that loop for the common case.
#pragma once

#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace flashlstm {

class ParallelErrors {
 public:
  // Runs f unless an earlier call (on any thread) threw; keeps the first exception.
  template <class F>
  void run(F&& f) noexcept {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      f();
    } catch (...) {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      failed_.store(true, std::memory_order_relaxed);
    }
  }
  bool failed() const { return failed_.load(std::memory_order_relaxed); }
  // After the region: throws the kept exception, if any.
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::atomic<bool> failed_{false};
  std::mutex mutex_;
  std::exception_ptr error_;
};

// The number of threads a parallel loop of this thread would use.
inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// body(i) for i in [0, n) on the OpenMP threads (dynamic schedule); the first exception is rethrown
// here after the loop.
template <class Body>
void parallel_for(std::ptrdiff_t n, Body&& body) {
  ParallelErrors errors;
#pragma omp parallel for schedule(dynamic)
  for (std::ptrdiff_t i = 0; i < n; ++i) errors.run([&] { body(i); });
  errors.rethrow();
}

}  // namespace flashlstm
