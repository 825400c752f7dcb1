// Which fork() generation this process is (internal).
#pragma once

#include <atomic>
#include <cstdint>

namespace capnsplice::detail {

/// fork() children this process descends from, counted by a pthread_atfork handler the
/// library registers when it is loaded; read it through fork_generation().
extern std::atomic<std::uint64_t> forks_since_load;

/// 0 in a process that never forked from one using capnsplice, one more in each fork()
/// child. An arena's allocator lives in the shared pages and takes no lock across
/// processes: a sender made in another generation must not allocate there, or a parent
/// and its forked child corrupt it. The trimmer's list is per process in the same way.
/// Inline: the trimmer asks on every allocation.
inline std::uint64_t fork_generation() noexcept {
  return forks_since_load.load(std::memory_order_relaxed);
}

}  // namespace capnsplice::detail
