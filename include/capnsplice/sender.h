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
// Nothing here cuts the stream because a deadline passed. A message is written whole or
// kept whole in the sender's outgoing queue, and a frame the pipe took only part of is
// finished by the next call that writes (send, try_send, flush, try_flush, close):
//
//   outgoing queue:  [ rest of frame 7 | frame 8 | frame 9 ]  -> pipe, as it makes room
//                      ^ unsent_bytes() counts from here
//
// An event loop never blocks: try_send() writes what the pipe takes and keeps the rest
// (SendStatus says which), try_flush() writes more when the pipe has room again. The
// queue is bounded by SenderOptions::max_unsent_bytes: above it a message is refused
// (SendStatus::queue_full / Overloaded) and stays the caller's.
// The reader must take the bytes out of the pipe (read, or vmsplice in the read
// direction) to count as having consumed them. A reader that splice(2)s them on to
// another pipe or socket moves the page references with them, so a vmspliced message
// could be overwritten while still in flight downstream: use SendPath::copy there.
//
// A closed peer is an Error with code PeerClosed, never a SIGPIPE death (unless the
// application chose SigpipeSafety::process_ignores and then stopped ignoring SIGPIPE);
// the process's signal dispositions are left alone.
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
struct DescriptorFacts;
struct LazySenderCore;
}

/// What try_send() did with a message.
enum class SendStatus {
  /// Written whole into the pipe (a large one: into the arena, its descriptor into the
  /// pipe). The message was taken.
  sent,
  /// Taken and kept whole in the outgoing queue, because the pipe is full (part of it
  /// may be in the pipe already). It goes out, before anything sent later, as the
  /// reader makes room: call try_flush() when the pipe is writable again.
  queued,
  /// Not taken: the outgoing queue already holds max_unsent_bytes. The message is still
  /// the caller's, unchanged; try again once try_flush() made room. Also when the message
  /// is in the shared-memory arena with its root built in the pipe pool, and the arena
  /// has no room to copy the root into because the reader holds the messages there: no
  /// event of watch_fd() says when that changes, so try again on a timer or after the
  /// reader's next reply.
  queue_full,
};

/// Counters of one sender, for tests, tuning and the benchmark.
struct SenderStats {
  std::uint64_t messages = 0;
  std::uint64_t bytes = 0;  ///< frame bytes written, segment tables included
  /// System calls that put frame bytes into the pipe (writev or vmsplice): a batch of
  /// messages written together counts once.
  std::uint64_t writes = 0;
  /// Batches of writes around which SIGPIPE was blocked in the writing thread (one or
  /// two more system calls each): only when the process does not ignore SIGPIPE
  /// (SigpipeSafety).
  std::uint64_t sigpipe_masked_batches = 0;
  /// Whether this sender rings a doorbell its peer was offered (SenderOptions::doorbell).
  bool doorbell = false;
  std::uint64_t copied_messages = 0;
  std::uint64_t spliced_messages = 0;
  std::uint64_t dedicated_allocations = 0;  ///< requests the pool's ring could not serve
  std::uint64_t waits_for_reader = 0;       ///< times building waited for a full pool
  std::uint64_t shared_messages = 0;        ///< sent as descriptors of the shared-memory arena
  std::uint64_t descriptor_messages = 0;    ///< carried descriptors (OutgoingMessage::attach)
  std::uint64_t arena_bytes_in_use = 0;     ///< held for the reader or being built
  /// Shared-memory arenas made: the first, then one for each idle arena replaced because
  /// its footprint passed SenderOptions::arena_keep_bytes.
  std::uint64_t arenas_created = 0;
  /// Shared-memory messages the reader released through the arena's release ring (a
  /// write to shared memory), and by a record on the control link (a system call at each
  /// end; a reader that could not map the ring, or found it full).
  std::uint64_t shared_releases_by_ring = 0;
  std::uint64_t shared_releases_by_record = 0;
  /// Whether this kernel's vmsplice maps pages into the pipe (probed once per process:
  /// splice a page, change it, read it back). When it copies instead, every message goes
  /// by writev, which is then no slower, and nothing waits for the reader.
  bool vmsplice_aliases_pages = true;
  /// Whether this sender can send large messages through a shared-memory arena: it has
  /// a control link (Channel) and the process can make sealed memfd arenas (Linux 5.1 or
  /// later, memfd_create allowed, CAPNSPLICE_DISABLE_SHARED_MEMORY not "1"). When it
  /// cannot, or its peer cannot, large messages take the pipe.
  bool shared_memory_available = false;
  /// The capacity of the pipe written to, in bytes (0: not a pipe, or closed). A pipe
  /// capnsplice made starts at the kernel's default (64 KiB; 8 KiB for a user past
  /// /proc/sys/fs/pipe-user-pages-soft) and is raised once, to ChannelOptions::pipe_bytes,
  /// the first time a write finds it full or a frame is larger than 64 KiB. A pipe the
  /// application gave (from_fds, a Sender of its own) keeps the capacity it has.
  std::uint64_t pipe_bytes = 0;
  /// The raise was tried and the kernel refused it (EPERM: the user's pipe budget,
  /// pipe-user-pages-soft or -hard, is spent, or pipe_bytes exceeds pipe-max-size without
  /// CAP_SYS_RESOURCE) or granted less than asked. The channel keeps working with
  /// pipe_bytes; small pipes cost throughput on a stream (README "The pipe budget").
  bool pipe_raise_refused = false;
};

