// Keeping a write into a reader-less pipe from killing the process (internal).
//
// A pipe has no MSG_NOSIGNAL: write(), writev() and vmsplice() into a pipe whose reader
// has gone raise SIGPIPE in the writing thread, whose default action ends the process.
// The library never changes the process's signal dispositions, so it does one of these
// around each batch of writes, by SenderOptions::sigpipe (measured on the project VM,
// where a system call costs ~0.5-1 µs):
//
//   process ignores SIGPIPE   SigpipeSafety::automatic            process_ignores
//   yes                       1 call: sigaction() query           0 calls
//   no                        2 calls: block, restore the mask    (refused when made)
//                             (the query is skipped for a second
//                             after it found SIGPIPE not ignored)
//
// Either way the write fails with EPIPE, which the caller turns into PeerClosed.
#pragma once

#include <csignal>
#include <string_view>

#include "capnsplice/options.h"

namespace capnsplice::detail {

/// Lives around a batch of writes into a pipe: when SIGPIPE is not ignored, blocks it
/// in the calling thread, swallows the one a write to a reader-less pipe raised, and
/// restores the thread's mask.
class SigpipeGuard {
 public:
  explicit SigpipeGuard(SigpipeSafety safety) noexcept;
  ~SigpipeGuard();
  SigpipeGuard(const SigpipeGuard&) = delete;
  SigpipeGuard& operator=(const SigpipeGuard&) = delete;

  /// Records that a write failed with EPIPE, so a SIGPIPE may be pending to swallow.
  void saw_broken_pipe() noexcept { broken_pipe_ = true; }

  /// Whether this guard blocked SIGPIPE (two system calls), for SenderStats.
  bool masked() const noexcept { return masked_; }

 private:
  sigset_t previous_mask_;
  bool masked_ = false;       // SIGPIPE was not ignored: the mask was changed
  bool was_blocked_ = false;  // the thread had SIGPIPE blocked itself
  bool broken_pipe_ = false;
};

/// Whether the process ignores SIGPIPE now: asked of the kernel, except within a second
/// of finding that it does not (then false without asking: the guard masks).
bool sigpipe_ignored() noexcept;

/// Forgets a "not ignored" finding, as a fresh process would not have it (tests that
/// change SIGPIPE's disposition between cases of one process).
void forget_sigpipe_finding() noexcept;

/// For SigpipeSafety::process_ignores: throws InvalidArgument, naming `context`, unless
/// the process ignores SIGPIPE.
void require_sigpipe_ignored(std::string_view context);

}  // namespace capnsplice::detail
