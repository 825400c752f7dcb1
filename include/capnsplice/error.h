// capnsplice/error.h — the one error type every capnsplice call throws.
//
// capnsplice reports failures as exceptions of type capnsplice::Error (a
// std::runtime_error), the same way everywhere: send, receive, channel setup,
// processes, rendezvous. Each carries an ErrorCode that tells the caller what to do
// next, and that advice holds wherever the code is thrown:
//
//   PeerClosed        the other end is gone or closed its side. After a failed send,
//                     keep receiving until receive fails too: what the peer sent before
//                     it went is still there. Then stop using the channel.
//   TruncatedMessage  the stream ended inside a message (the peer died mid-send): stop.
//   Timeout           the deadline passed before anything was done: nothing of the
//                     message was written (or consumed); the channel is intact, retry.
//   StreamCut         a send's deadline passed (or a system call failed) after part of a
//                     message was written: the sending side is closed (the peer will see
//                     TruncatedMessage), and every later send says StreamCut again;
//                     receiving still works. Close the channel when done receiving.
//   MessageTooLarge   a message is larger than a limit. On receive: the peer's frame
//                     exceeds max_message_bytes; the stream cannot be resynchronised,
//                     close. On send or while building: the message cannot be carried
//                     (it does not fit the shared-memory arena); nothing was written, the
//                     channel is intact: send less.
//   MalformedFrame    the peer's bytes are not valid Cap'n Proto stream framing: close.
//   ProtocolViolation the peer broke capnsplice's own protocol (control-link records,
//                     arena seals, shared-memory descriptors): it is buggy or hostile;
//                     close the channel.
//   InvalidArgument   the caller asked for something invalid (an empty or sent message,
//                     a send after close_sending(), the wrong end of a pipe, a malformed
//                     CAPNSPLICE_CHANNEL): fix the calling code. Nothing was done.
//   Overloaded        a bound on what this end keeps for later was reached (the messages
//                     a RequestTracker queues while a call waits): take the queued
//                     messages, then retry. Nothing was lost; the channel is intact.
//   SystemError       a system call failed; sys_errno() says which errno.
//   Interrupted       another thread called interrupt(); the channel is intact.
//   PeerRefused       the other side refused the connection (another user, not allowed).
//   IncompatiblePeer  the peer's hello does not match (protocol, application, limits).
//
// PeerClosed and TruncatedMessage both mean the peer is gone: Error::peer_gone().
//
// Non-blocking calls do not throw when nothing is ready: try_receive() returns an
// empty std::optional, also at a clean end of stream (Receiver::at_end() tells the two
// apart). Errors inside message *content* (a bad pointer deep in a struct) are Cap'n
// Proto's own kj::Exception, raised when the content is read.
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
  StreamCut,
  ProtocolViolation,
  InvalidArgument,
  Overloaded,
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
