// Descriptors with known contents, for the tests that pass them to children and peers.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>

#include "capnsplice/unique_fd.h"

namespace capnsplice::testing {

/// A close-on-exec memfd holding `text`, numbered `at_least` or above.
inline UniqueFd memfd_with(const std::string& text, int at_least = 0) {
  UniqueFd made(::memfd_create("capnsplice-test", MFD_CLOEXEC));
  REQUIRE(made);
  REQUIRE(::write(made.get(), text.data(), text.size()) == static_cast<ssize_t>(text.size()));
  if (made.get() >= at_least) return made;
  UniqueFd moved(::fcntl(made.get(), F_DUPFD_CLOEXEC, at_least));
  REQUIRE(moved);
  return moved;
}

/// What a descriptor holds from offset 0 (up to 64 bytes; "" when it cannot be read).
inline std::string first_bytes(int fd) {
  char buffer[64];
  const ssize_t got = ::pread(fd, buffer, sizeof buffer, 0);
  return got > 0 ? std::string(buffer, static_cast<std::size_t>(got)) : std::string();
}

}  // namespace capnsplice::testing
