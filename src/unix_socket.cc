#include "unix_socket.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>

#include "capnsplice/error.h"
#include "pipe_io.h"

namespace capnsplice::detail {
namespace {

constexpr char kAccepted = 'A';
constexpr char kRefused = 'R';
constexpr std::size_t kMaxReason = 512;
/// A channel's two pipe ends and its control socket.
constexpr std::size_t kMaxFds = 3;

std::string_view error_text(int err) { return std::strerror(err); }

}  // namespace

UnixAddress UnixAddress::parse(std::string_view name, std::string_view context) {
  UnixAddress result;
  result.address.sun_family = AF_UNIX;
  result.abstract = !name.empty() && name.front() == '@';
  const std::size_t room = sizeof(result.address.sun_path) - 1;  // NUL or leading 0
  const std::string_view bytes = result.abstract ? name.substr(1) : name;
  if (bytes.empty()) {
    throw Error(ErrorCode::InvalidArgument, context, "an empty rendezvous name");
  }
  if (bytes.size() > room) {
    throw Error(ErrorCode::InvalidArgument, context,
                "the name is " + std::to_string(bytes.size()) + " bytes, sockets allow " +
                    std::to_string(room));
  }
  char* path = result.address.sun_path;
  std::memcpy(path + (result.abstract ? 1 : 0), bytes.data(), bytes.size());
  result.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + bytes.size() + 1);
  if (!result.abstract) result.path = std::string(bytes);
  return result;
}

SocketFile::SocketFile(std::string path, FileIdentity identity)
    : path_(std::move(path)), identity_(identity) {}

SocketFile::~SocketFile() {
  struct stat info {};
  if (::lstat(path_.c_str(), &info) == 0 && info.st_dev == identity_.device &&
      info.st_ino == identity_.inode) {
    ::unlink(path_.c_str());
  }
}

UniqueFd make_unix_socket(bool nonblocking, std::string_view context) {
  UniqueFd socket(
      ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0));
  if (!socket) throw_system_error(context, "socket");
  return socket;
}

namespace {

/// True when a socket file sits at the path and nobody accepts connections on it.
bool stale_socket_file(const UnixAddress& address, std::string_view context) {
  struct stat info {};
  if (::lstat(address.path.c_str(), &info) != 0 || !S_ISSOCK(info.st_mode)) return false;
  UniqueFd probe = make_unix_socket(/*nonblocking=*/true, context);
  return ::connect(probe.get(), address.get(), address.length) != 0 && errno == ECONNREFUSED;
}

}  // namespace

namespace {

/// A directory only this process's user can enter, beside a socket path, with the
/// socket's first name inside; both are removed when it goes.
class PrivateDirectory {
 public:
  static constexpr const char* kEntry = "s";

  PrivateDirectory(const std::string& beside, std::string_view context) {
    const std::size_t slash = beside.rfind('/');
    path_ = slash == std::string::npos ? std::string(".")
                                       : beside.substr(0, slash == 0 ? 1 : slash);
    path_ += "/.csb-XXXXXX";
    if (::mkdtemp(path_.data()) == nullptr) throw_system_error(context, "mkdtemp");
    fd_.reset(::open(path_.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd_) {
      const int err = errno;
      ::rmdir(path_.c_str());  // out of descriptors, say: leave nothing behind
      throw_system_error(context, "open (private directory)", err);
    }
    struct stat info {};
    if (::fstat(fd_.get(), &info) != 0 || info.st_uid != ::geteuid() ||
        (info.st_mode & 077) != 0) {
      const int err = EPERM;
      throw Error(ErrorCode::SystemError, context,
                  "the private directory made to bind in (" + path_ +
                      ") was replaced before it could be opened",
                  err);
    }
  }
  PrivateDirectory(const PrivateDirectory&) = delete;
  PrivateDirectory& operator=(const PrivateDirectory&) = delete;
  ~PrivateDirectory() {
    if (fd_) ::unlinkat(fd_.get(), kEntry, 0);
    ::rmdir(path_.c_str());
  }

  int fd() const noexcept { return fd_.get(); }
  /// The entry's path, for bind(): through the descriptor (/proc) when the directory's
  /// own path would be too long for a socket address. Everything after bind goes
  /// through fd(): if someone swapped the directory in between, those calls find no
  /// socket and fail.
  std::string entry_path() const {
    std::string direct = path_ + "/" + kEntry;
    if (direct.size() < sizeof(sockaddr_un{}.sun_path)) return direct;
    return "/proc/self/fd/" + std::to_string(fd_.get()) + "/" + kEntry;
  }

 private:
  std::string path_;
  UniqueFd fd_;
};

[[noreturn]] void throw_name_taken(std::string_view context, int err) {
  throw Error(ErrorCode::SystemError, context,
              "bind failed: " + std::string(error_text(err)) +
                  " (another host is listening on this name)",
              err);
}

FileIdentity bind_file(int socket, const UnixAddress& address, mode_t mode,
                       std::string_view context) {
  PrivateDirectory directory(address.path, context);
  UnixAddress inside;
  inside.address.sun_family = AF_UNIX;
  const std::string entry = directory.entry_path();
  if (entry.size() >= sizeof inside.address.sun_path) {
    throw Error(ErrorCode::InvalidArgument, context,
                "the directory of '" + address.path + "' is too long a path to bind in");
  }
  std::memcpy(inside.address.sun_path, entry.c_str(), entry.size() + 1);
  inside.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + entry.size() + 1);
  if (::bind(socket, inside.get(), inside.length) != 0) throw_system_error(context, "bind");
  // No one else can put anything in the directory: this is the socket just bound.
  if (::fchmodat(directory.fd(), PrivateDirectory::kEntry, mode, 0) != 0) {
    throw_system_error(context, "fchmodat");
  }
  struct stat info {};
  if (::fstatat(directory.fd(), PrivateDirectory::kEntry, &info, AT_SYMLINK_NOFOLLOW) != 0) {
    throw_system_error(context, "fstatat");
  }
  for (bool replaced_stale = false;; replaced_stale = true) {
    if (::linkat(directory.fd(), PrivateDirectory::kEntry, AT_FDCWD, address.path.c_str(), 0) ==
        0) {
      return {info.st_dev, info.st_ino};
    }
    const int err = errno;
    if (err != EEXIST) throw_system_error(context, "link", err);
    if (replaced_stale || !stale_socket_file(address, context)) throw_name_taken(context, EADDRINUSE);
    ::unlink(address.path.c_str());
  }
}

}  // namespace

