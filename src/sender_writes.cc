// SenderCore, part two: writing the queue into the pipe (sender_core.h has the picture;
// sender_core.cc takes messages into the queue).
#include "sender_core.h"

#include <poll.h>

#include <climits>

#include "capnsplice/error.h"

namespace capnsplice::detail {

bool SenderCore::flush(Deadline deadline) {
  std::lock_guard lock(mutex_);
  return flush_locked(deadline);
}

bool SenderCore::flush_locked(Deadline deadline) {
  const bool written = write_queue_locked(deadline);
  update_watch_locked();
  return written;
}

bool SenderCore::flush_queued(Deadline deadline) {
  if (queued_frames_.load(std::memory_order_relaxed) == 0) return false;
  std::lock_guard lock(mutex_);
  if (queued_.empty()) return false;
  const std::uint64_t before = progress_->written();
  write_queue_locked(deadline);
  update_watch_locked();
  return progress_->written() != before;
}

bool SenderCore::write_queue_locked(Deadline deadline) {
  if (queued_.empty()) return true;
  ensure_open();
  descriptors_since_write_ = 0;
  described_since_write_ = 0;
  if (doorbell_link_) offer_doorbell_locked();
  SigpipeGuard guard(options_.sigpipe);  // one for the whole batch
  if (guard.masked()) ++stats_.sigpipe_masked_batches;
  std::size_t done = 0;
  IovCursor cursor{gather_.data(), gather_.size()};
  bool complete = true;
  try {
    while (done < queued_.size()) {
      if (!write_run(done, deadline, guard, cursor)) {
        complete = false;
        break;
      }
    }
  } catch (const Error& error) {
    const std::size_t total = queued_.size();
    const bool cut = partial_bytes_ != 0;
    abandon_queue(done);
    std::string detail = error.detail() + "; " + std::to_string(done) + " of " +
                         std::to_string(total) + " queued messages were written";
    ErrorCode code = error.code();
    if (cut) {
      // A frame cut in the middle by a failed system call can be neither finished nor
      // retracted: the channel is not intact, and every later send says so too.
      close_locked(code == ErrorCode::PeerClosed ? ClosedBy::peer : ClosedBy::cut);
      detail += "; the stream is cut mid-message, so this end stopped sending";
      if (code != ErrorCode::PeerClosed) code = ErrorCode::StreamCut;
    }
    throw Error(code, context_, detail, error.sys_errno());
  }
  if (complete) {
    clear_queue();
  } else {
    drop_written(done, cursor.iov);
  }
  return complete;
}

void SenderCore::offer_doorbell_locked() noexcept {
  // A link that stays full (a peer that never reads it) or a pair that cannot be made
  // is not asked again on every batch for ever.
  constexpr std::uint32_t kMaxDoorbellOffers = 64;
  try {
    if (!doorbell_) doorbell_ = DoorbellWriter::make(context_);
    if (!doorbell_link_->offer_doorbell(doorbell_->memfd().get())) {
      if (++doorbell_offers_ < kMaxDoorbellOffers) return;  // full: the next batch
      doorbell_.reset();
    } else {
      doorbell_->memfd().reset();  // the mapping keeps the page
    }
  } catch (...) {
    doorbell_.reset();  // out of descriptors or memory, a broken link: no doorbell
  }
  doorbell_link_.reset();
}

bool SenderCore::write_run(std::size_t& done, Deadline deadline, SigpipeGuard& guard,
                           IovCursor& cursor) {
  const WriteMethod method = queued_[done].method;
  std::size_t end = done;
  while (end < queued_.size() && queued_[end].method == method) ++end;
  const iovec* run_end = gather_.data() + queued_[end - 1].iov_end;
  IovCursor run{cursor.iov, static_cast<std::size_t>(run_end - cursor.iov)};
  while (!run.empty()) {
    // The whole run is offered unless it has more entries than one call takes.
    const bool offered_whole = run.count <= IOV_MAX;
    std::size_t written;
    {
      const DoorbellWriter::Write ringing(doorbell_.get());
      written = write_some(fd_.get(), method, run, context_, guard);
      ringing.rang(written);
    }
    if (written == 0) {
      if (capacity_.raise(fd_.get())) continue;  // the first time the pipe is full
      if (deadline.expired() ||
          spin_then_wait(fd_.get(), POLLOUT, options_.spin_before_block, deadline) ==
              WaitResult::timed_out) {
        cursor = run;
        return false;
      }
      continue;
    }
    ++stats_.writes;
    const std::uint64_t stream_end = progress_->wrote(written);
    run.advance(written);
    // A short write filled the pipe: raising it now lets the next write go on at once.
    const bool raised = offered_whole && !run.empty() && capacity_.raise(fd_.get());
    partial_bytes_ += written;
    while (done < end && partial_bytes_ >= queued_[done].bytes) {
      partial_bytes_ -= queued_[done].bytes;
      retire(queued_[done], stream_end - partial_bytes_);
      ++done;
    }
    // Past the deadline (a non-blocking call: try_send, try_flush), one write that the
    // pipe did not take whole is the end of it: a reader draining on another core would
    // otherwise keep this call writing megabytes, far past what "now" means.
    if (!run.empty() && !raised && deadline.expired()) {
      cursor = run;
      return false;
    }
  }
  cursor = run;
  return true;
}

void SenderCore::drop_written(std::size_t done, const iovec* resume) {
  const auto entries = static_cast<std::size_t>(resume - gather_.data());
  gather_.erase(gather_.begin(), gather_.begin() + static_cast<std::ptrdiff_t>(entries));
  for (std::size_t i = 0; i < done; ++i) queued_bytes_ -= queued_[i].bytes;
  queued_.erase(queued_.begin(), queued_.begin() + static_cast<std::ptrdiff_t>(done));
  for (QueuedFrame& frame : queued_) frame.iov_end -= entries;
  update_counts_locked();
}

void SenderCore::retire(QueuedFrame& frame, std::uint64_t stream_end) {
  ++stats_.messages;
  stats_.bytes += frame.bytes;
  if (frame.shared_id) {
    ++stats_.shared_messages;  // its descriptor went by copy or splice: not counted there
  } else if (frame.method == WriteMethod::copy) {
    ++stats_.copied_messages;
  } else {
    ++stats_.spliced_messages;
  }
  if (frame.method == WriteMethod::copy) {
    if (frame.builder) frame.builder->release_chunks();
  } else {
    frame.builder->release_chunks_after(stream_end);
  }
  frame.builder.reset();
  written_messages_.fetch_add(1, std::memory_order_release);
}

void SenderCore::abandon_queue(std::size_t first_unwritten) {
  for (std::size_t i = first_unwritten; i < queued_.size(); ++i) {
    QueuedFrame& frame = queued_[i];
    if (frame.shared_id) memory_->shared->abandon(*frame.shared_id);
    if (!frame.builder) continue;
    const bool referenced_by_pipe =
        i == first_unwritten && partial_bytes_ != 0 && frame.method == WriteMethod::vmsplice;
    if (referenced_by_pipe) {
      frame.builder->release_chunks_after(progress_->written());
    } else {
      frame.builder->release_chunks();
    }
  }
  clear_queue();
}

void SenderCore::clear_queue() noexcept {
  queued_.clear();
  gather_.clear();
  queued_bytes_ = 0;
  partial_bytes_ = 0;
  update_counts_locked();
}

void SenderCore::update_counts_locked() noexcept {
  queued_frames_.store(queued_.size(), std::memory_order_relaxed);
  unsent_.store(queued_bytes_ - partial_bytes_, std::memory_order_relaxed);
}

}  // namespace capnsplice::detail
