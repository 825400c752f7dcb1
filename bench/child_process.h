// bench/child_process.h — forked children that can never hang the benchmark.
//
// Every measurement runs its sender and receiver in freshly forked children, so that
// each side's peak RSS belongs to that measurement alone. The parent watches them
// through pidfds: it can wait for "a child exited" and "a descriptor became readable"
// in one poll(), with a deadline, and kill whatever is left when something goes wrong.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <span>
#include <string>

namespace bench {

using Clock = std::chrono::steady_clock;

class ChildProcess {
 public:
  /// Forks. The child runs `body` and _exit()s with its result; it is killed if the
  /// parent dies. Flushes stdio first so no buffered output is inherited twice.
  static ChildProcess spawn(const std::function<int()>& body);

  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&&) = delete;
  ChildProcess(const ChildProcess&) = delete;
  /// Kills and reaps the child if it is still running.
  ~ChildProcess();

  /// Descriptor that polls readable once the child exited.
  int pidfd() const noexcept { return pidfd_; }
  bool running() const noexcept { return !exit_status_; }

  /// Reaps the child if it exited; returns true if it has (now or before).
  bool reap_if_exited();
  /// SIGKILL, then reap; describe_exit() then says the benchmark stopped it.
  void kill_and_reap();

  /// True once reaped with exit status 0.
  bool succeeded() const noexcept;
  /// "exited with status 1", "killed by signal 9 (Killed)", "still running".
  std::string describe_exit() const;

 private:
  ChildProcess(pid_t pid, int pidfd) noexcept : pid_(pid), pidfd_(pidfd) {}

  pid_t pid_ = -1;
  int pidfd_ = -1;
  std::optional<int> exit_status_;  // wait status once reaped
  bool killed_by_us_ = false;
};

/// What ended a wait_for_event().
enum class ChildEvent { fd_readable, child_exited, timed_out };

/// Waits until `fd` (if >= 0) is readable, any running child exits, or `deadline`.
ChildEvent wait_for_event(std::span<ChildProcess> children, int fd, Clock::time_point deadline);

}  // namespace bench
