#include "capnsplice/channel.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "capnsplice/error.h"
#include "control_link.h"
#include "pipe_io.h"

namespace capnsplice {

namespace {

std::string context_of(const std::string& name, const char* operation) {
  return "channel '" + name + "': " + operation;
}

struct Pipe {
  UniqueFd read_end;
  UniqueFd write_end;
};

Pipe make_pipe(const ChannelOptions& options) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw_system_error(context_of(options.name, "create"), "pipe2");
  Pipe pipe{UniqueFd(fds[0]), UniqueFd(fds[1])};
  detail::set_pipe_capacity(pipe.write_end.get(), options.pipe_bytes);
  return pipe;
}

/// The control socket pair. Left blocking: the link uses MSG_DONTWAIT, and a peer
/// that is plain Cap'n Proto never touches its end.
std::pair<UniqueFd, UniqueFd> make_control_pair(const ChannelOptions& options) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0) {
    throw_system_error(context_of(options.name, "create"), "socketpair");
  }
  return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

}  // namespace

Channel Channel::from_fds(UniqueFd receive_fd, UniqueFd send_fd, const ChannelOptions& options,
                          bool keep_blocking, UniqueFd control_fd) {
  if (!keep_blocking) detail::set_nonblocking(send_fd.get(), context_of(options.name, "create"));
  std::shared_ptr<detail::ControlLink> link;
  if (control_fd) {
    link = std::make_shared<detail::ControlLink>(std::move(control_fd),
                                                 context_of(options.name, "control"));
  }
  Sender sender(std::move(send_fd), options.sender, context_of(options.name, "send"), link);
  Receiver receiver(std::move(receive_fd), options.receiver, context_of(options.name, "receive"),
                    link);
  return Channel(std::move(sender), std::move(receiver), options.name);
}

std::pair<Channel, Channel> Channel::pair(const ChannelOptions& options) {
  Pipe a_to_b = make_pipe(options);
  Pipe b_to_a = make_pipe(options);
  auto [a_control, b_control] = make_control_pair(options);
  Channel a = from_fds(std::move(b_to_a.read_end), std::move(a_to_b.write_end), options, false,
                       std::move(a_control));
  Channel b = from_fds(std::move(a_to_b.read_end), std::move(b_to_a.write_end), options, false,
                       std::move(b_control));
  return {std::move(a), std::move(b)};
}

std::pair<Channel, RemoteEnd> Channel::pair_with_remote_end(const ChannelOptions& options) {
  Pipe to_remote = make_pipe(options);
  Pipe from_remote = make_pipe(options);
  auto [local_control, remote_control] = make_control_pair(options);
  RemoteEnd remote{std::move(to_remote.read_end), std::move(from_remote.write_end),
                   std::move(remote_control)};
  Channel local = from_fds(std::move(from_remote.read_end), std::move(to_remote.write_end),
                           options, false, std::move(local_control));
  return {std::move(local), std::move(remote)};
}

Channel& Channel::operator=(Channel&& other) noexcept {
  if (this != &other) {
    sender_.watch_with(-1);  // before the epoll descriptor it is registered in closes
    watch_.reset();
    sender_ = std::move(other.sender_);
    receiver_ = std::move(other.receiver_);
    name_ = std::move(other.name_);
    watch_ = std::move(other.watch_);
  }
  return *this;
}

Channel::~Channel() {
  if (watch_) sender_.watch_with(-1);
}

int Channel::watch_fd() {
  if (watch_) return watch_.get();
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) throw_system_error(context_of(name_, "watch"), "epoll_create1");
  epoll_event event{};
  event.events = EPOLLIN;  // EPOLLHUP and EPOLLERR come anyway: end of stream, peer death
  event.data.fd = receiver_.fd();
  if (receiver_.fd() >= 0 &&
      ::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, receiver_.fd(), &event) != 0) {
    throw_system_error(context_of(name_, "watch"), "epoll_ctl");
  }
  // The sender adds its descriptor (EPOLLOUT) only while it holds unsent bytes: a pipe
  // with room would otherwise keep the watcher awake for nothing.
  sender_.watch_with(epoll.get());
  watch_ = std::move(epoll);
  return watch_.get();
}

}  // namespace capnsplice
