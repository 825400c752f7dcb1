#include "capnsplice/rendezvous.h"

#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <thread>
#include <utility>

#include "capnsplice/error.h"
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

/// The next connected client of the non-blocking `listening` socket.
UniqueFd next_client(int listening, Deadline deadline, const std::string& context) {
  for (;;) {
    UniqueFd client(::accept4(listening, nullptr, nullptr, SOCK_CLOEXEC));
    if (client) return client;
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) throw_system_error(context, "accept4");
    if (detail::wait_for(listening, POLLIN, deadline) == detail::WaitResult::timed_out) {
      throw Error(ErrorCode::Timeout, context, "no client connected before the deadline");
    }
  }
}

}  // namespace

RendezvousListener::RendezvousListener(std::string name, RendezvousOptions options)
    : name_(std::move(name)), options_(std::move(options)) {
  const std::string context = this->context("listen");
  const detail::UnixAddress address = detail::UnixAddress::parse(name_, context);
  socket_ = detail::make_unix_socket(/*nonblocking=*/true, context);
  detail::bind_replacing_stale(socket_.get(), address, context);
  if (!address.abstract) {
    socket_file_ = std::make_unique<detail::SocketFile>(address.path, context);
    // Before listen(): until then nobody can connect, so the mode holds from the start.
    if (::chmod(address.path.c_str(), options_.socket_mode) != 0) {
      throw_system_error(context, "chmod");
    }
  }
  if (::listen(socket_.get(), options_.backlog) != 0) throw_system_error(context, "listen");
}

RendezvousListener::RendezvousListener(RendezvousListener&&) noexcept = default;
RendezvousListener& RendezvousListener::operator=(RendezvousListener&&) noexcept = default;
RendezvousListener::~RendezvousListener() = default;

std::string RendezvousListener::context(const char* operation) const {
  return "rendezvous '" + name_ + "': " + operation;
}

Connection RendezvousListener::accept(Deadline deadline) {
  const std::string context = this->context("accept");
  for (;;) {
    UniqueFd client = next_client(socket_.get(), deadline, context);
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
    channel_options.name += ":" + std::to_string(peer.pid);
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
    PeerHello hello = exchange_hello(channel, hello_options(options_));
    return Connection{std::move(channel), peer, std::move(hello)};
  }
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
  Channel channel = Channel::from_fds(std::move(handover.fds[0]), std::move(handover.fds[1]),
                                      options.channel, /*keep_blocking=*/false, std::move(control));
  PeerHello hello = exchange_hello(channel, hello_options(options));
  return Connection{std::move(channel), host, std::move(hello)};
}

}  // namespace capnsplice
