// How Receiver::interrupt() and a receiver's destruction wake a receive() (internal).
//
// A receive that blocks polls its pipe and an eventfd that interrupt() writes. That
// eventfd belongs to the waiting thread, not to the receiver: made on the thread's
// first blocking wait and closed when the thread exits, so a receiver costs no
// descriptor of its own (a thousand idle channels would otherwise hold a thousand
// eventfds). While a receive waits, its receiver publishes the thread's eventfd; the
// interrupt itself is a flag of the receiver, so that:
//
//   * an interrupt with no receive waiting stays pending for the next one that blocks;
//   * interrupts made meanwhile count as one (the flag, not the eventfd's counter);
//   * a wake-up left in a thread's eventfd — written just as a wait ended for another
//     reason, or for another receiver this thread waited on before — only makes the
//     next wait of that thread look at its own receiver's flag and wait again: never a
//     lost interrupt, never a false one.
//
// interrupt() writes the eventfd under the same lock with which the waiter publishes and
// withdraws it, so it never writes to a descriptor its thread has closed (or whose
// number was reused since).
#pragma once

#include <atomic>
#include <chrono>
#include <mutex>
#include <string_view>

#include "capnsplice/deadline.h"
#include "pipe_io.h"

namespace capnsplice::detail {

class ReceiveWake {
 public:
  /// spin_then_wait(fd, POLLIN, spin, deadline) that also ends, with
  /// WaitResult::interrupted, once an interrupt is pending or close() was called — at
  /// once when that was so before. The interrupt stays pending (take_interrupt()).
  /// Throws SystemError when this thread's eventfd cannot be made (`context`).
  WaitResult wait(int fd, std::chrono::nanoseconds spin, Deadline deadline,
                  std::string_view context);

  /// True once this thread has its eventfd (made on its first wait): a wait then needs
  /// no new descriptor.
  static bool this_thread_can_wait() noexcept;

  /// Makes an interrupt pending and wakes the receive waiting, if any. Any thread.
  void interrupt() noexcept;

  /// Whether a wait would end at once (an interrupt pending, or closing). Lock-free.
  bool should_stop() const noexcept { return pending_.load() || closing_.load(); }

  /// True once when an interrupt is pending: the receive reports it.
  bool take_interrupt() noexcept { return pending_.exchange(false); }

  /// The receiver is being destroyed: wakes the receive waiting, and every wait from now
  /// on ends at once. Any thread.
  void close() noexcept;
  bool closing() const noexcept { return closing_.load(); }

 private:
  /// The eventfd of the waiting thread, -1 when no receive waits.
  void publish(int wake_fd) noexcept;
  /// Writes to the published eventfd, if any.
  void wake_waiter() noexcept;

  std::mutex mutex_;  // orders publishing against the wake-up's write
  int waiter_ = -1;   // under `mutex_`
  std::atomic<bool> pending_{false};
  std::atomic<bool> closing_{false};
};

}  // namespace capnsplice::detail
