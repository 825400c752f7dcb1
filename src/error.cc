#include "capnsplice/error.h"

#include <cerrno>
#include <cstring>

namespace capnsplice {

std::string_view to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::PeerClosed: return "PeerClosed";
    case ErrorCode::Timeout: return "Timeout";
    case ErrorCode::MessageTooLarge: return "MessageTooLarge";
    case ErrorCode::MalformedFrame: return "MalformedFrame";
    case ErrorCode::TruncatedMessage: return "TruncatedMessage";
    case ErrorCode::SystemError: return "SystemError";
    case ErrorCode::Interrupted: return "Interrupted";
    case ErrorCode::PeerRefused: return "PeerRefused";
    case ErrorCode::IncompatiblePeer: return "IncompatiblePeer";
    case ErrorCode::StreamCut: return "StreamCut";
    case ErrorCode::ProtocolViolation: return "ProtocolViolation";
    case ErrorCode::InvalidArgument: return "InvalidArgument";
    case ErrorCode::Overloaded: return "Overloaded";
  }
  return "Unknown";
}

namespace {
std::string compose(ErrorCode code, std::string_view context, std::string_view detail) {
  std::string text;
  text.reserve(context.size() + detail.size() + 24);
  if (!context.empty()) {
    text.append(context).append(": ");
  }
  text.append(detail).append(" [").append(to_string(code)).append("]");
  return text;
}
}  // namespace

Error::Error(ErrorCode code, std::string_view context, std::string_view detail, int sys_errno)
    : std::runtime_error(compose(code, context, detail)),
      code_(code),
      sys_errno_(sys_errno),
      detail_(detail) {}

void throw_system_error(std::string_view context, std::string_view call) {
  throw_system_error(context, call, errno);
}

void throw_system_error(std::string_view context, std::string_view call, int err) {
  std::string detail(call);
  detail.append(" failed: ").append(std::strerror(err));
  // The limits a host with many channels reaches first: say which and what to do.
  if (err == EMFILE) {
    detail.append(" (this process is at its descriptor limit, RLIMIT_NOFILE: close "
                  "channels or raise the limit, e.g. ulimit -n; a channel pair holds 4 "
                  "descriptors, 6 once a large message has gone)");
  } else if (err == ENFILE) {
    detail.append(" (the system's descriptor limit, /proc/sys/fs/file-max, is reached)");
  }
  throw Error(ErrorCode::SystemError, context, detail, err);
}

}  // namespace capnsplice
