#include "transports/fd_link.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>

namespace bench {

namespace {

[[noreturn]] void throw_errno(const std::string& call) {
  throw std::runtime_error(call + ": " + std::strerror(errno));
}

UniqueFd duplicate(const UniqueFd& fd) {
  UniqueFd copy(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
  if (!copy) throw_errno("dup");
  return copy;
}

}  // namespace

std::unique_ptr<Endpoint> FdLink::open(Side side) {
  SideFds mine = std::move(side == Side::a ? a_ : b_);
  (side == Side::a ? b_ : a_) = {};  // the peer's descriptors: gone from this process
  return make_endpoint_(std::move(mine));
}

std::size_t default_pipe_capacity() {
  std::size_t max_size = 1024 * 1024;
  std::ifstream("/proc/sys/fs/pipe-max-size") >> max_size;
  return std::min<std::size_t>(max_size, 1024 * 1024);
}

std::unique_ptr<Link> make_pipe_link(std::size_t capacity, FdLink::EndpointFactory make_endpoint) {
  int a_to_b[2], b_to_a[2];
  if (::pipe2(a_to_b, O_CLOEXEC) != 0) throw_errno("pipe2");
  if (::pipe2(b_to_a, O_CLOEXEC) != 0) throw_errno("pipe2");
  for (int fd : {a_to_b[1], b_to_a[1]}) ::fcntl(fd, F_SETPIPE_SZ, static_cast<int>(capacity));
  return std::make_unique<FdLink>(SideFds{UniqueFd(b_to_a[0]), UniqueFd(a_to_b[1])},
                                  SideFds{UniqueFd(a_to_b[0]), UniqueFd(b_to_a[1])},
                                  std::move(make_endpoint));
}

std::unique_ptr<Link> make_socketpair_link(FdLink::EndpointFactory make_endpoint) {
  int sockets[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sockets) != 0) {
    throw_errno("socketpair");
  }
  UniqueFd a(sockets[0]), b(sockets[1]);
  SideFds side_a{duplicate(a), std::move(a)};
  SideFds side_b{duplicate(b), std::move(b)};
  return std::make_unique<FdLink>(std::move(side_a), std::move(side_b), std::move(make_endpoint));
}

void wait_readable(int fd, WaitMode mode) {
  if (mode == WaitMode::block) return;
  pollfd probe{fd, POLLIN, 0};
  while (::poll(&probe, 1, 0) == 0 ||
         (probe.revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL)) == 0) {
  }
}

void write_all(int fd, std::span<const std::byte> bytes) {
  while (!bytes.empty()) {
    const ssize_t written = ::write(fd, bytes.data(), bytes.size());
    if (written < 0 && errno == EINTR) continue;
    if (written < 0) throw_errno("write");
    bytes = bytes.subspan(static_cast<std::size_t>(written));
  }
}

void read_exact(int fd, std::span<std::byte> bytes) {
  while (!bytes.empty()) {
    const ssize_t got = ::read(fd, bytes.data(), bytes.size());
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw_errno("read");
    if (got == 0) throw std::runtime_error("read: peer closed the stream");
    bytes = bytes.subspan(static_cast<std::size_t>(got));
  }
}

}  // namespace bench
