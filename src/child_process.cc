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
  // The pidfd only serves timed waits; without it they poll instead.
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
  ::kill(pid_, SIGKILL);
  try {
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
      status_ = ExitStatus::from_wait_status(status);
      pidfd_.reset();
      return true;
    }
    if (got == 0) return false;
    if (errno != EINTR) throw_system_error(context("wait"), "waitpid");
  }
}

ExitStatus ChildProcess::wait() {
  if (pid_ <= 0) throw Error(ErrorCode::SystemError, context("wait"), "no child", ECHILD);
  if (!status_) reap(/*block=*/true);
  return *status_;
}

std::optional<ExitStatus> ChildProcess::wait(Deadline deadline) {
  if (pid_ <= 0) throw Error(ErrorCode::SystemError, context("wait"), "no child", ECHILD);
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

void ChildProcess::kill(int signal) {
  if (!running()) return;
  if (::kill(pid_, signal) != 0) throw_system_error(context("kill"), "kill");
}

pid_t ChildProcess::release() noexcept {
  pidfd_.reset();
  status_.reset();
  name_.clear();
  return std::exchange(pid_, -1);
}

}  // namespace capnsplice
