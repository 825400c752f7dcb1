#include "start_barrier.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace bench {

namespace {

void make_pipe(int& read_end, int& write_end) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    throw std::runtime_error(std::string("pipe2: ") + std::strerror(errno));
  }
  read_end = fds[0];
  write_end = fds[1];
}

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

}  // namespace

StartBarrier::StartBarrier() {
  make_pipe(ready_read_, ready_write_);
  make_pipe(go_read_, go_write_);
}

StartBarrier::~StartBarrier() {
  for (int* fd : {&ready_read_, &ready_write_, &go_read_, &go_write_}) close_fd(*fd);
}

void StartBarrier::enter_child() {
  close_fd(ready_read_);
  close_fd(go_write_);
  // Opened before the transport starts any thread of its own (zmq's I/O threads,
  // capnsplice's trimmer), so that those count too; the warm-up is subtracted at the go.
  system_calls_ = SyscallCounter::start();
}

void StartBarrier::arrive_and_wait() {
  const char ready = 'r';
  if (::write(ready_write_, &ready, 1) != 1) throw std::runtime_error("barrier: parent gone");
  char go = 0;
  ssize_t got;
  while ((got = ::read(go_read_, &go, 1)) < 0 && errno == EINTR) {
  }
  if (got != 1) ::_exit(3);  // the parent gave up on this measurement or died
  if (system_calls_) system_calls_at_release_ = system_calls_->count();
}

std::int64_t StartBarrier::system_calls_since_release() const {
  if (!system_calls_ || !system_calls_at_release_) return -1;
  const std::optional<std::uint64_t> now = system_calls_->count();
  if (!now) return -1;
  return static_cast<std::int64_t>(*now - *system_calls_at_release_);
}

void StartBarrier::enter_parent() {
  close_fd(ready_write_);
  close_fd(go_read_);
}

bool StartBarrier::wait_for_arrivals(std::span<ChildProcess> children, Clock::time_point deadline) {
  std::size_t arrived = 0;
  while (arrived < children.size()) {
    if (wait_for_event(children, ready_read_, deadline) != ChildEvent::fd_readable) return false;
    char bytes[8];
    const ssize_t got = ::read(ready_read_, bytes, sizeof bytes);
    if (got <= 0) return false;
    arrived += static_cast<std::size_t>(got);
  }
  return true;
}

Clock::time_point StartBarrier::release(std::size_t children) {
  const std::vector<char> go(children, 'g');
  const Clock::time_point start = Clock::now();
  if (::write(go_write_, go.data(), go.size()) != static_cast<ssize_t>(go.size())) {
    throw std::runtime_error("barrier: cannot release the children");
  }
  return start;
}

}  // namespace bench