FileIdentity bind_replacing_stale(int socket, const UnixAddress& address, mode_t mode,
                                  std::string_view context) {
  if (!address.abstract) return bind_file(socket, address, mode, context);
  if (::bind(socket, address.get(), address.length) == 0) return {};
  const int err = errno;
  if (err != EADDRINUSE) throw_system_error(context, "bind", err);
  throw_name_taken(context, err);
}

PeerCredentials peer_credentials(int socket, std::string_view context) {
  ucred credentials{};
  socklen_t length = sizeof credentials;
  if (::getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) {
    throw_system_error(context, "getsockopt(SO_PEERCRED)");
  }
  return {credentials.pid, credentials.uid, credentials.gid};
}

bool uid_allowed(uid_t uid, const std::vector<uid_t>& allowed) noexcept {
  return uid == ::geteuid() || std::find(allowed.begin(), allowed.end(), uid) != allowed.end();
}

std::string describe_allowed(const std::vector<uid_t>& allowed) {
  std::string text = allowed.empty() ? "uid " : "uids ";
  text += std::to_string(::geteuid());
  for (uid_t uid : allowed) text += ", " + std::to_string(uid);
  return text;
}

void send_handover(int socket, bool accepted, std::string_view reason, const std::vector<int>& fds,
                   std::string_view context) {
  std::string payload(1, accepted ? kAccepted : kRefused);
  payload.append(reason.substr(0, kMaxReason));
  iovec iov{payload.data(), payload.size()};
  msghdr header{};
  header.msg_iov = &iov;
  header.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
  if (!fds.empty()) {
    const std::size_t bytes = sizeof(int) * std::min(fds.size(), kMaxFds);
    header.msg_control = control;
    header.msg_controllen = CMSG_SPACE(bytes);
    cmsghdr* message = CMSG_FIRSTHDR(&header);
    message->cmsg_level = SOL_SOCKET;
    message->cmsg_type = SCM_RIGHTS;
    message->cmsg_len = CMSG_LEN(bytes);
    std::memcpy(CMSG_DATA(message), fds.data(), bytes);
  }
  while (::sendmsg(socket, &header, MSG_NOSIGNAL) < 0) {
    if (errno == EINTR) continue;
    if (errno == EPIPE || errno == ECONNRESET) {
      throw Error(ErrorCode::PeerClosed, context, "the client left before it got its channel");
    }
    throw_system_error(context, "sendmsg");
  }
}

Handover receive_handover(int socket, Deadline deadline, std::string_view context) {
  char payload[1 + kMaxReason];
  iovec iov{payload, sizeof payload};
  msghdr header{};
  header.msg_iov = &iov;
  header.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
  header.msg_control = control;
  header.msg_controllen = sizeof control;
  ssize_t got;
  for (;;) {
    if (wait_for(socket, POLLIN, deadline) == WaitResult::timed_out) {
      throw Error(ErrorCode::Timeout, context, "the host did not hand over a channel in time");
    }
    got = ::recvmsg(socket, &header, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (got >= 0) break;
    if (errno != EINTR && errno != EAGAIN) throw_system_error(context, "recvmsg");
  }

  Handover handover;
  for (cmsghdr* message = CMSG_FIRSTHDR(&header); message != nullptr;
       message = CMSG_NXTHDR(&header, message)) {
    if (message->cmsg_level != SOL_SOCKET || message->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (message->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(message) + i * sizeof(int), sizeof fd);
      handover.fds.emplace_back(fd);
    }
  }
  if (got == 0) {
    throw Error(ErrorCode::PeerClosed, context,
                "the host closed the connection without handing over a channel");
  }
  handover.accepted = payload[0] == kAccepted;
  handover.reason.assign(payload + 1, static_cast<std::size_t>(got) - 1);
  const bool well_formed =
      (header.msg_flags & MSG_CTRUNC) == 0 &&
      (payload[0] == kRefused || (handover.accepted && handover.fds.size() >= 2));
  if (!well_formed) {
    throw Error(ErrorCode::IncompatiblePeer, context,
                "the host's answer is not a capnsplice handover (" +
                    std::to_string(handover.fds.size()) + " descriptors)");
  }
  return handover;
}

}  // namespace capnsplice::detail
