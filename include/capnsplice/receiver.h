// capnsplice/receiver.h — reads Cap'n Proto messages from a pipe, in place.
//
// A Receiver owns the read end of a pipe (or any readable descriptor). Each read
// takes as many bytes as are ready — often many messages — into a page-aligned
// ring (vmsplice in the read direction for pipes, read() otherwise). Frames are
// parsed where they landed and handed out as ReceivedMessage views: one copy from
// the sender's pages to here, none after.
//
// Frame headers are untrusted: segment count, each size and the total are checked
// against ReceiveLimits before anything is allocated (MalformedFrame,
// MessageTooLarge). End of stream between messages is PeerClosed for receive() and an
// empty try_receive() with at_end() true; inside a message, TruncatedMessage for both.
//
// Threads: one thread receives at a time; messages may be used anywhere. Destroying a
// receiver (or its channel) while another thread is blocked in receive() wakes that
// thread, which throws InvalidArgument, and waits for it to leave; a call that starts
// after the destruction began is the caller's bug.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "capnsplice/deadline.h"
#include "capnsplice/error.h"
#include "capnsplice/options.h"
#include "capnsplice/received_message.h"
#include "capnsplice/unique_fd.h"

namespace capnsplice {

namespace detail {
class ReceiverCore;
class ControlLink;
struct DescriptorFacts;
}

/// Counters of one receiver.
struct ReceiverStats {
  std::uint64_t messages = 0;
  std::uint64_t bytes = 0;           ///< frame bytes, segment tables included
  std::uint64_t reads = 0;           ///< read system calls that returned data
  std::uint64_t empty_reads = 0;     ///< read system calls that found the pipe empty
  /// Looks at the pipe answered by the peer's doorbell alone, without a system call
  /// (ReceiverOptions::doorbell): empty try_receive() calls and spins that saw a ring.
  std::uint64_t doorbell_looks = 0;
  /// Whether this receiver watches the peer's doorbell.
  bool doorbell = false;
  std::uint64_t own_buffer_messages = 0;  ///< frames that did not fit in the ring
  std::uint64_t shared_messages = 0;      ///< read in place from the peer's arena
  std::uint64_t descriptor_messages = 0;  ///< came with descriptors
};

class Receiver {
 public:
  /// Takes ownership of `fd`. `context` prefixes error messages ("channel 'x': receive").
  /// The descriptor's flags are left as they are.
  explicit Receiver(UniqueFd fd, ReceiverOptions options = {}, std::string context = "receive");

  /// Used by Channel: `link` is the end's control link; with it this receiver tells the
  /// peer it reads shared-memory messages, and follows their descriptors. `facts` (null:
  /// probed) describes `fd`, for a pipe end the channel made itself.
  Receiver(UniqueFd fd, ReceiverOptions options, std::string context,
           std::shared_ptr<detail::ControlLink> link,
           const detail::DescriptorFacts* facts = nullptr);
  Receiver(Receiver&&) noexcept;
  Receiver& operator=(Receiver&&) noexcept;
  ~Receiver();

  /// Blocks until a whole message is there. Throws PeerClosed, TruncatedMessage,
  /// MessageTooLarge, MalformedFrame, ProtocolViolation (a shared-memory descriptor
  /// from a capnsplice peer that breaks the protocol), Interrupted or SystemError.
  ReceivedMessage receive();

  /// Like receive(), but throws Timeout once `deadline` passes.
  ReceivedMessage receive(Deadline deadline);

  /// Like receive(), but throws Timeout after `timeout`.
  ReceivedMessage receive_for(std::chrono::nanoseconds timeout) {
    return receive(Deadline::after(timeout));
  }

  /// A message if one is complete now (reading without blocking), else empty. Empty
  /// also once the peer closed its end and every message before that was handed out:
  /// at_end() then says so, with no exception for the normal end of a peer. Other
  /// errors (TruncatedMessage, MalformedFrame, ...) are thrown as by receive().
  std::optional<ReceivedMessage> try_receive();

  /// try_receive() for a loop that calls it again at once (busy polling). With the peer's
  /// doorbell (ReceiverOptions::doorbell), while it has not rung since the pipe was last
  /// found empty, answers empty without a system call, and reads the pipe once every
  /// 1024 such calls (for a writer that does not ring, and the end of the stream). So an
  /// empty answer does not promise an empty pipe: an event loop that sleeps on fd()
  /// after an empty answer uses try_receive(). Without a doorbell it is try_receive().
  std::optional<ReceivedMessage> try_receive_spinning();

  /// True once the stream ended cleanly (the peer closed its end or exited between
  /// messages) and every message before the end was handed out: nothing more will come.
  /// The descriptor stays readable from then on, so a loop should stop watching it.
  bool at_end() const noexcept;

  /// True when a whole message is already buffered: poll() on fd() would not report it.
  /// After poll() says readable, call try_receive() until it returns empty.
  bool has_buffered_message();

  /// True when the last read left the pipe empty: it found nothing, or took less than it
  /// asked for. Until more bytes arrive (which a watcher of the descriptor learns), a
  /// try_receive() finds only what has_buffered_message() says is there; an event loop
  /// can stop draining here rather than pay for a read that finds nothing.
  bool emptied_pipe() const noexcept;

  /// Wakes the thread blocked in receive() on this receiver, or else the next receive()
  /// that would block, exactly once: it throws Interrupted. Interrupts made meanwhile
  /// count as one. Safe to call from any thread. The wake-up goes through an eventfd of
  /// the waiting thread, made on its first blocking receive and closed when it exits: a
  /// receiver holds no descriptor for it.
  void interrupt();

  /// The descriptor to poll for POLLIN (or add to epoll).
  int fd() const noexcept;

  ReceiverStats stats() const;

 private:
  std::unique_ptr<detail::ReceiverCore> core_;
};

}  // namespace capnsplice
