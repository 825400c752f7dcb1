// capnsplice/options.h — configuration of senders, receivers and channels.
//
// Every field has a measured default; most users change only `name` and perhaps the
// receive limits. Setters return *this so options read as one expression:
//
//   auto options = capnsplice::ChannelOptions()
//                      .with_name("plugin-3")
//                      .with_max_message_bytes(256 << 20)
//                      .with_send_timeout(std::chrono::seconds(5));
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace capnsplice {

inline constexpr std::size_t KiB = 1024;
inline constexpr std::size_t MiB = 1024 * KiB;

/// Limits applied to every incoming frame before anything is allocated for it.
/// Frames are untrusted input: a header that breaks a limit raises MessageTooLarge
/// or MalformedFrame naming the numbers.
struct ReceiveLimits {
  /// Largest message accepted, segment table included.
  std::size_t max_message_bytes = 64 * MiB;
  /// Most segments in one message (Cap'n Proto's own reader allows 512).
  std::uint32_t max_segments = 512;
  /// Cap'n Proto's traversal limit, in words: how much reading one message may do
  /// (Cap'n Proto counts every get of a struct or list again). 0 means
  /// 4 * max_message_bytes / 8: a message of the largest size can be read four times.
  std::uint64_t traversal_limit_words = 0;
  /// Cap'n Proto's nesting limit.
  int nesting_limit = 64;
  /// Most descriptors one message may carry (OutgoingMessage::attach); told to the
  /// peer's sender, which refuses more. 0: this end takes none. At most
  /// kMaxDescriptorsPerMessage.
  std::uint32_t max_descriptors_per_message = 16;
  /// Most descriptors this end holds that came ahead of their messages, in this
  /// process's descriptor table. Beyond it (or beyond max_descriptors_per_message) a
  /// record's descriptors are closed on arrival and its message fails with
  /// ProtocolViolation.
  std::uint32_t max_descriptors_waiting = 64;
};

/// The most descriptors any message can carry (the control link's record buffer).
inline constexpr std::uint32_t kMaxDescriptorsPerMessage = 64;

/// How a sender carries messages.
enum class SendPath {
  /// By size: writev below copy_threshold_bytes, vmsplice from there, and objects of
  /// shared_memory_threshold_bytes or more built in the shared-memory arena.
  automatic,
  /// Always through the pipe by writev (the kernel copies the bytes into the pipe).
  copy,
  /// Always through the pipe by vmsplice (the pipe references the pool's pages).
  vmsplice,
  /// Every message built in the shared-memory arena, only a descriptor on the pipe —
  /// whenever the peer reads such messages (otherwise as `automatic`).
  shared_memory,
};

/// How a sender keeps a write into a pipe whose reader has gone from killing the process
/// with SIGPIPE. Either way the send fails with PeerClosed, and the library never
/// changes the process's signal dispositions.
enum class SigpipeSafety {
  /// Before each batch of writes, ask the kernel whether the process ignores SIGPIPE (one
  /// system call); if it does not, block SIGPIPE in the writing thread around the batch
  /// and take the signal a broken pipe raised (two system calls, and the question is not
  /// asked again for a second). Safe whatever the process does with SIGPIPE between
  /// batches; a thread that sets SIGPIPE back to its default while another thread's batch
  /// is being written (after its question) leaves that one batch unprotected.
  automatic,
  /// The application ignores SIGPIPE (`signal(SIGPIPE, SIG_IGN)`, as most servers do) and
  /// keeps it ignored: writes cost no system call for it. Checked when the sender is
  /// made (InvalidArgument if SIGPIPE is not ignored then); setting SIGPIPE back to its
  /// default later lets a reader that dies kill the process.
  process_ignores,
};

/// Options of the sending side of a channel.
struct SenderOptions {
  /// Page-aligned pool the sender builds messages in. Kept small on purpose: a pool
  /// that stays in cache is faster than a large one (measured: README, Tuning).
  std::size_t pool_bytes = 4 * MiB;
  /// Pool for OutgoingMessage::allocate_data() buffers (mapped on first use).
  std::size_t data_pool_bytes = 4 * MiB;
  /// Messages smaller than this go by writev, larger ones by vmsplice. Measured with
  /// `capnsplice-bench --threshold-sweep` (README "Tuning"): vmsplice streamed faster
  /// from 768 B up (1.28x at 1 KiB, 1.8x at 4 KiB) and round trips tied at 4 KiB.
  std::size_t copy_threshold_bytes = 1 * KiB;
  SendPath path = SendPath::automatic;
  /// Memory requests of at least this many bytes — a large payload, a large list — are
  /// served from a shared-memory arena, and the message travels as a small descriptor
  /// that the receiver follows into the arena: no copy at all, whatever the size. Only
  /// used when the peer is capnsplice and said it reads such messages. 0: never.
  /// Measured like copy_threshold_bytes: the arena streamed faster than vmsplice from
  /// 128 KiB up (1.4x there, 2x from 384 KiB) and tied at 64 KiB.
  std::size_t shared_memory_threshold_bytes = 128 * KiB;
  /// Size of that arena: a sparse memfd, whose pages become resident as messages first
  /// use them and stay so (reused by later messages) until the arena is replaced or has
  /// been idle for arena_idle_retire_after — the seal that keeps the receiver from
  /// writing it also keeps the sender from punching holes, so arenas go whole.
  std::size_t arena_bytes = std::size_t{2} << 30;
  /// How much of that arena may stay resident while it is idle. Once the arena's
  /// footprint (the high-water mark of its use) has passed this, and is more than twice
  /// what its last busy spell needed at once, the next object for the arena, asked for
  /// while no block of it is held for the reader or being built, goes to a fresh arena
  /// and the old one is dropped: its pages go back to the kernel once the reader lets go
  /// of it too. (A stream of messages larger than this reuses its pages and keeps them.)
  /// Half of it also bounds the bytes a sender holds in the arena for the reader at
  /// once (a larger message goes alone): beyond that, sending waits for the reader. A fresh arena costs faulting its pages in again
  /// (~0.65 ms per MiB on both sides here, seven times the cost of sending the bytes),
  /// so this stays above what a stream keeps in flight: a sender may run several
  /// messages ahead, and streams of 16 MiB messages were measured holding up to 80 MiB
  /// on a busy machine (at 64 MiB they were replaced again and again, 3x slower).
  /// Raise it for streams of larger messages.
  std::size_t arena_keep_bytes = 128 * MiB;
  /// An arena that has been idle this long (nothing held or being built) is dropped,
  /// whatever its footprint: a burst of large messages followed by small ones, or by
  /// none, gives its pages back. The process's trimmer thread looks every 250 ms, so it
  /// happens without any call on the channel; the peer lets go of its mapping when its
  /// trimmer (or its next receive with nothing to read) sees the retirement.
  std::chrono::milliseconds arena_idle_retire_after{1000};
  /// When the pipe is full, keep checking for room this long before sleeping until the
  /// reader frees some: a large message then streams without a sleep and wake-up for
  /// every pipeful. Zero: sleep at once.
  std::chrono::nanoseconds spin_before_block = std::chrono::microseconds(100);
  /// How long send(), flush(), close() and building a message in a full pool may wait
  /// for the reader when the caller gives no deadline. The default lets a hung peer hold
  /// a blocking caller 10 s at most (then Timeout; nothing is lost or cut). Empty: wait as
  /// long as it takes, until the peer reads or closes — only when the caller asked for it.
  std::optional<std::chrono::nanoseconds> send_timeout = std::chrono::seconds(10);
  /// Bound of the outgoing queue: bytes taken by send/try_send/queue and not yet in the
  /// pipe. A message that would start above it is refused (SendStatus::queue_full,
  /// Overloaded) and stays the caller's; one message larger than the bound alone is taken.
  std::size_t max_unsent_bytes = 16 * MiB;
  /// How writes stay safe from SIGPIPE (see SigpipeSafety).
  SigpipeSafety sigpipe = SigpipeSafety::automatic;
  /// Ring a doorbell after every write: a counter in a page of shared memory, offered to
  /// the peer over the control link with the first write, so that a peer receiver that
  /// spins (ReceiverOptions::doorbell) watches memory instead of asking the kernel. Costs
  /// a page, the control link's two descriptors (made then if not yet) and three atomic
  /// operations per write; off by default, as most channels do not spin. Needs a capnsplice peer
  /// (a control link): with none it does nothing.
  bool doorbell = false;
};

/// Options of the receiving side of a channel.
struct ReceiverOptions {
  /// Page-aligned ring that incoming bytes land in and messages are read from in
  /// place. Larger messages are still received whole, in their own buffer.
  std::size_t buffer_bytes = 4 * MiB;
  /// Before a blocking receive goes to sleep in the kernel, it keeps trying to read for
  /// this long: a reply that comes back within it costs no wake-up (tens of µs here).
  /// An idle receiver sleeps after this and uses no CPU. Zero: block at once.
  std::chrono::nanoseconds spin_before_block = std::chrono::microseconds(100);
  /// Spin on the peer's doorbell (SenderOptions::doorbell) when it offers one: the spin of
  /// a blocking receive, and try_receive() when the pipe was empty and nothing rang since,
  /// cost no system call (try_receive() still reads the pipe once every 1024 such looks,
  /// for writers that do not ring and for the end of the stream). Until a doorbell came,
  /// looks for one on the control link at most once a millisecond while it waits.
  bool doorbell = false;
  ReceiveLimits limits;
};

/// Options of a channel: both directions plus the pipes.
struct ChannelOptions {
  /// Appears in every error message of the channel.
  std::string name = "channel";
  /// Capacity a pipe the channel made is raised to (F_SETPIPE_SZ), once, by its sender:
  /// the first time a write finds it full or a frame is larger than the kernel's default
  /// (64 KiB). Until then it costs the user's pipe budget (pipe-user-pages-soft, 64 MiB)
  /// only the default; an idle channel never takes more. 0: 1 MiB (the measured sweet
  /// spot) or /proc/sys/fs/pipe-max-size if lower. Below 64 KiB: set at creation. A
  /// refusal (budget spent, above pipe-max-size without CAP_SYS_RESOURCE) leaves the pipe
  /// as it was, SenderStats::pipe_raise_refused says so. Descriptors given to from_fds()
  /// are the application's and never resized.
  std::size_t pipe_bytes = 0;
  SenderOptions sender;
  ReceiverOptions receiver;

  ChannelOptions& with_name(std::string value) { name = std::move(value); return *this; }
  ChannelOptions& with_pipe_bytes(std::size_t value) { pipe_bytes = value; return *this; }
  ChannelOptions& with_pool_bytes(std::size_t value) { sender.pool_bytes = value; return *this; }
  ChannelOptions& with_receive_buffer_bytes(std::size_t value) {
    receiver.buffer_bytes = value;
    return *this;
  }
  ChannelOptions& with_copy_threshold_bytes(std::size_t value) {
    sender.copy_threshold_bytes = value;
    return *this;
  }
  ChannelOptions& with_send_path(SendPath value) { sender.path = value; return *this; }
  ChannelOptions& with_shared_memory_threshold_bytes(std::size_t value) {
    sender.shared_memory_threshold_bytes = value;
    return *this;
  }
  ChannelOptions& with_arena_bytes(std::size_t value) {
    sender.arena_bytes = value;
    return *this;
  }
  ChannelOptions& with_arena_keep_bytes(std::size_t value) {
    sender.arena_keep_bytes = value;
    return *this;
  }
  ChannelOptions& with_arena_idle_retire_after(std::chrono::milliseconds value) {
    sender.arena_idle_retire_after = value;
    return *this;
  }
  ChannelOptions& with_send_timeout(std::chrono::nanoseconds value) {
    sender.send_timeout = value;
    return *this;
  }
  /// Sends, flushes and closes wait for the reader as long as it takes.
  ChannelOptions& without_send_timeout() {
    sender.send_timeout.reset();
    return *this;
  }
  ChannelOptions& with_max_unsent_bytes(std::size_t value) {
    sender.max_unsent_bytes = value;
    return *this;
  }
  ChannelOptions& with_sigpipe(SigpipeSafety value) {
    sender.sigpipe = value;
    return *this;
  }
  ChannelOptions& with_max_message_bytes(std::size_t value) {
    receiver.limits.max_message_bytes = value;
    return *this;
  }
  /// How long both directions poll before sleeping (see the two fields).
  ChannelOptions& with_spin_before_block(std::chrono::nanoseconds value) {
    sender.spin_before_block = value;
    receiver.spin_before_block = value;
    return *this;
  }
  /// Both directions ring a doorbell and spin on the peer's (the two `doorbell` fields):
  /// for ends that busy-poll or answer within spin_before_block.
  ChannelOptions& with_doorbell(bool value = true) {
    sender.doorbell = value;
    receiver.doorbell = value;
    return *this;
  }
  ChannelOptions& with_max_segments(std::uint32_t value) {
    receiver.limits.max_segments = value;
    return *this;
  }
  /// The descriptors this end takes: per message (0: none) and waiting in all.
  ChannelOptions& with_descriptor_limits(std::uint32_t per_message, std::uint32_t waiting) {
    receiver.limits.max_descriptors_per_message = per_message;
    receiver.limits.max_descriptors_waiting = waiting;
    return *this;
  }
};

}  // namespace capnsplice
