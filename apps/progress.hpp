// A one-line progress bar on stderr for the long-running subcommands (`flashlstm data ...`):
// redrawn in place at most every 100 ms, finished with a newline. Thread-safe to advance.
#pragma once

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>

namespace flashlstm::apps {

class ProgressBar {
 public:
  ProgressBar(std::string label, long long total) : label_(std::move(label)), total_(total) { draw(true); }
  ~ProgressBar() { finish(); }

  void advance(long long n = 1) {
    done_ += n;
    draw(false);
  }

  void finish() {
    if (finished_.exchange(true)) return;
    draw(true);
    std::fputc('\n', stderr);
  }

  double seconds() const { return std::chrono::duration<double>(clock::now() - start_).count(); }

 private:
  using clock = std::chrono::steady_clock;

  void draw(bool force) {
    std::unique_lock lock(mutex_, std::try_to_lock);
    if (!lock.owns_lock()) return;
    const auto now = clock::now();
    if (!force && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const long long done = std::min<long long>(done_, total_);
    const double fraction = total_ > 0 ? double(done) / double(total_) : 1.0;
    const int width = 30, filled = static_cast<int>(fraction * width);
    fmt::print(stderr, "\r{} [{}{}] {}/{} {:.1f}s", label_, std::string(filled, '#'), std::string(width - filled, '.'),
               done, total_, seconds());
    std::fflush(stderr);
  }

  std::string label_;
  long long total_;
  std::atomic<long long> done_{0};
  std::atomic<bool> finished_{false};
  std::mutex mutex_;
  clock::time_point start_ = clock::now(), last_{};
};

}  // namespace flashlstm::apps
