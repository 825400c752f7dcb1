#include "receive_wake.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>

#include "capnsplice/error.h"
#include "capnsplice/unique_fd.h"

namespace capnsplice::detail {

namespace {

/// This thread's eventfd, made on its first blocking wait and closed when it exits. Only
/// a receiver that published it writes to it, and only while published: by the time the
/// thread exits, no receiver holds it.
thread_local UniqueFd thread_wake_fd;

int wake_fd_of_this_thread(std::string_view context) {
  if (!thread_wake_fd) {
    thread_wake_fd.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!thread_wake_fd) throw_system_error(context, "eventfd");
  }
  return thread_wake_fd.get();
}

/// Empties this thread's eventfd: what was written is now either in a receiver's flag
/// or a stale wake-up.
void drain(int wake_fd) noexcept {
  std::uint64_t count;
  static_cast<void>(::read(wake_fd, &count, sizeof count));
}

}  // namespace

WaitResult ReceiveWake::wait(int fd, std::chrono::nanoseconds spin, Deadline deadline,
                             std::string_view context) {
  if (should_stop()) return WaitResult::interrupted;
  const int wake_fd = wake_fd_of_this_thread(context);
  publish(wake_fd);
  // Withdrawn on every way out (a failed poll throws): after that, no write comes.
  struct Withdraw {
    ReceiveWake& wake;
    ~Withdraw() { wake.publish(-1); }
  } const withdraw{*this};
  // Looked at after publishing: an interrupt() that came before found no waiter to write
  // to, but its flag is set by now (the lock orders the two).
  for (;;) {
    if (should_stop()) return WaitResult::interrupted;
    const WaitResult result = spin_then_wait(fd, POLLIN, spin, deadline, wake_fd);
    if (result != WaitResult::interrupted) return result;
    drain(wake_fd);
    // Not for this receiver (a stale wake-up): wait again, with the same deadline.
  }
}

bool ReceiveWake::this_thread_can_wait() noexcept { return static_cast<bool>(thread_wake_fd); }

void ReceiveWake::interrupt() noexcept {
  pending_.store(true);
  wake_waiter();
}

void ReceiveWake::close() noexcept {
  closing_.store(true);
  wake_waiter();
}

void ReceiveWake::publish(int wake_fd) noexcept {
  std::lock_guard lock(mutex_);
  waiter_ = wake_fd;
}

void ReceiveWake::wake_waiter() noexcept {
  std::lock_guard lock(mutex_);
  if (waiter_ < 0) return;
  const std::uint64_t one = 1;
  static_cast<void>(::write(waiter_, &one, sizeof one));
}

}  // namespace capnsplice::detail
