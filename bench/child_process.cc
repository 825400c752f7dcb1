#include "child_process.h"

#include <poll.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace bench {

ChildProcess ChildProcess::spawn(const std::function<int()>& body) {
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    // A benchmark child outliving an interrupted parent would keep a core busy.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(2);
    // Never let an exception unwind into the parent's code (and destructors) in here.
    try {
      ::_exit(body());
    } catch (...) {
      ::_exit(1);
    }
  }
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    throw std::runtime_error(std::string("pidfd_open: ") + std::strerror(errno));
  }
  return ChildProcess(pid, pidfd);
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(other.pid_),
      pidfd_(other.pidfd_),
      exit_status_(other.exit_status_),
      killed_by_us_(other.killed_by_us_) {
  other.pid_ = -1;
  other.pidfd_ = -1;
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0 && running()) kill_and_reap();
  if (pidfd_ >= 0) ::close(pidfd_);
}

bool ChildProcess::reap_if_exited() {
  if (!running()) return true;
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) != pid_) return false;
  exit_status_ = status;
  return true;
}

void ChildProcess::kill_and_reap() {
  if (!running()) return;
  ::kill(pid_, SIGKILL);
  killed_by_us_ = true;
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  exit_status_ = status;
}

bool ChildProcess::succeeded() const noexcept {
  return exit_status_ && WIFEXITED(*exit_status_) && WEXITSTATUS(*exit_status_) == 0;
}

std::string ChildProcess::describe_exit() const {
  if (!exit_status_) return "still running";
  if (killed_by_us_) return "stopped by capnsplice-bench";
  if (WIFEXITED(*exit_status_)) {
    return "exited with status " + std::to_string(WEXITSTATUS(*exit_status_));
  }
  if (WIFSIGNALED(*exit_status_)) {
    const int signal = WTERMSIG(*exit_status_);
    return "killed by signal " + std::to_string(signal) + " (" + strsignal(signal) + ")";
  }
  return "ended with wait status " + std::to_string(*exit_status_);
}

ChildEvent wait_for_event(std::span<ChildProcess> children, int fd, Clock::time_point deadline) {
  for (;;) {
    std::vector<pollfd> watched;
    for (const ChildProcess& child : children) {
      if (child.running()) watched.push_back({child.pidfd(), POLLIN, 0});
    }
    if (fd >= 0) watched.push_back({fd, POLLIN, 0});
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return ChildEvent::timed_out;
    const int ready = ::poll(watched.data(), watched.size(), static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) throw std::runtime_error(std::string("poll: ") + std::strerror(errno));
    if (ready == 0) return ChildEvent::timed_out;
    bool exited = false;
    for (ChildProcess& child : children)
      exited = (child.running() && child.reap_if_exited()) || exited;
    if (exited) return ChildEvent::child_exited;
    if (fd >= 0 && (watched.back().revents & (POLLIN | POLLHUP)) != 0) {
      return ChildEvent::fd_readable;
    }
  }
}

}  // namespace bench
