// The sender's machinery behind capnsplice::Sender (internal).
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
#include "capnsplice/unique_fd.h"
#include "pipe_io.h"
#include "pooled_message_builder.h"
#include "segment_pool.h"
#include "shared_path.h"

namespace capnsplice::detail {

class SenderCore final : public ConsumptionSource {
 public:
  /// `link` (may be null) is the channel end's control link; with it, large messages can
  /// take the shared-memory path.
  SenderCore(UniqueFd fd, SenderOptions options, std::string context,
             std::shared_ptr<ControlLink> link = nullptr);
  ~SenderCore() override;

  /// Connects the pool to this core; call once, right after construction.
  void attach_pool(const std::shared_ptr<SenderCore>& self) {
    pool_->attach(self);
    data_pool_->attach(self);
    if (shared_) shared_->attach(self);
  }

  OutgoingMessage new_message();

  /// Adds the message to the batch; writes the batch once it is large.
  void queue(OutgoingMessage&& message, Deadline deadline);

  /// Writes every queued message.
  void flush(Deadline deadline);

  /// Writes a copy of `segments` right away (after the queued messages).
  void send_copy(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments, Deadline deadline);

  void close();

  int fd() const noexcept { return fd_.get(); }
  bool has_queued() const noexcept { return queued_frames_.load(std::memory_order_relaxed) != 0; }
  const SenderOptions& options() const noexcept { return options_; }
  SenderStats stats() const;

  // ConsumptionSource
  std::uint64_t consumed_bytes() override;
  bool flush_queued(Deadline deadline) override;
  void wait_for_reader(Deadline deadline) override;
  void require_reader() override;

 private:
  struct QueuedFrame {
    /// The frame's memory; for a descriptor, the message it describes (its pool chunks
    /// go back once the descriptor is written); null for a copy of foreign segments.
    std::unique_ptr<PooledMessageBuilder> builder;
    std::size_t bytes;
    std::size_t iov_end;  // one past the frame's last entry in gather_
    WriteMethod method;
    std::optional<std::uint64_t> shared_id;  // a descriptor: its arena message
  };

  WriteMethod choose_method(std::size_t frame_bytes) const noexcept;
  void ensure_open() const;
  /// Sends `message`, built partly in the shared-memory arena, as a descriptor.
  void send_shared(std::unique_ptr<PooledMessageBuilder> message, Deadline deadline);
  /// Queues a copy of `segments` (with `owner` and `shared_id` for its QueuedFrame) and
  /// writes the whole queue now, by copy: `segments` need not outlive the call.
  void write_copy_now(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                      std::unique_ptr<PooledMessageBuilder> owner,
                      std::optional<std::uint64_t> shared_id, Deadline deadline);
  /// Writes the queue (the lock is held).
  void flush_locked(Deadline deadline);
  /// Writes queued_[done..) while they share a method. Moves `done` past every frame
  /// written whole and keeps `partial_bytes` (bytes of queued_[done] already in the pipe)
  /// up to date as it goes, so that both are right when it throws: the frames after
  /// `done` are untouched, the one at `done` may be referenced by the pipe.
  void write_run(std::size_t& done, Deadline deadline, SigpipeGuard& guard,
                 std::size_t& partial_bytes);
  /// Gives a written frame's chunks back; `stream_end` is the stream offset after it.
  void retire(QueuedFrame& frame, std::uint64_t stream_end);
  /// After a failed flush: returns every chunk safely and empties the queue.
  void abandon_queue(std::size_t first_unwritten, std::size_t partial_bytes);
  void clear_queue() noexcept;
  /// Why the descriptor was closed: what a later send is told.
  enum class ClosedBy { caller, peer, cut };
  void close_locked(ClosedBy why);
  /// Whether the pipe takes a write now, without waiting; PeerClosed when its read end
  /// is closed.
  bool pipe_has_room_locked();

  UniqueFd fd_;
  const SenderOptions options_;
  const std::string context_;
  const bool pipe_;
  std::shared_ptr<SegmentPool> pool_;       // Cap'n Proto segments, kept zeroed
  std::shared_ptr<SegmentPool> data_pool_;  // buffers from allocate_data(), not zeroed
  std::shared_ptr<SharedSender> shared_;    // null without a control link
  /// Bytes written into the pipe since the start: the consumed figure's reference.
  std::atomic<std::uint64_t> written_{0};

  mutable std::mutex mutex_;  // guards everything below and the descriptor's use
  std::vector<iovec> gather_;
  std::vector<QueuedFrame> queued_;
  std::size_t queued_bytes_ = 0;
  std::atomic<std::size_t> queued_frames_{0};
  SenderStats stats_;
  ClosedBy closed_by_ = ClosedBy::caller;
};

}  // namespace capnsplice::detail
