// The sender's machinery behind capnsplice::Sender (internal): sender_core.cc takes
// messages into the queue, sender_writes.cc writes the queue into the pipe.
//
// Messages are queued as entries of one gather list and written by flush(): a run of
// consecutive messages sharing a write method goes out in one system call.
//
//   gather_:  [ table+seg0 | seg1 ][ table+seg0 ][ table+seg0 | seg1 | seg2 ] ...
//             <-- frame 0 ------->< frame 1 --><-- frame 2 ------------->
//   queued_:  { builder, bytes, iov_end, method } per frame, owning the pool chunks
//
// After a frame is written its chunks go back to the pool: at once for copies, once
// the reader has consumed the frame for splices.
//
// A deadline never cuts a frame: what the pipe did not take stays queued, the entries
// of a frame written in part advanced past what went out (partial_bytes_), and the next
// write goes on from there. Bytes a caller may reuse once a call returns (a copy of
// foreign segments, a descriptor built on the stack) are copied into the frame's own
// buffer before they are left queued.
//
// Data flows one way; nothing below calls back into the sender:
//
//   SenderCore ──owns──> BuildingMemory: SegmentPool (segments), SegmentPool (data),
//        │                    │          SharedSender, FlushQueued (a weak "write what
//        │                    │          is queued" of this core)        │
//        └─ reports written ──┴─────────> ReaderProgress <─── asks ──────┘
//                                    (fd, bytes written, FIONREAD)
//   OutgoingMessage ──> PooledMessageBuilder ──shares──> BuildingMemory, and hands the
//                       pools and SharedSender its FlushQueued as it allocates
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "capnsplice/options.h"
#include "capnsplice/outgoing_message.h"
#include "capnsplice/sender.h"
#include "attachment.h"
#include "capnsplice/unique_fd.h"
#include "doorbell.h"
#include "pipe_capacity.h"
#include "pipe_io.h"
#include "pooled_message_builder.h"
#include "reader_progress.h"
#include "segment_pool.h"
#include "shared_descriptor.h"
#include "shared_sender.h"

namespace capnsplice::detail {

class SenderCore final {
 public:
  /// `link` (may be null) is the channel end's control link; with it, large messages can
  /// take the shared-memory path.
  /// `facts` (null: probed here) describes `fd`; a raisable pipe gets a PipeCapacity.
  /// A core lives in a shared_ptr: the messages it hands out flush it through a weak
  /// reference (flush_queued.h).
  static std::shared_ptr<SenderCore> make(UniqueFd fd, SenderOptions options,
                                          std::string context,
                                          std::shared_ptr<ControlLink> link = nullptr,
                                          const DescriptorFacts* facts = nullptr);

  /// make() only (std::make_shared needs a public constructor).
  struct MadeByMake {
    explicit MadeByMake() = default;
  };
  SenderCore(MadeByMake, UniqueFd fd, SenderOptions options, std::string context,
             std::shared_ptr<ControlLink> link, const DescriptorFacts* facts);
  ~SenderCore();

  /// `deadline`: how long building may wait for pool or arena room; empty: send_timeout
  /// per request.
  OutgoingMessage new_message(std::optional<Deadline> deadline);

  /// Takes `message` into the queue, and writes the batch as far as the pipe takes it
  /// without waiting once it is large. Returns false, leaving `message` with the caller,
  /// when the queue holds max_unsent_bytes and the reader made no room by `room_deadline`.
  bool queue(OutgoingMessage& message, Deadline room_deadline);

  /// queue() and then flush(), both until `deadline`; a pipe frame takes the lock once
  /// for both. queue_full leaves `message` with the caller, as queue() does.
  SendStatus send(OutgoingMessage& message, Deadline deadline);

  /// Writes queued messages until none is left (true) or `deadline` passes (false: the
  /// rest stays queued whole).
  bool flush(Deadline deadline);

  /// Writes queued messages, if any, until `deadline`, for a builder whose pool or arena
  /// is full of their memory (FlushQueued). Returns whether any bytes were written.
  bool flush_queued(Deadline deadline);

  /// Queues a copy of `segments` and writes the queue until `deadline`. False: the copy
  /// stays queued (it owns its bytes). Refuses (Overloaded) when the queue is full.
  bool send_copy(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments, Deadline deadline);

