// Unix-domain socket plumbing of the rendezvous (internal): addresses, the socket file,
// peer credentials and the one handover message that carries a channel's descriptors.
#pragma once

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <string>
#include <string_view>
#include <vector>

#include "capnsplice/deadline.h"
#include "capnsplice/rendezvous.h"
#include "capnsplice/unique_fd.h"

namespace capnsplice::detail {

/// A rendezvous name as a socket address: "@name" is Linux's abstract namespace (no
/// file, no permissions), anything else a filesystem path.
struct UnixAddress {
  sockaddr_un address{};
  socklen_t length = 0;
  bool abstract = false;
  std::string path;  ///< the filesystem path (empty when abstract)

  /// Throws InvalidArgument for an empty name or one too long for a socket address.
  static UnixAddress parse(std::string_view name, std::string_view context);
  const sockaddr* get() const noexcept { return reinterpret_cast<const sockaddr*>(&address); }
};

/// Which file a socket file is (st_dev, st_ino).
struct FileIdentity {
  dev_t device = 0;
  ino_t inode = 0;
};

/// A socket file this process bound; unlinked when destroyed, unless another socket
/// has replaced it at the same path since.
class SocketFile {
 public:
  /// The socket file at `path`, which is `identity`.
  SocketFile(std::string path, FileIdentity identity);
  SocketFile(const SocketFile&) = delete;
  SocketFile& operator=(const SocketFile&) = delete;
  ~SocketFile();

 private:
  std::string path_;
  FileIdentity identity_;
};

/// A stream socket, close-on-exec.
UniqueFd make_unix_socket(bool nonblocking, std::string_view context);

/// Binds `socket` to `address`, replacing a stale socket file (one nobody listens on)
/// at the same path. A path's socket file gets `mode` with no window in which someone
/// who can write its directory could redirect the mode change (swap the file for a
/// symlink between bind() and chmod()): the socket is bound and its mode set inside a
/// private directory (0700) beside the path, reached through its descriptor, then
/// linked into place, and link() never replaces a file. Returns the socket file's
/// identity (nothing for an abstract name). Throws SystemError (EADDRINUSE when a live
/// host holds the name, or something else that is no stale socket sits there).
FileIdentity bind_replacing_stale(int socket, const UnixAddress& address, mode_t mode,
                                  std::string_view context);

/// Who is at the other end of a connected socket (SO_PEERCRED).
PeerCredentials peer_credentials(int socket, std::string_view context);

/// True for this process's effective uid and for the uids in `allowed`.
bool uid_allowed(uid_t uid, const std::vector<uid_t>& allowed) noexcept;

/// "uid 1000" or "uids 1000, 1001" — the users `uid_allowed` accepts, for messages.
std::string describe_allowed(const std::vector<uid_t>& allowed);

/// The host's answer to a client: accepted with a channel's descriptors, or refused.
struct Handover {
  bool accepted = false;
  std::string reason;         ///< why the host refused
  std::vector<UniqueFd> fds;  ///< what came with an acceptance
};

/// Sends an acceptance with `fds` (SCM_RIGHTS) or a refusal with `reason`, without
/// SIGPIPE. Throws PeerClosed when the client is gone, SystemError otherwise.
void send_handover(int socket, bool accepted, std::string_view reason, const std::vector<int>& fds,
                   std::string_view context);

/// Receives the host's handover (descriptors arrive close-on-exec). Throws Timeout,
/// PeerClosed when the host closed without answering, IncompatiblePeer for a malformed
/// answer.
Handover receive_handover(int socket, Deadline deadline, std::string_view context);

}  // namespace capnsplice::detail
