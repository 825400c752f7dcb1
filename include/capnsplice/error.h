// capnsplice/error.h — the one error type every capnsplice call throws.
//
// capnsplice reports failures as exceptions of type capnsplice::Error (a
// std::runtime_error), the same way everywhere: send, receive, channel setup.
// Each carries an ErrorCode that tells the caller what to do next:
//
//   PeerClosed        the other end is gone (or closed its side): stop using the channel.
//   Timeout           the deadline passed; the channel is intact, try again later.
//   MessageTooLarge   a frame exceeds the configured limit; the stream cannot be resynchronised.
//   MalformedFrame    the frame header is not valid Cap'n Proto stream framing.
//   TruncatedMessage  the stream ended inside a message (the peer died mid-send).
//   SystemError       a system call failed; sys_errno() says which errno.
//   Interrupted       another thread called interrupt(); the channel is intact.
//   PeerRefused       the other side refused the connection (another user, not allowed).
//   IncompatiblePeer  the peer's hello does not match (protocol, application, limits).
//
// PeerClosed and TruncatedMessage both mean the peer is gone: Error::peer_gone().
//
// Non-blocking calls do not throw when nothing is ready: try_receive() returns an
// empty std::optional. Errors inside message *content* (a bad pointer deep in a
// struct) are Cap'n Proto's own kj::Exception, raised when the content is read.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace capnsplice {

/// Why an operation failed. One value per cause, stable across releases.
enum class ErrorCode {
  PeerClosed,
  Timeout,
  MessageTooLarge,
  MalformedFrame,
  TruncatedMessage,
  SystemError,
  Interrupted,
  PeerRefused,
  IncompatiblePeer,
};

/// The name of a code as written in error messages ("PeerClosed", ...).
std::string_view to_string(ErrorCode code) noexcept;

/// The exception thrown by every capnsplice operation.
///
/// what() reads like "channel 'plugin-3': receive: frame of 5368709120 bytes exceeds
/// the limit of 67108864 bytes [MessageTooLarge]".
class Error : public std::runtime_error {
 public:
  /// `context` names the channel and operation ("channel 'x': send"); `detail` says
  /// what happened. `sys_errno` is set for SystemError (0 otherwise).
  Error(ErrorCode code, std::string_view context, std::string_view detail, int sys_errno = 0);

  ErrorCode code() const noexcept { return code_; }

  /// True when the peer is gone: it closed its end or died, between messages
  /// (PeerClosed) or in the middle of one (TruncatedMessage).
  bool peer_gone() const noexcept {
    return code_ == ErrorCode::PeerClosed || code_ == ErrorCode::TruncatedMessage;
  }

  /// The errno of the failed system call for SystemError, else 0.
  int sys_errno() const noexcept { return sys_errno_; }

  /// Only the detail, without the context and code ("peer closed its end").
  const std::string& detail() const noexcept { return detail_; }

 private:
  ErrorCode code_;
  int sys_errno_;
  std::string detail_;
};

/// Throws SystemError for the current errno, naming the failed call.
[[noreturn]] void throw_system_error(std::string_view context, std::string_view call);

/// Throws SystemError for the given errno value.
[[noreturn]] void throw_system_error(std::string_view context, std::string_view call, int err);

}  // namespace capnsplice
