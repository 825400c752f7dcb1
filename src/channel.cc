#include "capnsplice/channel.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <string_view>

#include "capnsplice/error.h"
#include "channel_context.h"
#include "channel_maker.h"
#include "control_link.h"
#include "control_pair.h"
#include "pipe_capacity.h"
#include "pipe_io.h"

namespace capnsplice {

namespace {

std::string context_of(const std::string& name, std::string_view operation) {
  return detail::channel_context(name, operation);
}

/// A pipe capnsplice made, and what is known of its ends without asking the kernel.
struct Pipe {
  UniqueFd read_end;
  UniqueFd write_end;
  detail::DescriptorFacts read_facts;
  detail::DescriptorFacts write_facts;
};

/// Which ends of a new pipe are non-blocking. A sender's write end is, for send timeouts.
/// A read end another program may take stays blocking (a plain Cap'n Proto reader); the
/// read end of a Receiver need not be (it reads with SPLICE_F_NONBLOCK and waits in
/// poll), and a pipe whose ends are both non-blocking comes from one pipe2() call.
enum class NonBlocking { none, write_end, both_ends };

/// A pipe at the kernel's default capacity: its sender raises it when traffic needs it
/// (pipe_capacity.h).
Pipe make_pipe(const ChannelOptions& options, NonBlocking nonblocking) {
  int fds[2];
  const int flags = O_CLOEXEC | (nonblocking == NonBlocking::both_ends ? O_NONBLOCK : 0);
  if (::pipe2(fds, flags) != 0) throw_system_error(context_of(options.name, "create"), "pipe2");
  Pipe pipe{UniqueFd(fds[0]), UniqueFd(fds[1]), {}, {}};
  // pipe2 left no other status flag set: O_NONBLOCK is all there is to set, nothing to read.
  if (nonblocking == NonBlocking::write_end && ::fcntl(fds[1], F_SETFL, O_NONBLOCK) != 0) {
    throw_system_error(context_of(options.name, "create"), "fcntl(O_NONBLOCK)");
  }
  detail::shrink_new_pipe(fds[1], options.pipe_bytes);
  const int read_flag = nonblocking == NonBlocking::both_ends ? O_NONBLOCK : 0;
  const int write_flag = nonblocking != NonBlocking::none ? O_NONBLOCK : 0;
  pipe.read_facts = {O_RDONLY | read_flag, true, false, 0};
  pipe.write_facts = {O_WRONLY | write_flag, true, true, options.pipe_bytes};
  return pipe;
}

std::shared_ptr<detail::ControlLink> link_of(UniqueFd control_fd, const ChannelOptions& options) {
  if (!control_fd) return nullptr;
  return std::make_shared<detail::ControlLink>(std::move(control_fd),
                                               context_of(options.name, "control"));
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

namespace detail {

Channel ChannelMaker::make(UniqueFd receive_fd, const DescriptorFacts& receive_facts,
                           UniqueFd send_fd, const DescriptorFacts& send_facts,
                           const ChannelOptions& options, std::shared_ptr<ControlLink> link) {
  Sender sender(std::move(send_fd), options.sender, context_of(options.name, "send"), link,
                &send_facts);
  Receiver receiver(std::move(receive_fd), options.receiver, context_of(options.name, "receive"),
                    std::move(link), &receive_facts);
  return Channel(std::move(sender), std::move(receiver), options.name);
}

Channel ChannelMaker::adopt(UniqueFd receive_fd, UniqueFd send_fd, const ChannelOptions& options,
                            UniqueFd control_fd) {
  const std::string context = context_of(options.name, "create");
  const DescriptorFacts receive_facts = probe_descriptor(receive_fd.get(), context);
  DescriptorFacts send_facts = probe_descriptor(send_fd.get(), context);
  set_nonblocking(send_fd.get(), send_facts, context);
  send_facts.raisable = true;  // capnsplice made it, in the parent or the host
  send_facts.pipe_bytes = options.pipe_bytes;
  return make(std::move(receive_fd), receive_facts, std::move(send_fd), send_facts, options,
              link_of(std::move(control_fd), options));
}

}  // namespace detail

Channel Channel::from_fds(UniqueFd receive_fd, UniqueFd send_fd, const ChannelOptions& options,
                          bool keep_blocking, UniqueFd control_fd) {
  // The application's descriptors: asked what they are, their capacity left alone.
  const std::string context = context_of(options.name, "create");
  const detail::DescriptorFacts receive_facts = detail::probe_descriptor(receive_fd.get(), context);
  detail::DescriptorFacts send_facts = detail::probe_descriptor(send_fd.get(), context);
  if (!keep_blocking) detail::set_nonblocking(send_fd.get(), send_facts, context);
  return detail::ChannelMaker::make(std::move(receive_fd), receive_facts, std::move(send_fd),
                                    send_facts, options, link_of(std::move(control_fd), options));
}

std::pair<Channel, Channel> Channel::pair(const ChannelOptions& options) {
  // Both ends are Channels here: their read ends may be non-blocking as well (one pipe2
  // each, no fcntl).
  Pipe a_to_b = make_pipe(options, NonBlocking::both_ends);
  Pipe b_to_a = make_pipe(options, NonBlocking::both_ends);
  // Both ends are here: their control socket pair is made when one first needs it, and
  // a pair that never sends a large message holds only its pipes (control_pair.h).
  auto control = std::make_shared<detail::ControlPair>(options.name);
  auto link_a = std::make_shared<detail::ControlLink>(control, 0);
  auto link_b = std::make_shared<detail::ControlLink>(std::move(control), 1);
  Channel a = detail::ChannelMaker::make(std::move(b_to_a.read_end), b_to_a.read_facts,
                                         std::move(a_to_b.write_end), a_to_b.write_facts, options,
                                         std::move(link_a));
  Channel b = detail::ChannelMaker::make(std::move(a_to_b.read_end), a_to_b.read_facts,
                                         std::move(b_to_a.write_end), b_to_a.write_facts, options,
                                         std::move(link_b));
  return {std::move(a), std::move(b)};
}

std::pair<Channel, RemoteEnd> Channel::pair_with_remote_end(const ChannelOptions& options) {
  Pipe to_remote = make_pipe(options, NonBlocking::write_end);
  // The remote end stays blocking (RemoteEnd); a child that adopts it sets its own flag.
  Pipe from_remote = make_pipe(options, NonBlocking::none);
  auto [local_control, remote_control] = make_control_pair(options);
  RemoteEnd remote{std::move(to_remote.read_end), std::move(from_remote.write_end),
                   std::move(remote_control)};
  Channel local = detail::ChannelMaker::make(
      std::move(from_remote.read_end), from_remote.read_facts, std::move(to_remote.write_end),
      to_remote.write_facts, options, link_of(std::move(local_control), options));
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
