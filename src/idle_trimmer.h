// Giving memory back from channel ends that went quiet (internal).
//
// A plugin host keeps hundreds of channels, most of them idle most of the time. Each end
// that carried traffic holds memory the traffic faulted in: its send pools, a shared-
// memory arena, its receive ring. Nothing is called on an idle end, so it cannot give that
// memory back itself. One thread per process does it for all of them:
//
//   end becomes busy ──schedule()──> registry ──every kTrimCheckInterval──> trim_if_idle()
//                                      ^                                       │
//                                      └──── stays while it returns true ──────┘
//
// An item is looked at only while it holds memory worth giving back (from its first
// allocation after a trim until it has trimmed), so a process whose channels are all
// idle and trimmed has a thread asleep on a condition variable and uses no CPU. The
// thread starts with the first schedule() of the process (and again in a fork() child
// that schedules anything); it is never joined, and what it uses is never destroyed, so
// it may outlive static destructors at exit.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "fork_generation.h"

namespace capnsplice::detail {

/// How often the trimmer looks at scheduled items.
inline constexpr std::chrono::milliseconds kTrimCheckInterval{250};

/// Something that holds memory it can give back once idle.
///
/// The trimmer calls trim_if_idle() without the registry's lock, one item at a time;
/// unschedule() waits for a call in progress, so an item is alive while it runs.
class Trimmable {
 public:
  Trimmable() = default;
  Trimmable(const Trimmable&) = delete;
  Trimmable& operator=(const Trimmable&) = delete;

  /// Puts this item on the trimmer's list unless it is there already (two relaxed atomic
  /// loads then, inline: cheap enough for every allocation).
  void schedule() noexcept {
    if (scheduled_in_.load(std::memory_order_relaxed) != fork_generation() + 1) add_to_list();
  }

  /// Called by the trimmer thread every kTrimCheckInterval while scheduled. Gives memory
  /// back if the item has been idle long enough (its own rule); returns whether it still
  /// holds memory worth another look (false takes it off the list until the next
  /// schedule()). Must not throw.
  virtual bool trim_if_idle() noexcept = 0;

 protected:
  /// Takes the item off the list; waits for a trim_if_idle() in progress to return.
  /// Derived classes call it first thing in their destructor, before their members go.
  void unschedule() noexcept;
  ~Trimmable() = default;

 private:
  friend class TrimRegistry;
  void add_to_list() noexcept;
  /// fork_generation() + 1 of the process whose list holds this item; 0: on no list.
  std::atomic<std::uint64_t> scheduled_in_{0};
};

/// Counts quiet looks: idle once `activity` has not changed for `idle_after`.
class IdleClock {
 public:
  /// Returns true once `activity` (any counter that moves with use) stayed the same
  /// for `idle_after` of the trimmer's looks.
  bool quiet_for(std::uint64_t activity, std::chrono::milliseconds idle_after) noexcept {
    if (activity != last_activity_) {
      last_activity_ = activity;
      quiet_looks_ = 0;
      return false;
    }
    ++quiet_looks_;
    return quiet_looks_ * kTrimCheckInterval >= idle_after;
  }

 private:
  std::uint64_t last_activity_ = ~std::uint64_t{0};
  std::uint64_t quiet_looks_ = 0;
};

/// How long a channel end must be idle before its memory goes back. Long enough that a
/// stream's pauses never pay for faulting its memory in again (~0.3 ms per MiB here),
/// short enough that a host's idle plugins cost it next to nothing.
inline constexpr std::chrono::milliseconds kIdleTrimAfter{1000};

}  // namespace capnsplice::detail
