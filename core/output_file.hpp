// Output files that never look complete when they are not, shared by every writer of the datasets
// and of the command-line tool. An OutputFile writes to a temporary name in its target's folder
// ("<name>.partial-<pid>") and checks the stream after every write; close() flushes and closes it,
// both checked, and commit() renames it to its name. A file never committed is removed when the
// OutputFile goes away. So a full disk, a folder that cannot be written or an interrupted run leaves
// the old file or none, never a truncated one under the final name, and every failure is an Error
// naming the file and the system's reason. A target that exists and is not a regular file (a pipe,
// /dev/stdout, /dev/full) is written in place, with the same checks.
#pragma once

#include "core/error.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace flashlstm {

class OutputFile {
 public:
  // `argument` is the name the caller's errors use for the path ("out", "file", "json", ...).
  OutputFile(std::filesystem::path path, std::string_view argument) : path_(std::move(path)), argument_(argument) {
    std::error_code error;
    const auto status = std::filesystem::status(path_, error);
    require(!std::filesystem::is_directory(status), argument_, "cannot write '{}': it is a folder", path_.string());
    const bool in_place = std::filesystem::exists(status) && !std::filesystem::is_regular_file(status);
    temporary_ = in_place ? path_ : std::filesystem::path(path_).concat(fmt::format(".partial-{}", ::getpid()));
    errno = 0;
    file_.open(temporary_, std::ios::binary | std::ios::trunc);
    check("cannot open");
  }
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  ~OutputFile() {
    if (committed_ || temporary_ == path_) return;
    file_.close();
    std::error_code ignored;
    std::filesystem::remove(temporary_, ignored);
  }

  // Appends `bytes`; throws Error when the stream has failed.
  void write(std::string_view bytes) {
    errno = 0;
    file_.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    check("cannot write");
  }

  // Flushes and closes the file, checking both. Files that belong together are all closed before
  // any is committed, so that a failure leaves none of them renamed.
  void close() {
    errno = 0;
    file_.flush();
    check("cannot write");
    file_.close();
    check("cannot close");
  }

  // Closes the file if still open and gives it its name.
  void commit() {
    if (file_.is_open()) close();
    std::error_code error;
    if (temporary_ != path_) std::filesystem::rename(temporary_, path_, error);
    require(!error, argument_, "cannot rename '{}' to '{}': {}", temporary_.string(), path_.string(), error.message());
    committed_ = true;
  }

 private:
  void check(std::string_view action) {
    require(!file_.fail(), argument_, "{} '{}': {}", action, path_.string(),
            errno != 0 ? std::strerror(errno) : "the stream failed");
  }

  std::filesystem::path path_, temporary_;
  std::string argument_;
  std::ofstream file_;
  bool committed_ = false;
};

// Writes `content` to `path` through an OutputFile.
inline void write_file(const std::filesystem::path& path, std::string_view content, std::string_view argument) {
  OutputFile file(path, argument);
  file.write(content);
  file.commit();
}

// Removes `path` if it is there (a stale file that would make a folder look complete).
inline void remove_file(const std::filesystem::path& path, std::string_view argument) {
  std::error_code error;
  std::filesystem::remove(path, error);
  require(!error, argument, "cannot remove '{}': {}", path.string(), error.message());
}

}  // namespace flashlstm