class Sender {
 public:
  /// Takes ownership of `fd`. `context` prefixes error messages ("channel 'x': send").
  /// The descriptor's O_NONBLOCK flag is left as it is; with a blocking descriptor a
  /// copy write can block past a deadline while the reader makes room.
  explicit Sender(UniqueFd fd, SenderOptions options = {}, std::string context = "send");

  /// Used by Channel: `link` is the end's control link, which enables the shared-memory
  /// path for large messages. `facts` (null: probed) describes `fd`, for a pipe the
  /// channel made itself: asking the kernel again would cost system calls per channel.
  /// With `facts`, only the access mode is checked here, and the sender's machinery (its
  /// pools, shared-memory sender, counters) is made by the first call that needs it:
  /// most ends of a host's pairs never send, or not for a while.
  Sender(UniqueFd fd, SenderOptions options, std::string context,
         std::shared_ptr<detail::ControlLink> link, const detail::DescriptorFacts* facts = nullptr);
  Sender(Sender&&) noexcept;
  Sender& operator=(Sender&&) noexcept;
  ~Sender();

  /// A new message built in this sender's pool. Building waits for room in a full pool or
  /// arena until the options' send_timeout (per request for memory), then throws
  /// Timeout from the Cap'n Proto call that asked for memory.
  OutgoingMessage new_message();
  /// Building waits until `deadline` at the latest. With Deadline::immediate() building
  /// never waits: where the pool or the arena is full it takes fresh memory instead (the
  /// message then travels through the pipe). That is the form for event loops: memory
  /// stays bounded because try_send() refuses messages beyond max_unsent_bytes.
  OutgoingMessage new_message(Deadline deadline);

  /// Sends the message after any queued ones and returns once it is written whole;
  /// waits for room until the options' send_timeout or `deadline`. Nothing is cut and
  /// nothing lost when the deadline passes:
  ///   * Timeout: the message was taken and is kept whole in the outgoing queue (part
  ///     of it may be in the pipe); the next send, flush, try_flush or close writes it
  ///     first. Do not send it again.
  ///   * Overloaded: the queue already held max_unsent_bytes and the reader made no room
  ///     in time, or the shared-memory arena had no room for the part of the message
  ///     built in the pipe pool (its root) and the reader released none in time: the
  ///     message was not taken and `message` still holds it.
  /// A message with descriptors attached (OutgoingMessage::attach) first waits, until the
  /// same deadline, for the peer to say it takes descriptors and for room on the control
  /// link; when either is missing then, Timeout with the message not taken (`message`
  /// still holds it, descriptors included). InvalidArgument when it has more than the
  /// peer takes, or this end has no control link.
  /// Also PeerClosed when the reader is gone (keep receiving: what it sent before is
  /// still there; the queue is dropped), MessageTooLarge when it does not fit the
  /// shared-memory arena (not taken), InvalidArgument for a sent or moved-from message
  /// or after close(), StreamCut when a system call failed after part of a frame was
  /// written (this end stops sending), or SystemError.
  void send(OutgoingMessage&& message);
  void send(OutgoingMessage&& message, Deadline deadline);

