// bench/start_barrier.h — the parent starts the clock for both children at once.
//
// Each child warms up, then arrives (one byte into the "ready" pipe) and blocks on the
// "go" pipe. The parent waits for every arrival, notes the start time and writes one
// "go" byte per child. A go pipe that reports end of stream means the parent is gone:
// the child exits instead of running.
#pragma once

#include <cstdint>
#include <optional>
#include <span>

#include "child_process.h"
#include "syscall_counter.h"

namespace bench {

class StartBarrier {
 public:
  StartBarrier();
  StartBarrier(const StartBarrier&) = delete;
  StartBarrier& operator=(const StartBarrier&) = delete;
  ~StartBarrier();

  // --- In a child ---
  /// Closes the parent's ends in this process; call first thing in the child.
  void enter_child();
  /// Reports "warmed up" and blocks until the parent releases everyone.
  void arrive_and_wait();
  /// System calls this child made since the parent released it, by the thread that
  /// entered the child and every thread started after that; -1 where the kernel does
  /// not let it count (syscall_counter.h).
  std::int64_t system_calls_since_release() const;

  // --- In the parent ---
  /// Closes the children's ends in the parent; call once every child is forked.
  void enter_parent();
  /// Waits until every child has arrived. Returns false if a child exited first or the
  /// deadline passed (wait_for_event says which through the children's state).
  bool wait_for_arrivals(std::span<ChildProcess> children, Clock::time_point deadline);
  /// Lets every child go; returns the start time.
  Clock::time_point release(std::size_t children);

 private:
  int ready_read_ = -1, ready_write_ = -1;
  int go_read_ = -1, go_write_ = -1;
  std::optional<SyscallCounter> system_calls_;  // in a child, from enter_child() on
  std::optional<std::uint64_t> system_calls_at_release_;
};

}  // namespace bench