  /// Writes the queue (false at `deadline`: nothing closed, the queue kept), then closes.
  bool close(Deadline deadline);

  /// See Sender::watch_with.
  void watch_with(int epoll_fd);
  /// Brings the watcher's EPOLLOUT registration in step with the queue (after queue()).
  void sync_watch();

  int fd() const noexcept { return fd_.get(); }
  bool has_queued() const noexcept { return queued_frames_.load(std::memory_order_relaxed) != 0; }
  std::size_t unsent_bytes() const noexcept { return unsent_.load(std::memory_order_relaxed); }
  std::uint64_t written_messages() const noexcept {
    return written_messages_.load(std::memory_order_acquire);
  }
  const SenderOptions& options() const noexcept { return options_; }
  const std::string& context() const noexcept { return context_; }
  SenderStats stats() const;

 private:
  struct QueuedFrame {
    /// The frame's memory; for a descriptor, the message it describes (its pool chunks
    /// go back once the descriptor is written); null for a copy of foreign segments.
    std::unique_ptr<PooledMessageBuilder> builder;
    std::size_t bytes;
    std::size_t iov_end;  // one past the frame's last entry in gather_
    WriteMethod method;
    std::optional<std::uint64_t> shared_id;  // a descriptor: its arena message
    /// The unwritten bytes of a frame whose memory was the caller's (see own_last_frame).
    std::vector<std::byte> own_bytes{};
  };

  WriteMethod choose_method(std::size_t frame_bytes) const noexcept;
  void ensure_open() const;
  /// Whether a frame of `bytes` may join the queue; writes what the pipe takes (until
  /// `deadline`) to make room. One frame is always let into an empty queue.
  bool make_room_locked(std::size_t bytes, Deadline deadline);
  /// Queues `message`, built partly in the shared-memory arena, as a descriptor, like
  /// any frame: written with the batch (or by flush()). Waits for arena room until
  /// `deadline` (SharedSender::describe), then throws Overloaded with `message` whole.
  void queue_shared(OutgoingMessage& message, Deadline deadline);
  /// Queues `segments` (with `owner` and `shared_id` for its QueuedFrame), which need not
  /// outlive the call: with `write_until`, writes the queue until then and copies what
  /// the pipe did not take; without, copies the frame and leaves it to the batch
  /// (write_if_batch_full_locked, told `described_bytes`). Returns whether the queue was
  /// written.
  /// With `attachment`, the frame carries the descriptors of that record (attachment.h).
  bool append_copy(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                   std::unique_ptr<PooledMessageBuilder> owner,
                   std::optional<std::uint64_t> shared_id, std::optional<Deadline> write_until,
                   std::size_t described_bytes = 0,
                   std::optional<AttachmentInfo> attachment = std::nullopt);
  /// Puts the descriptors attached to `message` on the control link, ahead of its frame,
  /// once: a message that comes back (queue full) keeps the record's number. Waits until
  /// `deadline` for the peer to say it takes descriptors and for room on the link; then
  /// Timeout, with the message and its descriptors untouched.
  void send_descriptors_ahead(OutgoingMessage& message, Deadline deadline);
  /// `message`'s frame, which names its record, is queued: nothing to cancel any more.
  static void descriptors_queued(OutgoingMessage& message) noexcept;
  /// The record `message`'s frame names, if it carries descriptors.
  static std::optional<AttachmentInfo> attachment_of(const OutgoingMessage& message) noexcept;
  /// Writes what the pipe takes now once the queue holds a batch (the lock is held). A
  /// descriptor just queued counts with the `described_bytes` of its message.
  void write_if_batch_full_locked(std::size_t described_bytes = 0);
  /// Appends one frame's entries and bookkeeping to the queue (the lock is held).
  void append_locked(QueuedFrame frame_without_entries, std::byte* table, std::size_t table_bytes,
                     bool table_adjacent,
                     kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments);
  /// Copies the unwritten bytes of the last queued frame into its own buffer.
  void own_last_frame();
  /// Writes the queue until it is empty (true) or `deadline` passes (false, the rest kept
  /// whole). On any other failure drops the queue, closes if a frame was cut, and throws.
  bool write_queue_locked(Deadline deadline);
  /// write_queue_locked(), then the watcher learns whether bytes still wait.
  bool flush_locked(Deadline deadline);
  /// queue() (then_flush false: queued or queue_full) or send().
  SendStatus take(OutgoingMessage& message, Deadline deadline, bool then_flush);
  /// Writes queued_[done..) while they share a method, until the run is written (true) or
  /// the deadline passes (false). Moves `done` past every frame written whole and keeps
  /// partial_bytes_ up to date, so that both are right when it returns or throws.
  bool write_run(std::size_t& done, Deadline deadline, SigpipeGuard& guard, IovCursor& cursor);
  /// Drops the first `done` frames (written) and the gather entries before `resume`.
  void drop_written(std::size_t done, const iovec* resume);
  /// Gives a written frame's chunks back; `stream_end` is the stream offset after it.
  void retire(QueuedFrame& frame, std::uint64_t stream_end);
  /// After a failed write: returns every chunk safely and empties the queue.
  void abandon_queue(std::size_t first_unwritten);
  void clear_queue() noexcept;
  void update_counts_locked() noexcept;
  /// Keeps the watcher's EPOLLOUT registration in step with the queue.
  void update_watch_locked() noexcept;
  /// Makes the doorbell and offers it to the peer, until the link took it; gives up
  /// (no doorbell, SenderStats::doorbell false) when either fails for another reason
  /// than a full link.
  void offer_doorbell_locked() noexcept;
  /// Why the descriptor was closed: what a later send is told.
  enum class ClosedBy { caller, peer, cut };
  void close_locked(ClosedBy why);
  /// What a call on this end is told once it is closed (closed_by_).
  Error closed_error() const;

