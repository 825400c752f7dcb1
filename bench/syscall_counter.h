// bench/syscall_counter.h — the system calls a process makes, counted by the kernel.
//
// On this VM a system call costs about 1 µs, so the number of them per message decides
// most small-message figures. This counts them rather than estimating: a perf event on
// the raw_syscalls:sys_enter tracepoint, for the calling thread and the threads it
// starts afterwards (so it is opened before a transport starts threads of its own). It
// needs tracefs readable (usually root only) and the right to open the event
// (kernel.perf_event_paranoid ≤ 1, or CAP_PERFMON); without them the report says "–".
#pragma once

#include <cstdint>
#include <optional>

#include "capnsplice/unique_fd.h"

namespace bench {

class SyscallCounter {
 public:
  /// Starts counting now; empty where the kernel does not let this process count.
  static std::optional<SyscallCounter> start();

  /// System calls made since start(), this read included; empty if the read failed.
  std::optional<std::uint64_t> count() const;

 private:
  explicit SyscallCounter(capnsplice::UniqueFd event) : event_(std::move(event)) {}

  capnsplice::UniqueFd event_;
};

}  // namespace bench
