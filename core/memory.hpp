// Refusing work that cannot fit. An allocation larger than the machine's memory either fails deep
// inside a loop or, with Linux's overcommit, succeeds and then drives the machine into swap or the
// OOM killer. Entry points whose memory grows with a size the user chooses (a sequence length, a
// node id, a number of heads, a count of samples) compute the bytes first and refuse with an Error
// that names the argument and the number it would need.
#pragma once

#include "core/error.hpp"

#include <unistd.h>

#include <string_view>

namespace flashlstm {

// The machine's physical memory in bytes (sysconf), or 0 where it cannot be read.
inline double physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
}

// Throws Error("<argument>: <what> needs X GiB, more than this machine's Y GiB of memory") when
// `bytes` exceeds the physical memory.
inline void require_memory(std::string_view argument, double bytes, std::string_view what) {
  const double available = physical_memory_bytes();
  constexpr double GiB = 1024.0 * 1024.0 * 1024.0;
  require(available <= 0 || bytes <= available, argument, "{} needs {:.3g} GiB, more than this machine's {:.3g} GiB of memory",
          what, bytes / GiB, available / GiB);
}

}  // namespace flashlstm
