// capnsplice/sender.h — writes Cap'n Proto messages into a pipe.
//
// A Sender owns the write end of a pipe (or any writable descriptor) and a pool of
// page-aligned memory that its messages are built in. Each message goes out as
// standard Cap'n Proto stream framing, in one gather list:
//
//   * small messages by writev: the kernel copies them, the pool memory is free at once;
//   * large messages by vmsplice: the pipe references the pool's pages, nothing is
//     copied on this side, and the pages are reused only after the reader consumed
//     them (FIONREAD on the pipe says so).
//
// send() writes at once. queue() collects messages and flush() writes them all in one
// system call — several times faster for small messages (see README "Batching");
// send() and flush() write whatever was queued before, in order.
//
// The reader must take the bytes out of the pipe (read, or vmsplice in the read
// direction) to count as having consumed them. A reader that splice(2)s them on to
// another pipe or socket moves the page references with them, so a vmspliced message
// could be overwritten while still in flight downstream: use SendPath::copy there.
//
// A closed peer is an Error with code PeerClosed, never a SIGPIPE death; the
// process's signal dispositions are left alone.
//
// Threads: one thread sends at a time. Messages may be built on other threads.
#pragma once

#include <capnp/message.h>

#include <cstdint>
#include <memory>
#include <string>

#include "capnsplice/deadline.h"
#include "capnsplice/error.h"
#include "capnsplice/options.h"
#include "capnsplice/outgoing_message.h"
#include "capnsplice/unique_fd.h"

namespace capnsplice {

namespace detail {
class SenderCore;
class ControlLink;
}

/// Counters of one sender, for tests, tuning and the benchmark.
struct SenderStats {
  std::uint64_t messages = 0;
  std::uint64_t bytes = 0;  ///< frame bytes written, segment tables included
  std::uint64_t copied_messages = 0;
  std::uint64_t spliced_messages = 0;
  std::uint64_t dedicated_allocations = 0;  ///< requests the pool's ring could not serve
  std::uint64_t waits_for_reader = 0;       ///< times building waited for a full pool
  std::uint64_t shared_messages = 0;        ///< sent as descriptors of the shared-memory arena
  std::uint64_t arena_bytes_in_use = 0;     ///< held for the reader or being built
  /// Shared-memory arenas made: the first, then one for each idle arena replaced because
  /// its footprint passed SenderOptions::arena_keep_bytes.
  std::uint64_t arenas_created = 0;
  /// Whether this kernel's vmsplice maps pages into the pipe (probed once per process:
  /// splice a page, change it, read it back). When it copies instead, every message goes
  /// by writev, which is then no slower, and nothing waits for the reader.
  bool vmsplice_aliases_pages = true;
  /// Whether this sender can send large messages through a shared-memory arena: it has
  /// a control link (Channel) and the process can make sealed memfd arenas (Linux 5.1 or
  /// later, memfd_create allowed, CAPNSPLICE_DISABLE_SHARED_MEMORY not "1"). When it
  /// cannot, or its peer cannot, large messages take the pipe.
  bool shared_memory_available = false;
};

class Sender {
 public:
  /// Takes ownership of `fd`. `context` prefixes error messages ("channel 'x': send").
  /// The descriptor's O_NONBLOCK flag is left as it is; with a blocking descriptor a
  /// copy write can block past a deadline while the reader makes room.
  explicit Sender(UniqueFd fd, SenderOptions options = {}, std::string context = "send");

  /// Used by Channel: `link` is the end's control link, which enables the shared-memory
  /// path for large messages.
  Sender(UniqueFd fd, SenderOptions options, std::string context,
         std::shared_ptr<detail::ControlLink> link);
  Sender(Sender&&) noexcept;
  Sender& operator=(Sender&&) noexcept;
  ~Sender();

  /// A new message built in this sender's pool.
  OutgoingMessage new_message();

  /// Sends and consumes `message` (after any queued ones); waits for room until the
  /// options' send_timeout. Throws Timeout when the deadline passed before any of the
  /// message was written (the channel is intact), StreamCut when it passed after part
  /// was (the stream is cut mid-message: this sender closes itself, later sends throw
  /// StreamCut too, and the reader sees TruncatedMessage), PeerClosed when the reader
  /// is gone (keep receiving: what it sent before is still there), MessageTooLarge when
  /// it does not fit the shared-memory arena (nothing written), InvalidArgument for a
  /// sent or moved-from message or after close(), or SystemError. Messages not written
  /// when an error is thrown are dropped (the error says how many).
  void send(OutgoingMessage&& message);
  void send(OutgoingMessage&& message, Deadline deadline);

  /// Consumes `message` into the outgoing batch without writing it yet. The batch is
  /// written by flush(), by the next send(), when the pool needs the memory back, or
  /// when it reaches 256 KiB or 256 messages. Flush before waiting for a reply.
  void queue(OutgoingMessage&& message);

  /// Writes every queued message, in one system call per run of messages that share a
  /// write method.
  void flush();
  void flush(Deadline deadline);

  /// True when queued messages wait for flush().
  bool has_queued() const noexcept;

  /// Sends a message built with any other builder (capnp::MallocMessageBuilder, ...)
  /// by copy. The builder can be reused or destroyed as soon as this returns. Segments
  /// whose first is empty are refused (InvalidArgument): that framing marks capnsplice's
  /// own control frames (frame.h), and such a message has no root pointer anyway.
  void send_copy(capnp::MessageBuilder& message);
  void send_copy(capnp::MessageBuilder& message, Deadline deadline);
  void send_copy(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                 Deadline deadline);

  /// Writes queued messages, then closes the write end: the reader gets every message
  /// sent, then end of stream. Further sends throw InvalidArgument. A Timeout (the reader
  /// made no room in time; the unwritten messages are dropped) leaves the end open, so
  /// close() can be called again. (Destroying a sender
  /// with queued messages writes only what the pipe takes without waiting.)
  void close();

  /// The descriptor written to (-1 after close()).
  int fd() const noexcept;

  SenderStats stats() const;

 private:
  std::shared_ptr<detail::SenderCore> core_;  // shared: the pool holds a weak reference
};

}  // namespace capnsplice
