// capnsplice/channel.h — a duplex, typed channel of Cap'n Proto messages.
//
// A Channel is one end of a pair of pipes, one per direction:
//
//      end A                                        end B
//   [ Sender   ] ==== pipe A->B (vmsplice / copy) ==> [ Receiver ]
//   [ Receiver ] <=== pipe B->A ===================== [ Sender   ]
//
// Channel::pair() makes both ends in one process, to keep one and hand the other to
// a forked child. Both directions speak standard Cap'n Proto stream framing, so
// either end can be a plain Cap'n Proto program (capnp::writeMessageToFd /
// capnp::StreamFdMessageReader on the same descriptors).
//
// Errors are capnsplice::Error exceptions (see error.h); try_receive() returns an
// empty optional when nothing is ready, and at the peer's end of stream (at_end()).
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <utility>

#include "capnsplice/deadline.h"
#include "capnsplice/options.h"
#include "capnsplice/outgoing_message.h"
#include "capnsplice/received_message.h"
#include "capnsplice/receiver.h"
#include "capnsplice/sender.h"
#include "capnsplice/unique_fd.h"

namespace capnsplice {

namespace detail {
struct ChannelMaker;
}

/// The other end of a channel as raw descriptors, to hand to another process (an
/// exec'd child, or a client through SCM_RIGHTS). Both are blocking and close-on-exec.
struct RemoteEnd {
  UniqueFd receive_fd;  ///< read end of the pipe this Channel sends into
  UniqueFd send_fd;     ///< write end of the pipe this Channel receives from
  UniqueFd control_fd;  ///< the control link (SOCK_SEQPACKET), for the shared-memory path
};

class Channel {
 public:
  /// Two connected ends: 4 descriptors, the two pipes, all close-on-exec and non-blocking
  /// (both ends are Channels; for a plain Cap'n Proto peer, pair_with_remote_end()). The
  /// control socket pair of the shared-memory path (2 more) is made when an end first
  /// sends a message that takes it (SenderOptions::shared_memory_threshold_bytes), and
  /// before any fork(), so that an end handed to a forked child keeps the path. Each
  /// pipe starts at the kernel's default capacity; its sender raises it once to
  /// options.pipe_bytes when traffic needs it (SenderStats::pipe_bytes). An end's sending
  /// machinery (pools, counters) is made by its first send, or any call that needs it.
  static std::pair<Channel, Channel> pair(const ChannelOptions& options = {});

  /// One end as a Channel, the other as raw descriptors for another process. The remote
  /// end is left blocking, so a plain Cap'n Proto peer can use it as it is.
  static std::pair<Channel, RemoteEnd> pair_with_remote_end(const ChannelOptions& options = {});

  /// An end made of existing descriptors: `receive_fd` (read end of the incoming pipe)
  /// and `send_fd` (write end of the outgoing pipe). The send descriptor is switched
  /// to non-blocking mode so that send timeouts hold; pass `keep_blocking` to leave
  /// it as it is (for descriptors shared with other processes, such as stdout).
  /// Their pipe capacity is the application's: options.pipe_bytes is not applied
  /// (capnsplice raises only pipes it made, spawn()'s and rendezvous' included).
  /// `control_fd`, the peer's control socket, enables the shared-memory path; without
  /// it every message goes through the pipes.
  static Channel from_fds(UniqueFd receive_fd, UniqueFd send_fd, const ChannelOptions& options = {},
                          bool keep_blocking = false, UniqueFd control_fd = {});

  Channel(Channel&&) noexcept = default;
  Channel& operator=(Channel&&) noexcept;
  ~Channel();

  // --- Sending -------------------------------------------------------------------

  /// A message to build in this end's pool and pass to send(). With a deadline, building
  /// waits for pool room until then; Deadline::immediate() never waits (Sender).
  OutgoingMessage new_message() { return sender_.new_message(); }
  OutgoingMessage new_message(Deadline deadline) { return sender_.new_message(deadline); }

  /// Sends the message and returns once it is written whole; waits for room at most
  /// options.sender.send_timeout (default 10 s) or until `deadline`. Timeout keeps the
  /// message queued whole, Overloaded leaves it with the caller (Sender::send).
  void send(OutgoingMessage&& message) { sender_.send(std::move(message)); }
  void send(OutgoingMessage&& message, Deadline deadline) {
    sender_.send(std::move(message), deadline);
  }

  /// Never blocks: sent, queued (written later by try_flush()), or refused with the
  /// message left with the caller (Sender::try_send).
  [[nodiscard]] SendStatus try_send(OutgoingMessage&& message) {
    return sender_.try_send(std::move(message));
  }

