// Helpers shared by the tests: deterministic data, checksums, child processes.
#pragma once

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <kj/common.h>

namespace capnsplice::testing {

/// xorshift64*: fast, deterministic bytes for payloads.
class Random {
 public:
  explicit Random(std::uint64_t seed) : state_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  std::uint64_t next() {
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return state_ * 0x2545F4914F6CDD1Dull;
  }
  /// Uniform-ish in [0, bound).
  std::uint64_t below(std::uint64_t bound) { return bound == 0 ? 0 : next() % bound; }
  void fill(kj::ArrayPtr<kj::byte> bytes) {
    std::size_t i = 0;
    for (; i + 8 <= bytes.size(); i += 8) {
      std::uint64_t value = next();
      std::memcpy(bytes.begin() + i, &value, 8);
    }
    std::uint64_t value = next();
    // An empty array may have no address at all: memcpy to null is undefined, even of 0.
    if (i < bytes.size()) std::memcpy(bytes.begin() + i, &value, bytes.size() - i);
  }

 private:
  std::uint64_t state_;
};

/// A position-sensitive 64-bit checksum of `bytes`.
inline std::uint64_t checksum(kj::ArrayPtr<const kj::byte> bytes) {
  std::uint64_t hash = 0xcbf29ce484222325ull ^ bytes.size();
  std::size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    std::uint64_t word;
    std::memcpy(&word, bytes.begin() + i, 8);
    hash = (hash ^ word) * 0x100000001b3ull;
    hash ^= hash >> 29;
  }
  for (; i < bytes.size(); ++i) hash = (hash ^ bytes[i]) * 0x100000001b3ull;
  return hash;
}

/// Runs `body` in a forked child whose exit code is body's return value (uncaught
/// exceptions exit 99). Returns the child's pid.
inline pid_t fork_child(const std::function<int()>& body) {
  pid_t pid = ::fork();
  if (pid == 0) {
    int code = 99;
    try {
      code = body();
    } catch (...) {
    }
    ::_exit(code);
  }
  return pid;
}

/// Waits for `pid`; returns its exit code, or 128 + signal if it was killed.
inline int wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + WTERMSIG(status);
}

}  // namespace capnsplice::testing
