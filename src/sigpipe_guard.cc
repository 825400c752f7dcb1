#include "sigpipe_guard.h"

#include <pthread.h>

#include <atomic>
#include <cerrno>
#include <ctime>
#include <string>

#include "capnsplice/error.h"

namespace capnsplice::detail {

namespace {

/// How long a finding that SIGPIPE is not ignored stands: a process that starts ignoring
/// it later pays the mask changes for at most this long. (The other finding is never
/// kept: a process that stops ignoring SIGPIPE must be protected at its next write.)
constexpr std::int64_t kNotIgnoredForNs = 1'000'000'000;

/// Monotonic nanoseconds at a few milliseconds' resolution: a vDSO read, no system call.
std::int64_t coarse_now_ns() noexcept {
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
  return static_cast<std::int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
}

std::atomic<std::int64_t> not_ignored_until_ns{0};

}  // namespace

bool sigpipe_ignored() noexcept {
  const std::int64_t now = coarse_now_ns();
  if (now < not_ignored_until_ns.load(std::memory_order_relaxed)) return false;
  struct sigaction current {};
  if (::sigaction(SIGPIPE, nullptr, &current) != 0) return false;  // cannot tell: mask
  if (current.sa_handler == SIG_IGN) return true;
  not_ignored_until_ns.store(now + kNotIgnoredForNs, std::memory_order_relaxed);
  return false;
}

void forget_sigpipe_finding() noexcept { not_ignored_until_ns.store(0, std::memory_order_relaxed); }

void require_sigpipe_ignored(std::string_view context) {
  struct sigaction current {};
  if (::sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_IGN) return;
  throw Error(ErrorCode::InvalidArgument, std::string(context),
              "SenderOptions::sigpipe is SigpipeSafety::process_ignores, but the process does "
              "not ignore SIGPIPE: call signal(SIGPIPE, SIG_IGN) before making the channel, "
              "or keep SigpipeSafety::automatic");
}

SigpipeGuard::SigpipeGuard(SigpipeSafety safety) noexcept {
  // An ignored SIGPIPE is discarded when raised (unless the thread blocks it: then it
  // stays pending, as the thread asked), so the write needs no mask.
  if (safety == SigpipeSafety::process_ignores || sigpipe_ignored()) return;
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &block, &previous_mask_);
  masked_ = true;
  was_blocked_ = sigismember(&previous_mask_, SIGPIPE) == 1;
}

SigpipeGuard::~SigpipeGuard() {
  if (!masked_) return;
  if (was_blocked_) return;  // The caller blocks SIGPIPE itself; leave its pending set alone.
  if (broken_pipe_) {
    // EPIPE raised a thread-directed SIGPIPE that is now pending: take it before
    // unblocking, or it would be delivered (and kill the process) on unblock.
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    const timespec no_wait{0, 0};
    while (sigtimedwait(&pipe_only, nullptr, &no_wait) < 0 && errno == EINTR) {
    }
  }
  pthread_sigmask(SIG_SETMASK, &previous_mask_, nullptr);
}

}  // namespace capnsplice::detail
