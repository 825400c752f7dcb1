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

/// The other end of a channel as raw descriptors, to hand to another process (an
/// exec'd child, or a client through SCM_RIGHTS). Both are blocking and close-on-exec.
struct RemoteEnd {
  UniqueFd receive_fd;  ///< read end of the pipe this Channel sends into
  UniqueFd send_fd;     ///< write end of the pipe this Channel receives from
  UniqueFd control_fd;  ///< the control link (SOCK_SEQPACKET), for the shared-memory path
};

class Channel {
 public:
  /// Two connected ends. Each end has two pipe ends and one end of a control socket
  /// (which the shared-memory path uses for large messages), all close-on-exec; each
  /// pipe's capacity is raised with F_SETPIPE_SZ (options.pipe_bytes).
  static std::pair<Channel, Channel> pair(const ChannelOptions& options = {});

  /// One end as a Channel, the other as raw descriptors for another process. The remote
  /// end is left blocking, so a plain Cap'n Proto peer can use it as it is.
  static std::pair<Channel, RemoteEnd> pair_with_remote_end(const ChannelOptions& options = {});

  /// An end made of existing descriptors: `receive_fd` (read end of the incoming pipe)
  /// and `send_fd` (write end of the outgoing pipe). The send descriptor is switched
  /// to non-blocking mode so that send timeouts hold; pass `keep_blocking` to leave
  /// it as it is (for descriptors shared with other processes, such as stdout).
  /// `control_fd`, the peer's control socket, enables the shared-memory path; without
  /// it every message goes through the pipes.
  static Channel from_fds(UniqueFd receive_fd, UniqueFd send_fd, const ChannelOptions& options = {},
                          bool keep_blocking = false, UniqueFd control_fd = {});

  Channel(Channel&&) noexcept = default;
  Channel& operator=(Channel&&) noexcept = default;

  // --- Sending -------------------------------------------------------------------

  /// A message to build in this end's pool and pass to send().
  OutgoingMessage new_message() { return sender_.new_message(); }

  /// Sends and consumes the message; waits for room at most options.sender.send_timeout.
  void send(OutgoingMessage&& message) { sender_.send(std::move(message)); }
  void send(OutgoingMessage&& message, Deadline deadline) {
    sender_.send(std::move(message), deadline);
  }

  /// Adds the message to the outgoing batch; flush() or the next send() writes the batch
  /// in one system call. Flush before waiting for a reply to a queued request.
  void queue(OutgoingMessage&& message) { sender_.queue(std::move(message)); }
  void flush() { sender_.flush(); }

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
  /// This end can still receive.
  void close_sending() { sender_.close(); }

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

  /// Makes the receive() blocked in another thread, or else the next one that would
  /// block, throw Interrupted, once (Receiver::interrupt).
  void interrupt_receive() { receiver_.interrupt(); }

  // --- Parts ---------------------------------------------------------------------

  Sender& sender() noexcept { return sender_; }
  Receiver& receiver() noexcept { return receiver_; }
  const std::string& name() const noexcept { return name_; }

 private:
  Channel(Sender sender, Receiver receiver, std::string name)
      : sender_(std::move(sender)), receiver_(std::move(receiver)), name_(std::move(name)) {}

  Sender sender_;
  Receiver receiver_;
  std::string name_;
};

}  // namespace capnsplice
