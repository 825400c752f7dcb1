// A raw pipe for tests that write bytes by hand into a Receiver (hostile input).
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "capnsplice/unique_fd.h"

namespace capnsplice::testing {

struct RawPipe {
  UniqueFd read_end;
  UniqueFd write_end;

  RawPipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    read_end.reset(fds[0]);
    write_end.reset(fds[1]);
  }

  /// Writes 32-bit words (a segment table, or garbage) in one write.
  void write_words(const std::vector<std::uint32_t>& words) {
    const auto bytes = static_cast<ssize_t>(words.size() * sizeof(std::uint32_t));
    if (::write(write_end.get(), words.data(), static_cast<std::size_t>(bytes)) != bytes) {
      throw std::runtime_error("short write into a test pipe");
    }
  }
};

}  // namespace capnsplice::testing
