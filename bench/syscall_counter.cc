#include "syscall_counter.h"

#include <linux/perf_event.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fstream>

namespace bench {

namespace {

/// The tracepoint's id, from tracefs (either of its usual mount points); 0 if missing.
std::uint64_t sys_enter_tracepoint_id() {
  for (const char* path : {"/sys/kernel/tracing/events/raw_syscalls/sys_enter/id",
                           "/sys/kernel/debug/tracing/events/raw_syscalls/sys_enter/id"}) {
    std::ifstream file(path);
    std::uint64_t id = 0;
    if (file >> id) return id;
  }
  return 0;
}

}  // namespace

std::optional<SyscallCounter> SyscallCounter::start() {
  static const std::uint64_t id = sys_enter_tracepoint_id();
  if (id == 0) return std::nullopt;
  perf_event_attr attr{};
  attr.size = sizeof attr;
  attr.type = PERF_TYPE_TRACEPOINT;
  attr.config = id;
  attr.inherit = 1;  // threads started from now on count too
  attr.exclude_hv = 1;
  const long fd = ::syscall(SYS_perf_event_open, &attr, /*pid=*/0, /*cpu=*/-1, /*group=*/-1,
                            PERF_FLAG_FD_CLOEXEC);
  if (fd < 0) return std::nullopt;
  return SyscallCounter(capnsplice::UniqueFd(static_cast<int>(fd)));
}

std::optional<std::uint64_t> SyscallCounter::count() const {
  std::uint64_t value = 0;
  if (::read(event_.get(), &value, sizeof value) != static_cast<ssize_t>(sizeof value)) {
    return std::nullopt;
  }
  return value;
}

}  // namespace bench
