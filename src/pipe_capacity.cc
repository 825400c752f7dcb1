#include "pipe_capacity.h"

#include <fcntl.h>

#include <algorithm>
#include <climits>
#include <cstdio>

namespace capnsplice::detail {

namespace {

/// /proc/sys/fs/pipe-max-size, read once per process (the first raise asks for it).
std::size_t pipe_max_size() noexcept {
  static const std::size_t limit = [] {
    std::size_t value = std::size_t{1024} * 1024;
    if (FILE* file = std::fopen("/proc/sys/fs/pipe-max-size", "re")) {
      unsigned long read = 0;
      if (std::fscanf(file, "%lu", &read) == 1 && read > 0) value = read;
      std::fclose(file);
    }
    return value;
  }();
  return limit;
}

/// Larger pipes fall out of the 2 MiB L2 cache and lose (README "Tuning").
constexpr std::size_t kSweetSpot = std::size_t{1024} * 1024;

}  // namespace

PipeCapacity PipeCapacity::raisable(std::size_t requested) noexcept {
  PipeCapacity capacity;
  capacity.requested_ = requested;
  // A pipe asked smaller than the default was set so at creation (shrink_new_pipe).
  capacity.pending_ = requested == 0 || requested > kDefaultPipeBytes;
  return capacity;
}

bool PipeCapacity::raise_now(int fd) noexcept {
  pending_ = false;
  const std::size_t wanted =
      requested_ != 0 ? requested_ : std::min(pipe_max_size(), kSweetSpot);
  // One F_SETPIPE_SZ. Past the user's budget an unprivileged process gets EPERM (and
  // above pipe-max-size); the pipe keeps what it has and the stats say so.
  const int granted =
      ::fcntl(fd, F_SETPIPE_SZ, static_cast<int>(std::min<std::size_t>(wanted, INT_MAX)));
  if (granted > 0) {
    bytes_ = static_cast<std::size_t>(granted);
    refused_ = bytes_ < wanted;
    return true;
  }
  refused_ = true;
  const int now = ::fcntl(fd, F_GETPIPE_SZ);
  bytes_ = now > 0 ? static_cast<std::size_t>(now) : 0;
  return false;
}

std::size_t PipeCapacity::bytes(int fd) const noexcept {
  if (bytes_ != 0 || fd < 0) return bytes_;
  const int now = ::fcntl(fd, F_GETPIPE_SZ);
  return now > 0 ? static_cast<std::size_t>(now) : 0;
}

void shrink_new_pipe(int fd, std::size_t bytes) noexcept {
  if (bytes != 0 && bytes < kDefaultPipeBytes) {
    static_cast<void>(::fcntl(fd, F_SETPIPE_SZ, static_cast<int>(bytes)));
  }
}

}  // namespace capnsplice::detail