  UniqueFd fd_;
  const SenderOptions options_;
  const std::string context_;
  const DescriptorFacts facts_;
  /// Bytes written into the pipe, and how far its reader got: what the pools ask.
  const std::shared_ptr<ReaderProgress> progress_;
  /// The channel end's control link (null without one): descriptors go there.
  const std::shared_ptr<ControlLink> link_;
  std::atomic<std::uint64_t> descriptor_records_{0};  // Descriptors records sent
  std::atomic<std::uint64_t> next_descriptor_sequence_{1};
  /// The pools and arena its messages are built from, shared with their builders; its
  /// flush_queued is set by make(), before any message is.
  const std::shared_ptr<BuildingMemory> memory_;

  mutable std::mutex mutex_;  // guards everything below and the descriptor's use
  /// With SenderOptions::doorbell: the link to offer the doorbell on, until it took it.
  /// Declared after memory_: the constructor copies the link into memory_, then moves it
  /// here.
  std::shared_ptr<ControlLink> doorbell_link_;
  std::unique_ptr<DoorbellWriter> doorbell_;  // made by the first write that offers it
  std::uint32_t doorbell_offers_ = 0;         // offers the link could not take
  std::vector<iovec> gather_;
  std::vector<QueuedFrame> queued_;
  std::size_t queued_bytes_ = 0;
  std::size_t partial_bytes_ = 0;  // bytes of queued_[0] already in the pipe
  // Descriptors queued since the queue was last written, and the bytes they describe.
  std::size_t descriptors_since_write_ = 0;
  std::size_t described_since_write_ = 0;
  std::atomic<std::size_t> queued_frames_{0};
  std::atomic<std::size_t> unsent_{0};               // queued_bytes_ - partial_bytes_
  std::atomic<std::uint64_t> written_messages_{0};  // frames written whole
  int watch_epoll_ = -1;   // Sender::watch_with
  std::atomic<bool> has_watcher_{false};  // watch_epoll_ >= 0, read without the lock
  bool watching_ = false;  // fd_ is registered in watch_epoll_
  SenderStats stats_;
  PipeCapacity capacity_;  // raised once, when a write finds the pipe full
  ClosedBy closed_by_ = ClosedBy::caller;
  /// fd_ was closed (close_locked), read without the lock: a send on a closed end must
  /// throw before it takes the message.
  std::atomic<bool> closed_{false};
};

}  // namespace capnsplice::detail
