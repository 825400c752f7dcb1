#include "capnsplice/channel.h"

#include <fcntl.h>
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

}  // namespace capnsplice
