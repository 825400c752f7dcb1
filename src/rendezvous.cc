#include "capnsplice/rendezvous.h"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <exception>
#include <thread>
#include <utility>

#include "capnsplice/error.h"
#include "channel_maker.h"
#include "handshake_steps.h"
#include "pipe_io.h"
#include "unix_socket.h"

namespace capnsplice {

namespace {

std::string describe_peer(const PeerCredentials& peer) {
  return "pid " + std::to_string(peer.pid) + ", uid " + std::to_string(peer.uid);
}

/// The hello announces the limits the connection's channel really enforces.
HelloOptions hello_options(const RendezvousOptions& options) {
  HelloOptions hello = options.hello;
  hello.limits = options.channel.receiver.limits;
  return hello;
}

/// Adds `fd` to (or removes it from) the epoll set `events`, for POLLIN.
void watch(int events, int fd, bool add, const std::string& context) {
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.fd = fd;
  if (::epoll_ctl(events, add ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, fd, &event) != 0) {
    throw_system_error(context, "epoll_ctl");
  }
}

}  // namespace

RendezvousListener::RendezvousListener(std::string name, RendezvousOptions options)
    : name_(std::move(name)), options_(std::move(options)) {
  const std::string context = this->context("listen");
  const detail::UnixAddress address = detail::UnixAddress::parse(name_, context);
  socket_ = detail::make_unix_socket(/*nonblocking=*/true, context);
  // The mode is set before the file has its name, so it holds from the start.
  const detail::FileIdentity file =
      detail::bind_replacing_stale(socket_.get(), address, options_.socket_mode, context);
  if (!address.abstract) socket_file_ = std::make_unique<detail::SocketFile>(address.path, file);
  if (::listen(socket_.get(), options_.backlog) != 0) throw_system_error(context, "listen");
  events_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!events_) throw_system_error(context, "epoll_create1");
  timer_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!timer_) throw_system_error(context, "timerfd_create");
  watch(events_.get(), socket_.get(), /*add=*/true, context);
  watch(events_.get(), timer_.get(), /*add=*/true, context);
}

/// A client handed its channel and sent this end's hello, whose own hello has not come.
struct RendezvousListener::Handshake {
  Connection connection;  // its hello is filled in when it comes
  std::string context;    // "rendezvous 'x': accept (client pid 1, uid 2)"
  Deadline deadline;      // for the client's hello
};

RendezvousListener::RendezvousListener(RendezvousListener&&) noexcept = default;
RendezvousListener& RendezvousListener::operator=(RendezvousListener&&) noexcept = default;
RendezvousListener::~RendezvousListener() = default;

std::string RendezvousListener::context(const char* operation) const {
  return "rendezvous '" + name_ + "': " + operation;
}

Connection RendezvousListener::accept(Deadline deadline) {
  const std::string context = this->context("accept");
  // However this returns or throws, the watches follow the handshakes left.
  struct Rewatch {
    RendezvousListener& listener;
    const std::string& context;
    ~Rewatch() {
      try {
        listener.update_watches(context);
      } catch (const Error&) {  // the next accept() tries again
      }
    }
  } rewatch{*this, context};
  for (;;) {
    // Finished handshakes first: a flood of refused clients must not hide them.
    if (auto connection = finish_a_handshake()) return std::move(*connection);
    admit_waiting_clients(context);
    if (auto connection = finish_a_handshake()) return std::move(*connection);
    update_watches(context);
    if (deadline.expired()) {
      throw Error(ErrorCode::Timeout, context,
                  "no client completed its handshake before the deadline (" +
                      std::to_string(handshakes_.size()) + " waiting for their hellos)");
    }
    wait_for_news(deadline);
  }
}

void RendezvousListener::admit_waiting_clients(const std::string& context) {
  while (handshakes_.size() < static_cast<std::size_t>(std::max(options_.backlog, 1))) {
    UniqueFd client(::accept4(socket_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!client) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      throw_system_error(context, "accept4");
    }
    const PeerCredentials peer = detail::peer_credentials(client.get(), context);
    const std::string client_context = context + " (client " + describe_peer(peer) + ")";
    if (!detail::uid_allowed(peer.uid, options_.allowed_uids)) {
      const std::string reason = "uid " + std::to_string(peer.uid) + " may not connect; " +
                                 detail::describe_allowed(options_.allowed_uids) + " may";
      try {
        detail::send_handover(client.get(), /*accepted=*/false, reason, {}, client_context);
      } catch (const Error&) {
        // The client left already; it is refused either way.
      }
      throw Error(ErrorCode::PeerRefused, client_context, "refused: " + reason);
    }

    ChannelOptions channel_options = options_.channel;
    channel_options.name += ':';
    channel_options.name += std::to_string(peer.pid);
    auto [channel, remote] = Channel::pair_with_remote_end(channel_options);
    try {
      detail::send_handover(client.get(), /*accepted=*/true, {},
                            {remote.receive_fd.get(), remote.send_fd.get(), remote.control_fd.get()},
                            client_context);
    } catch (const Error& error) {
      // Gone before its turn (a probe for a stale socket file, a client that gave up).
      if (error.code() == ErrorCode::PeerClosed) continue;
      throw;
    }
    remote = RemoteEnd{};  // the client holds them now
    // A fresh pipe takes the hello at once; the client's comes whenever it comes.
    const Deadline hello_deadline = Deadline::after(options_.hello.timeout);
    detail::send_hello(channel, hello_options(options_), hello_deadline);
    watch(events_.get(), channel.receive_fd(), /*add=*/true, context);
    handshakes_.push_back(std::make_unique<Handshake>(
        Handshake{Connection{std::move(channel), peer, {}}, client_context, hello_deadline}));
  }
}