  /// Adds the message to the outgoing batch; flush() or the next send() writes the batch
  /// in one system call. Flush before waiting for a reply to a queued request.
  /// Waits only while the queue holds max_unsent_bytes (until send_timeout / `deadline`).
  void queue(OutgoingMessage&& message) { sender_.queue(std::move(message)); }
  void queue(OutgoingMessage&& message, Deadline deadline) {
    sender_.queue(std::move(message), deadline);
  }
  /// Never blocks: into the batch (true) or refused, the message left with the caller
  /// (false). try_flush() before waiting (Sender::try_queue).
  [[nodiscard]] bool try_queue(OutgoingMessage&& message) {
    return sender_.try_queue(std::move(message));
  }
  void flush() { sender_.flush(); }
  void flush(Deadline deadline) { sender_.flush(deadline); }
  /// Writes what the pipe takes now; returns the bytes still unsent.
  std::size_t try_flush() { return sender_.try_flush(); }
  /// Bytes taken for sending and not yet in the pipe.
  std::size_t unsent_bytes() const noexcept { return sender_.unsent_bytes(); }

  /// Sends a message built with any builder, by copy.
  void send_copy(capnp::MessageBuilder& message) { sender_.send_copy(message); }

  /// Builds a `Root` struct with `fill(Root::Builder)` and sends it:
  ///
  ///   channel.send_struct<Chunk>([&](Chunk::Builder chunk) { chunk.setSeq(1); });
  template <typename Root, typename Fill>
  void send_struct(Fill&& fill) {
    OutgoingMessage message = new_message();
    fill(message.init_root<Root>());
    send(std::move(message));
  }

  /// Stops sending: the peer receives what was sent, then end of stream (PeerClosed).
  /// This end can still receive. Waits for the reader until send_timeout or `deadline`;
  /// on Timeout the end stays open with its queue, and close_sending() can be retried.
  void close_sending() { sender_.close(); }
  void close_sending(Deadline deadline) { sender_.close(deadline); }

  // --- Receiving -----------------------------------------------------------------

  /// Blocks until a message arrives.
  ReceivedMessage receive() { return receiver_.receive(); }
  /// Throws Timeout when nothing arrives before the deadline / within `timeout`.
  ReceivedMessage receive(Deadline deadline) { return receiver_.receive(deadline); }
  ReceivedMessage receive_for(std::chrono::nanoseconds timeout) {
    return receiver_.receive_for(timeout);
  }
  /// A message if one is complete now, else empty; never blocks. Empty with at_end()
  /// true once the peer closed its end (Receiver::try_receive).
  std::optional<ReceivedMessage> try_receive() { return receiver_.try_receive(); }
  /// try_receive() for busy polling, which with a doorbell costs no system call while
  /// nothing rang; not for event loops (Receiver::try_receive_spinning).
  std::optional<ReceivedMessage> try_receive_spinning() {
    return receiver_.try_receive_spinning();
  }

  /// True once the peer closed its sending end and every message it sent was received:
  /// an event loop learns that a peer exited without catching an exception.
  bool at_end() const noexcept { return receiver_.at_end(); }

  /// Receives and opens the root as `Root`.
  template <typename Root>
  Received<Root> receive_as() {
    return Received<Root>(receive());
  }
  template <typename Root>
  Received<Root> receive_as(Deadline deadline) {
    return Received<Root>(receive(deadline));
  }

  /// The descriptor to poll (POLLIN) or add to epoll. Messages can be buffered
  /// without the descriptor being readable: after a wake-up, call try_receive() until
  /// it returns empty (or check has_buffered_message()).
  int receive_fd() const noexcept { return receiver_.fd(); }
  bool has_buffered_message() { return receiver_.has_buffered_message(); }

  /// The descriptor for an event loop: an epoll descriptor, made on first call and open
  /// until this Channel is destroyed — never closed under a watcher, whatever happens to
  /// the pipes (close_sending(), peer death). Watch it for readability (level- or
  /// edge-triggered); it is readable when the channel has something to do:
  ///   * bytes or end of stream arrived: try_receive() until it returns empty;
  ///   * the pipe has room while unsent_bytes() > 0: try_flush().
  /// As with receive_fd(), a complete message already buffered does not make it
  /// readable, so drain try_receive() after every wake-up (has_buffered_message()).
  /// Costs one descriptor. Throws SystemError when epoll cannot be created.
  int watch_fd();

  /// Makes the receive() blocked in another thread, or else the next one that would
  /// block, throw Interrupted, once (Receiver::interrupt).
  void interrupt_receive() { receiver_.interrupt(); }

  // --- Parts ---------------------------------------------------------------------

  Sender& sender() noexcept { return sender_; }
  Receiver& receiver() noexcept { return receiver_; }
  const std::string& name() const noexcept { return name_; }

 private:
  friend struct detail::ChannelMaker;
  Channel(Sender sender, Receiver receiver, std::string name)
      : sender_(std::move(sender)), receiver_(std::move(receiver)), name_(std::move(name)) {}

  Sender sender_;
  Receiver receiver_;
  std::string name_;
  UniqueFd watch_;  // epoll: receive pipe (EPOLLIN), send pipe (EPOLLOUT while unsent)
};

}  // namespace capnsplice
