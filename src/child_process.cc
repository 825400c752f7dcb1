#include "capnsplice/child_process.h"

#include <poll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>
#include <utility>

#include "capnsplice/error.h"
#include "pipe_io.h"

namespace capnsplice {

bool ExitStatus::exited() const noexcept { return WIFEXITED(status_); }
int ExitStatus::exit_code() const noexcept { return exited() ? WEXITSTATUS(status_) : -1; }
bool ExitStatus::killed() const noexcept { return WIFSIGNALED(status_); }
int ExitStatus::signal() const noexcept { return killed() ? WTERMSIG(status_) : 0; }

std::string ExitStatus::describe() const {
  if (exited()) return "exited with code " + std::to_string(exit_code());
  if (killed()) {
    return "killed by signal " + std::to_string(signal()) + " (" + ::strsignal(signal()) + ")";
  }
  return "status " + std::to_string(status_);
}

ChildProcess::ChildProcess(pid_t pid, std::string name) : pid_(pid), name_(std::move(name)) {
  // The pidfd serves timed waits, exit_fd() and signals; without it (kernel < 5.3) waits
  // poll and signals go by pid.
  pidfd_.reset(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      pidfd_(std::move(other.pidfd_)),
      name_(std::move(other.name_)),
      status_(std::exchange(other.status_, std::nullopt)) {}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    ChildProcess old(std::move(*this));
    pid_ = std::exchange(other.pid_, -1);
    pidfd_ = std::move(other.pidfd_);
    name_ = std::move(other.name_);
    status_ = std::exchange(other.status_, std::nullopt);
  }
  return *this;
}

ChildProcess::~ChildProcess() {
  if (!running()) return;
  try {
    // A child that exits on end of stream (its Child's channel is closed by now) gets to
    // finish cleanly; one that does not is killed.
    if (wait(Deadline::after(kChildExitGracePeriod))) return;
    static_cast<void>(send_signal(SIGKILL));
    wait();
  } catch (const Error&) {
    // Reaped by someone else (ECHILD): nothing left to do.
  }
}

std::string ChildProcess::context(const char* operation) const {
  return "child '" + name_ + "' (pid " + std::to_string(pid_) + "): " + operation;
}

bool ChildProcess::reap(bool block) {
  int status = 0;
  for (;;) {
    const pid_t got = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
    if (got == pid_) {
      status_ = ExitStatus::from_wait_status(status);  // the pidfd stays: see exit_fd()
      return true;
    }
    if (got == 0) return false;
    if (errno != EINTR) throw_system_error(context("wait"), "waitpid");
  }
}

ExitStatus ChildProcess::wait() {
  if (pid_ <= 0) throw Error(ErrorCode::InvalidArgument, context("wait"), "this handle has no child");
  if (!status_) reap(/*block=*/true);
  return *status_;
}

std::optional<ExitStatus> ChildProcess::wait(Deadline deadline) {
  if (pid_ <= 0) throw Error(ErrorCode::InvalidArgument, context("wait"), "this handle has no child");
  while (!status_ && !reap(/*block=*/false)) {
    if (deadline.expired()) return std::nullopt;
    if (pidfd_) {
      detail::wait_for(pidfd_.get(), POLLIN, deadline);
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  return status_;
}

int ChildProcess::send_signal(int signal) const noexcept {
  if (pidfd_) {
    if (::syscall(SYS_pidfd_send_signal, pidfd_.get(), signal, nullptr, 0) == 0) return 0;
    if (errno != ENOSYS) return errno;  // ENOSYS: a seccomp filter that only knows kill()
  }
  return ::kill(pid_, signal) == 0 ? 0 : errno;
}

void ChildProcess::kill(int signal) {
  if (!running()) return;
  const int error = send_signal(signal);
  // ESRCH: it has ended and waits to be reaped, which wait() does.
  if (error != 0 && error != ESRCH) {
    throw_system_error(context("kill"), pidfd_ ? "pidfd_send_signal" : "kill", error);
  }
}

pid_t ChildProcess::release() noexcept {
  pidfd_.reset();
  status_.reset();
  name_.clear();
  return std::exchange(pid_, -1);
}

}  // namespace capnsplice
