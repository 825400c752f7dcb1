// capnsplice/child_process.h — an owned child process: wait for it, kill it, never leak it.
//
// A ChildProcess owns one child's pid the way UniqueFd owns a descriptor. It is what
// capnsplice::spawn() and capnsplice::fork_with_channel() hand back next to the channel:
//
//   capnsplice::Child child = capnsplice::spawn({.program = "./plugin"});
//   ...
//   child.channel.close_sending();          // the child sees PeerClosed and exits
//   capnsplice::ExitStatus status = child.process.wait();
//
// Reaping: a ChildProcess destroyed while its child still runs gives it
// kChildExitGracePeriod (100 ms) to exit on its own — a Child closes its channel first,
// so a child that exits on end of stream exits cleanly — then kills it (SIGKILL) and
// reaps it: no child outlives its handle and none is left a zombie. Call wait() (or
// wait_for()) first to let a slower child finish on its own.
//
// Signals go through the child's pidfd when the kernel has pidfd_open (>= 5.3), so a
// signal can never reach another process that was given a recycled pid.
//
// Threads: one thread at a time per handle. The process must not reap the child behind
// the handle's back (waitpid(-1, ...) or SIGCHLD set to SIG_IGN); wait() then reports
// SystemError ECHILD.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <csignal>
#include <optional>
#include <string>

#include "capnsplice/deadline.h"
#include "capnsplice/unique_fd.h"

namespace capnsplice {

/// How long ~ChildProcess waits for a running child to exit before it sends SIGKILL.
inline constexpr std::chrono::milliseconds kChildExitGracePeriod{100};

/// How a child process ended.
class ExitStatus {
 public:
  /// From a status word filled in by waitpid().
  static ExitStatus from_wait_status(int status) noexcept { return ExitStatus(status); }

  /// True when the child called exit(); exit_code() is then meaningful.
  bool exited() const noexcept;
  int exit_code() const noexcept;

  /// True when a signal ended the child (kill -9, a crash); signal() says which.
  bool killed() const noexcept;
  int signal() const noexcept;

  /// Exited with code 0.
  bool success() const noexcept { return exited() && exit_code() == 0; }

  /// "exited with code 3" or "killed by signal 9 (Killed)".
  std::string describe() const;

 private:
  explicit ExitStatus(int status) noexcept : status_(status) {}
  int status_;
};

class ChildProcess {
 public:
  /// No child.
  ChildProcess() noexcept = default;

  /// Takes ownership of the running child `pid`. `name` appears in error messages
  /// ("child 'plugin' (pid 123): wait: ...").
  ChildProcess(pid_t pid, std::string name);

  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  /// Reaps a child that already exited. One still running gets kChildExitGracePeriod to
  /// exit (a Child's channel is closed by then, so it has seen end of stream), then is
  /// killed (SIGKILL) and reaped.
  ~ChildProcess();

  /// The child's pid (-1 when empty). Valid until the child is reaped.
  pid_t pid() const noexcept { return pid_; }
  const std::string& name() const noexcept { return name_; }

  /// True while the handle owns a child that has not been reaped yet.
  bool running() const noexcept { return pid_ > 0 && !status_; }

  /// Blocks until the child ends and reaps it. Returns the stored status when it was
  /// reaped before. Throws SystemError on an empty handle.
  ExitStatus wait();

  /// Waits until the child ends or the deadline passes; empty on timeout.
  std::optional<ExitStatus> wait(Deadline deadline);
  std::optional<ExitStatus> wait_for(std::chrono::nanoseconds timeout) {
    return wait(Deadline::after(timeout));
  }

  /// Reaps the child if it has ended, without blocking.
  std::optional<ExitStatus> try_wait() { return wait(Deadline::immediate()); }

  /// Sends `signal` (SIGKILL by default) unless the child was reaped already — through
  /// the pidfd when there is one, so a recycled pid is never hit. The child stays owned:
  /// wait() to reap it. Throws SystemError naming the child when the kernel refuses.
  void kill(int signal = SIGKILL);

  /// A descriptor that becomes readable (POLLIN) when the child ends, to poll next to
  /// channels (Poller::add(int, ...)); -1 when the kernel has no pidfd_open (< 5.3).
  /// It stays open, with the same number, until the handle is destroyed or released —
  /// wait() does not close it — so poller.remove(process.exit_fd()) works after wait().
  /// Remove it from a poller before the handle goes.
  int exit_fd() const noexcept { return pidfd_.get(); }

  /// Gives up ownership: the handle forgets the child without waiting. Returns the pid.
  pid_t release() noexcept;

 private:
  std::string context(const char* operation) const;
  /// waitpid(WNOHANG or blocking); stores the status when the child was reaped.
  bool reap(bool block);
  /// Sends `signal` by pidfd (or by pid without one); errno on failure.
  int send_signal(int signal) const noexcept;

  pid_t pid_ = -1;
  UniqueFd pidfd_;
  std::string name_;
  std::optional<ExitStatus> status_;
};

}  // namespace capnsplice