  /// Never blocks: writes the queue and the message as far as the pipe takes them now
  /// and keeps the rest whole (see SendStatus). Throws what send() throws except Timeout
  /// and Overloaded (but Timeout, message not taken, for descriptors the peer cannot be
  /// sent yet: see send()).
  [[nodiscard]] SendStatus try_send(OutgoingMessage&& message);

  /// Takes `message` into the outgoing batch. The batch is written by flush(), by the
  /// next send(), when the pool or the shared-memory arena needs the memory back, or —
  /// as far as the pipe takes it without waiting — when it reaches 256 KiB or 256
  /// messages (or 32 shared-memory messages, or 1 MiB of them). Waits only while the
  /// queue holds max_unsent_bytes, until send_timeout or `deadline` (Deadline::immediate()
  /// never waits); then Overloaded, the message not taken. A shared-memory message whose
  /// root was built in the pool is copied into the arena here and may wait for arena
  /// room like building does; without room by the deadline, Overloaded too, the message
  /// not taken. Flush before waiting for a reply.
  void queue(OutgoingMessage&& message);
  void queue(OutgoingMessage&& message, Deadline deadline);

  /// Never blocks: takes `message` into the outgoing batch like queue() (true), or
  /// refuses it when the queue holds max_unsent_bytes or the arena has no room for its
  /// root, where try_send() says queue_full (false; `message` is still the caller's).
  /// For a loop that takes several messages in one turn and then calls try_flush()
  /// once: the batch goes out in one system call. A watcher of the channel
  /// learns of the queued bytes only from that try_flush(): call it before waiting.
  /// With descriptors the peer cannot be sent yet, Timeout (see send()).
  [[nodiscard]] bool try_queue(OutgoingMessage&& message);

  /// Writes every queued message, waiting for room until send_timeout or `deadline`.
  /// Timeout: what is left stays queued whole (unsent_bytes() says how much).
  void flush();
  void flush(Deadline deadline);

  /// Writes what the pipe takes now, never blocks; returns unsent_bytes() after.
  std::size_t try_flush();

  /// Bytes taken and not yet written into the pipe (queued messages, the rest of a
  /// frame the pipe took part of). Thread-safe.
  std::size_t unsent_bytes() const noexcept;

  /// Messages written whole into the pipe since the start (a message's send completes
  /// when this passes the count of messages taken before it, itself included).
  std::uint64_t written_messages() const noexcept;

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
  /// sent, then end of stream. Further sends throw InvalidArgument. Waits until
  /// send_timeout or `deadline`; on Timeout the end stays open with the queue kept, so
  /// close() can be called again. (Destroying a sender writes only what the pipe takes
  /// without waiting: a frame it cannot finish is cut, and the reader sees
  /// TruncatedMessage.)
  void close();
  void close(Deadline deadline);

  /// Registers this sender's descriptor in `epoll_fd` for EPOLLOUT while it holds unsent
  /// bytes (and takes it out when the queue empties or the descriptor closes), so that
  /// epoll descriptor becomes readable when the pipe has room for them. -1: stop.
  /// Used by Channel::watch_fd().
  void watch_with(int epoll_fd);

  /// The descriptor written to (-1 after close()). close() closes it: an event loop
  /// watches Channel::watch_fd() instead, which stays open.
  int fd() const noexcept;

  SenderStats stats() const;

 private:
  /// The core, made unless it is (any thread).
  detail::SenderCore& core() const;
  /// Makes the core of a lazy sender, once (any thread).
  void make_core() const;
  /// The core if it is made, else null: for the looks that need not make it.
  detail::SenderCore* made_core() const noexcept;

  std::unique_ptr<detail::LazySenderCore> lazy_;  // what makes the core, when made lazily
  /// Shared: messages being built hold weak references. Written once, by core().
  mutable std::shared_ptr<detail::SenderCore> core_;
};

}  // namespace capnsplice
