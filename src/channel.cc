#include "capnsplice/channel.h"

#include <fcntl.h>
#include <unistd.h>

#include "capnsplice/error.h"
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

}  // namespace

Channel Channel::from_fds(UniqueFd receive_fd, UniqueFd send_fd, ChannelOptions options,
                          bool keep_blocking) {
  if (!keep_blocking) detail::set_nonblocking(send_fd.get(), context_of(options.name, "create"));
  Sender sender(std::move(send_fd), options.sender, context_of(options.name, "send"));
  Receiver receiver(std::move(receive_fd), options.receiver, context_of(options.name, "receive"));
  return Channel(std::move(sender), std::move(receiver), options.name);
}

std::pair<Channel, Channel> Channel::pair(ChannelOptions options) {
  Pipe a_to_b = make_pipe(options);
  Pipe b_to_a = make_pipe(options);
  Channel a = from_fds(std::move(b_to_a.read_end), std::move(a_to_b.write_end), options);
  Channel b = from_fds(std::move(a_to_b.read_end), std::move(b_to_a.write_end), options);
  return {std::move(a), std::move(b)};
}

std::pair<Channel, RemoteEnd> Channel::pair_with_remote_end(ChannelOptions options) {
  Pipe to_remote = make_pipe(options);
  Pipe from_remote = make_pipe(options);
  RemoteEnd remote{std::move(to_remote.read_end), std::move(from_remote.write_end)};
  Channel local =
      from_fds(std::move(from_remote.read_end), std::move(to_remote.write_end), options);
  return {std::move(local), std::move(remote)};
}

}  // namespace capnsplice