std::optional<Connection> RendezvousListener::finish_a_handshake() {
  for (auto it = handshakes_.begin(); it != handshakes_.end(); ++it) {
    Handshake& handshake = **it;
    Channel& channel = handshake.connection.channel;
    std::optional<ReceivedMessage> reply;
    std::exception_ptr failure;
    try {
      reply = channel.try_receive();
    } catch (const Error&) {
      failure = std::current_exception();
    }
    if (!reply && !failure && !channel.at_end() && !handshake.deadline.expired()) continue;
    // Done, one way or the other: it leaves the waiting set first.
    std::unique_ptr<Handshake> done = std::move(*it);
    handshakes_.erase(it);
    watch(events_.get(), done->connection.channel.receive_fd(), /*add=*/false, done->context);
    if (failure) std::rethrow_exception(failure);
    if (!reply) {
      if (done->connection.channel.at_end()) {
        throw Error(ErrorCode::PeerClosed, done->context, "the client left during the hello");
      }
      detail::throw_no_hello(done->context, options_.hello.timeout);
    }
    done->connection.hello = detail::check_hello(*reply, hello_options(options_), done->context);
    return std::move(done->connection);
  }
  return std::nullopt;
}

void RendezvousListener::update_watches(const std::string& context) {
  const bool full = handshakes_.size() >= static_cast<std::size_t>(std::max(options_.backlog, 1));
  if (full == socket_watched_) {
    watch(events_.get(), socket_.get(), /*add=*/!full, context);
    socket_watched_ = !full;
  }
  std::uint64_t expirations;
  static_cast<void>(::read(timer_.get(), &expirations, sizeof expirations));
  itimerspec next{};  // zero: disarmed
  if (!handshakes_.empty()) {
    std::chrono::nanoseconds nearest = std::chrono::nanoseconds::max();
    for (const auto& handshake : handshakes_) {
      nearest = std::min(nearest, handshake->deadline.remaining());
    }
    nearest = std::max(nearest, std::chrono::nanoseconds(1));  // zero would disarm it
    next.it_value.tv_sec = static_cast<time_t>(nearest.count() / 1'000'000'000);
    next.it_value.tv_nsec = static_cast<long>(nearest.count() % 1'000'000'000);
  }
  if (::timerfd_settime(timer_.get(), 0, &next, nullptr) != 0) {
    throw_system_error(context, "timerfd_settime");
  }
}

void RendezvousListener::wait_for_news(Deadline deadline) {
  // The timer in the set (update_watches) wakes it at the nearest handshake deadline.
  detail::wait_for(events_.get(), POLLIN, deadline);
}

Connection connect_rendezvous(std::string_view name, const RendezvousOptions& options) {
  const std::string context = "rendezvous '" + std::string(name) + "': connect";
  const detail::UnixAddress address = detail::UnixAddress::parse(name, context);
  // One deadline for getting in line and for the handover: the hello's timeout.
  const Deadline deadline = Deadline::after(options.hello.timeout);
  UniqueFd socket = detail::make_unix_socket(/*nonblocking=*/true, context);
  while (::connect(socket.get(), address.get(), address.length) != 0) {
    if (errno == EISCONN) break;  // an interrupted connect completed meanwhile
    if (errno == EAGAIN) {
      // The host's queue of clients waiting for accept() is full. A blocking connect
      // would wait for a free place for ever, and a Unix socket gives nothing to poll
      // for: try again shortly, until the deadline.
      if (deadline.expired()) {
        throw Error(ErrorCode::Timeout, context,
                    "the host's queue of waiting clients stayed full: it is not accepting");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      continue;
    }
    if (errno != EINTR) throw_system_error(context, "connect");
  }

  const PeerCredentials host = detail::peer_credentials(socket.get(), context);
  if (!detail::uid_allowed(host.uid, options.allowed_uids)) {
    throw Error(ErrorCode::PeerRefused, context,
                "the host (" + describe_peer(host) + ") is not an allowed user (" +
                    detail::describe_allowed(options.allowed_uids) + "): not talking to it");
  }
  detail::Handover handover = detail::receive_handover(socket.get(), deadline, context);
  if (!handover.accepted) {
    throw Error(ErrorCode::PeerRefused, context,
                "the host refused this connection: " + handover.reason);
  }
  if (handover.fds.size() < 2) {
    throw Error(ErrorCode::IncompatiblePeer, context,
                "the host handed over " + std::to_string(handover.fds.size()) +
                    " descriptors; a channel needs two pipe ends");
  }
  UniqueFd control = handover.fds.size() > 2 ? std::move(handover.fds[2]) : UniqueFd();
  // The host made these pipes: this end's sender may raise its pipe like the host's.
  Channel channel = detail::ChannelMaker::adopt(std::move(handover.fds[0]),
                                                std::move(handover.fds[1]), options.channel,
                                                std::move(control));
  PeerHello hello = exchange_hello(channel, hello_options(options));
  return Connection{std::move(channel), host, std::move(hello)};
}

}  // namespace capnsplice
