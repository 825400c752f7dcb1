// capnsplice/rendezvous.h — unrelated processes find each other by name.
//
// A host listens on a Unix-domain socket; each client that connects is handed a fresh
// pair of pipes (SCM_RIGHTS) and the socket is closed: data flows on the pipes, as
// between a parent and its child. Both ends then exchange a hello (handshake.h).
//
//   // Host
//   capnsplice::RendezvousListener listener("/run/user/1000/thumbnailer.sock");
//   capnsplice::Connection client = listener.accept();
//   client.channel.receive_as<Job>();
//
//   // Client, started by anyone (a supervisor, a shell)
//   capnsplice::Connection host =
//       capnsplice::connect_rendezvous("/run/user/1000/thumbnailer.sock");
//   host.channel.send_struct<Job>(...);
//
// Names: "@name" is Linux's abstract socket namespace (no file to clean up, but no file
// permissions either); anything else is a filesystem path. The host creates the socket
// file with mode 0600 and removes it when the listener is destroyed; a stale file left
// by a host that crashed is replaced.
//
// Same user only, by default, on both sides: the host checks the client's uid and the
// client checks the host's (SO_PEERCRED), so an abstract name squatted by another user
// is refused too. RendezvousOptions::allowed_uids widens this on purpose.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "capnsplice/channel.h"
#include "capnsplice/deadline.h"
#include "capnsplice/handshake.h"
#include "capnsplice/options.h"
#include "capnsplice/unique_fd.h"

namespace capnsplice {

namespace detail {
class SocketFile;
}

/// The process at the other end of a connection, as the kernel reports it.
struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

/// How a host listens and a client connects.
struct RendezvousOptions {
  /// Options of each connection's channel. A host's channels are named
  /// "<name>:<client pid>".
  ChannelOptions channel;
  /// The hello both ends exchange; its timeout also bounds the host's handover. Its
  /// limits are taken from `channel`.
  HelloOptions hello;
  /// Permissions of the socket file (paths only). Connecting needs write permission.
  mode_t socket_mode = 0600;
  /// Users accepted besides this process's own effective uid (host: clients; client:
  /// the host).
  std::vector<uid_t> allowed_uids;
  /// Clients that may wait in the kernel's queue before accept().
  int backlog = 64;
};

/// One established connection: the channel, who is at the other end and its hello.
struct Connection {
  Channel channel;
  PeerCredentials peer;
  PeerHello hello;
};

/// A host's listening socket. Move-only; destroying it closes the socket and removes
/// the socket file.
class RendezvousListener {
 public:
  /// Starts listening on `name`. Throws SystemError (EADDRINUSE when another host is
  /// listening there, or something that is no socket sits at the path; EACCES: the
  /// directory must let this process make a private directory and a link in it), or
  /// InvalidArgument for an empty name or one over 107 bytes.
  explicit RendezvousListener(std::string name, RendezvousOptions options = {});
  RendezvousListener(RendezvousListener&&) noexcept;
  RendezvousListener& operator=(RendezvousListener&&) noexcept;
  ~RendezvousListener();

  /// Returns the next client whose handshake completed: each client that connects is
  /// handed a channel and sent this end's hello at once, and many handshakes wait for
  /// their clients' hellos side by side (at most `backlog`), so a silent client holds up
  /// nobody. A failure that concerns only one client — PeerRefused (another user),
  /// IncompatiblePeer, PeerClosed (it left during the hello), Timeout of its hello — is
  /// thrown naming the client; the listener stays usable, so a serving loop catches
  /// Error and calls accept() again. A client that left before it was handed its channel
  /// is skipped. Throws Timeout when no handshake completes before `deadline`
  /// (handshakes still waiting go on in the next call).
  Connection accept(Deadline deadline = Deadline::never());

  /// Readable (POLLIN) when a client is waiting or a handshake has news: poll it next
  /// to channels, then call accept(Deadline::immediate()) (Timeout: nothing finished yet).
  int fd() const noexcept { return events_.get(); }
  const std::string& name() const noexcept { return name_; }

 private:
  struct Handshake;
  std::string context(const char* operation) const;
  /// Hands a channel and this end's hello to every client waiting in the kernel's queue
  /// now, while fewer than `backlog` handshakes wait.
  void admit_waiting_clients(const std::string& context);
  /// The connection of a handshake whose client's hello came, if any; throws the error of
  /// one that failed (dropping it).
  std::optional<Connection> finish_a_handshake();
  /// Sleeps until a client connects, a hello comes, or `deadline` or a handshake's
  /// deadline passes (update_watches() must have armed the timer).
  void wait_for_news(Deadline deadline);
  /// Watches the socket only while a handshake slot is free (a full set would otherwise
  /// report the waiting clients for ever), and arms the timer for the nearest handshake
  /// deadline, so that fd() also wakes when one expires.
  void update_watches(const std::string& context);

  std::string name_;
  RendezvousOptions options_;
  std::unique_ptr<detail::SocketFile> socket_file_;  // removed on destruction
  UniqueFd socket_;
  UniqueFd events_;  // epoll: the socket, the timer and every waiting handshake's receive end
  UniqueFd timer_;   // timerfd: the nearest handshake deadline
  bool socket_watched_ = true;
  std::vector<std::unique_ptr<Handshake>> handshakes_;
};

/// Connects to the host listening on `name`, receives a channel and exchanges hellos.
/// Throws SystemError (ENOENT / ECONNREFUSED: no host; EACCES: the socket file's mode
/// forbids it), PeerRefused (the host refused this user, or the host runs as a user not
/// allowed), IncompatiblePeer, Timeout (the host handed over nothing, or its queue of
/// waiting clients stayed full, within the hello's timeout).
Connection connect_rendezvous(std::string_view name, const RendezvousOptions& options = {});

}  // namespace capnsplice
