#include "segment_pool.h"

#include <algorithm>
#include <cstring>

#include "capnsplice/error.h"

namespace capnsplice::detail {

struct DedicatedBlock {
  MappedMemory memory;
  std::size_t dirty_bytes = 0;
  std::uint64_t stream_end = 0;
  bool in_flight = false;
};

namespace {

constexpr std::size_t kWordBytes = 8;
/// Reclaimed dedicated mappings kept for reuse.
constexpr std::size_t kMaxSpareBlocks = 2;

}  // namespace

SegmentPool::SegmentPool(std::size_t capacity, std::shared_ptr<ReaderProgress> progress,
                         std::string context, Zeroing zeroing, std::size_t greedy_limit)
    : capacity_(round_up(std::max<std::size_t>(capacity, std::size_t{64} * 1024), page_size())),
      context_(std::move(context)),
      zeroing_(zeroing),
      greedy_limit_(greedy_limit != 0 ? std::min(greedy_limit, capacity_ / 2) : capacity_ / 2),
      progress_(std::move(progress)) {}

void SegmentPool::clear(std::byte* data, std::size_t& dirty_bytes) const {
  if (zeroing_ == Zeroing::zeroed && dirty_bytes != 0) std::memset(data, 0, dirty_bytes);
  dirty_bytes = 0;
}

SegmentPool::~SegmentPool() { unschedule(); }

std::size_t SegmentPool::greedy_floor() const noexcept {
  // A greedy chunk smaller than this is not worth starting a message in while waiting
  // for the reader could give a larger one.
  return std::min<std::size_t>(std::size_t{64} * 1024, capacity_ / 4);
}

bool SegmentPool::query_and_reclaim() {
  const std::optional<std::uint64_t> consumed = progress_->consumed_bytes();
  if (!consumed) return false;
  ++stats_.consumption_queries;
  spliced_since_query_ = 0;
  reclaim(*consumed);
  return true;
}

PoolStats SegmentPool::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

SegmentPool::RingChunk& SegmentPool::ring_chunk(std::uint64_t id) {
  return chunks_[static_cast<std::size_t>(id - first_id_)];
}

void SegmentPool::zero_dirty(RingChunk& chunk) {
  clear(ring_.data() + chunk.begin % capacity_, chunk.dirty_bytes);
}

bool SegmentPool::oldest_chunk_in_flight() const {
  return !chunks_.empty() && chunks_.front().state == State::in_flight;
}

Chunk SegmentPool::allocate(std::size_t min_bytes, bool greedy, Deadline deadline,
                            const FlushQueued& flush_queued) {
  min_bytes = round_up(std::max<std::size_t>(min_bytes, kWordBytes), kWordBytes);
  schedule();
  std::unique_lock lock(mutex_);
  if (min_bytes > capacity_ / 2) {
    // Too large for the ring. Let earlier large messages the reader has finished with
    // come back first, so their mappings are reused rather than new ones faulted in.
    const bool large_in_flight = std::any_of(dedicated_.begin(), dedicated_.end(),
                                             [](const auto& block) { return block->in_flight; });
    if (large_in_flight) query_and_reclaim();
    return allocate_dedicated(min_bytes);
  }
  if (!ring_) {
    ring_ = MappedMemory::anonymous(capacity_, MappedMemory::HugePages::later, context_);
  }
  use_huge_pages_once_streaming();

  // Take spliced chunks back in batches of a quarter ring: left until the ring is full,
  // a whole ring's worth came back at once and was zeroed in one go (4 KiB round trips:
  // p99.9 600 µs, now 137 µs; p99 unchanged at 12.6 µs; smaller batches, an eighth or
  // less, raised p99 to 21-34 µs). One FIONREAD (~0.4 µs) per batch is cheap.
  if (spliced_since_query_ >= capacity_ / 4) query_and_reclaim();
  const std::size_t wanted = greedy ? std::max(min_bytes, greedy_floor()) : min_bytes;
  // A caller that may not wait at all (an event loop) gets fresh memory where the ring is
  // full: what it holds is bounded by the sender's outgoing queue limit instead.
  const bool never_wait = deadline.expired();
  bool flushed = false;
  Chunk chunk;
  for (;;) {
    if (try_ring(wanted, greedy, chunk)) return chunk;
    if (!flushed) {
      // Queued messages hold chunks that only come back once written: write them.
      flushed = true;
      lock.unlock();
      const bool wrote = flush_queued(deadline);
      lock.lock();
      if (wrote) continue;
    }
    if (!oldest_chunk_in_flight()) break;
    // Only now ask the kernel: FIONREAD costs a system call, so the pool runs on its
    // cached figure until it actually needs space. Nothing to wait for once the pipe
    // is closed.
    if (!query_and_reclaim()) break;
    if (try_ring(wanted, greedy, chunk)) return chunk;
    if (!oldest_chunk_in_flight() || never_wait) break;
    if (deadline.expired()) {
      throw Error(ErrorCode::Timeout, context_,
                  "the send pool (" + std::to_string(capacity_) +
                      " bytes) is full of bytes the reader has not consumed, and the "
                      "deadline passed");
    }
    ++stats_.waits_for_reader;
    lock.unlock();
    progress_->wait_for_reader(deadline);
    lock.lock();
  }
  // Waiting cannot help (builders hold the ring, or no reader to wait for): a greedy
  // request settles for any run that fits, then a dedicated mapping.
  if (greedy && try_ring(min_bytes, /*greedy=*/true, chunk)) return chunk;
  return allocate_dedicated(wanted);
}

bool SegmentPool::try_ring(std::size_t wanted, bool greedy, Chunk& out) {
  reclaim(last_consumed_);
  const std::uint64_t used = head_ - tail_;
  const std::size_t free_total = capacity_ - static_cast<std::size_t>(used);
  const std::size_t head_offset = static_cast<std::size_t>(head_ % capacity_);
  // Free space is one run from head to the ring's end, then one run from the ring's
  // start up to tail.
  const std::size_t run_at_head = std::min(capacity_ - head_offset, free_total);
  const std::size_t run_after_wrap = free_total - run_at_head;

  bool wrap;
  if (greedy) {
    if (std::max(run_at_head, run_after_wrap) < wanted) return false;
    wrap = run_after_wrap > run_at_head;
  } else if (run_at_head >= wanted) {
    wrap = false;
  } else if (run_after_wrap >= wanted) {
    wrap = true;
  } else {
    return false;
  }
  if (wrap) {
    // The rest of the ring becomes a filler chunk, free at once, so it comes back
    // in order when the tail reaches it.
    chunks_.push_back({head_, head_ + run_at_head, 0, 0, State::free});
    head_ += run_at_head;
  }
  const std::size_t run = wrap ? run_after_wrap : run_at_head;
  // Greedy chunks stop at half the ring, leaving room for the next message while
  // this one is in flight.
  const std::size_t size = greedy ? std::max(wanted, std::min(run, greedy_limit_)) : wanted;
  chunks_.push_back({head_, head_ + size, size, 0, State::building});
  ++building_chunks_;
  out.data = ring_.data() + head_ % capacity_;
  out.bytes = size;
  out.id = first_id_ + chunks_.size() - 1;
  out.dedicated = nullptr;
  head_ += size;
  ++stats_.ring_allocations;
  return true;
}

Chunk SegmentPool::allocate_dedicated(std::size_t min_bytes) {
  ++stats_.dedicated_allocations;
  // Reuse a reclaimed mapping of a fitting size: not smaller, not wastefully larger.
  auto fits = [min_bytes](const auto& block) {
    const std::size_t size = block->memory.size();
    return size >= min_bytes && size <= std::max(4 * min_bytes, std::size_t{4} << 20);
  };
  std::unique_ptr<DedicatedBlock> block;
  if (auto spare = std::find_if(spare_.begin(), spare_.end(), fits); spare != spare_.end()) {
    block = std::move(*spare);
    spare_.erase(spare);
  } else {
    block = std::make_unique<DedicatedBlock>();
    block->memory =
        MappedMemory::anonymous(min_bytes,
                                min_bytes >= (2 << 20) ? MappedMemory::HugePages::advised
                                                       : MappedMemory::HugePages::never,
                                context_);
  }
  block->dirty_bytes = block->memory.size();
  block->in_flight = false;
  Chunk chunk{block->memory.data(), block->memory.size(), 0, block.get()};
  dedicated_.push_back(std::move(block));
  return chunk;
}

void SegmentPool::finish_building(const Chunk& chunk, std::size_t used_bytes) {
  std::lock_guard lock(mutex_);
  if (chunk.dedicated != nullptr) {
    chunk.dedicated->dirty_bytes = used_bytes;
    return;
  }
  RingChunk& ring = ring_chunk(chunk.id);
  ring.dirty_bytes = used_bytes;
  // Builders write from the start of a chunk: its first `used_bytes` are what it faulted in.
  touched_bytes_ = std::max(touched_bytes_, ring.begin % capacity_ + used_bytes);
  const bool newest = chunk.id == first_id_ + chunks_.size() - 1 && ring.end == head_;
  if (newest) {
    // Nothing after it: hand the unused (still zero) tail straight back.
    ring.end = ring.begin + round_up(used_bytes, kWordBytes);
    head_ = ring.end;
  }
}

void SegmentPool::release(const Chunk& chunk) {
  std::lock_guard lock(mutex_);
  if (chunk.dedicated != nullptr) {
    auto it = std::find_if(dedicated_.begin(), dedicated_.end(),
                           [&](const auto& block) { return block.get() == chunk.dedicated; });
    clear((*it)->memory.data(), (*it)->dirty_bytes);
    if (spare_.size() < kMaxSpareBlocks) spare_.push_back(std::move(*it));
    dedicated_.erase(it);
    return;
  }
  RingChunk& ring = ring_chunk(chunk.id);
  zero_dirty(ring);
  ring.state = State::free;
  --building_chunks_;
  reclaim(last_consumed_);
  use_huge_pages_once_streaming();
}

void SegmentPool::release_after(const Chunk& chunk, std::uint64_t stream_end) {
  std::lock_guard lock(mutex_);
  if (chunk.dedicated != nullptr) {
    chunk.dedicated->in_flight = true;
    chunk.dedicated->stream_end = stream_end;
    return;
  }
  RingChunk& ring = ring_chunk(chunk.id);
  ring.state = State::in_flight;
  ring.stream_end = stream_end;
  spliced_since_query_ += ring.end - ring.begin;
  --building_chunks_;
  // A batching stream always has messages queued when it allocates; the moment its
  // last queued message went into the pipe is when the ring can be re-faulted.
  use_huge_pages_once_streaming();
}

void SegmentPool::reclaim(std::uint64_t consumed) {
#ifdef CAPNSPLICE_TESTING_EARLY_RECLAIM
  // Deliberately broken build used only by the pitfall-detection test: treats every
  // byte as consumed the moment it is written, so vmspliced pages get reused (and
  // zeroed, and overwritten) while the pipe still references them.
  consumed = ~std::uint64_t{0};
#endif
  last_consumed_ = std::max(last_consumed_, consumed);
  while (!chunks_.empty()) {
    RingChunk& front = chunks_.front();
    if (front.state == State::building) break;
    if (front.state == State::in_flight) {
      if (front.stream_end > last_consumed_) break;
      zero_dirty(front);
    }
    tail_ = front.end;
    chunks_.pop_front();
    ++first_id_;
  }
  if (chunks_.empty()) {
    // Start over at the ring's beginning: the memory there is the most likely to be
    // in cache.
    head_ = tail_ = 0;
  }
  for (auto it = dedicated_.begin(); it != dedicated_.end();) {
    DedicatedBlock& block = **it;
    if (!block.in_flight || block.stream_end > last_consumed_) {
      ++it;
      continue;
    }
    clear(block.memory.data(), block.dirty_bytes);
    if (spare_.size() < kMaxSpareBlocks) spare_.push_back(std::move(*it));
    it = dedicated_.erase(it);
  }
}

bool SegmentPool::builder_holds_memory() const {
  return building_chunks_ != 0 ||
         std::any_of(dedicated_.begin(), dedicated_.end(),
                     [](const auto& block) { return !block->in_flight; });
}

bool SegmentPool::discard_ring() {
  if (!ring_ || building_chunks_ != 0) return false;
  ring_.discard(0, capacity_);
  for (RingChunk& chunk : chunks_) chunk.dirty_bytes = 0;
  touched_bytes_ = 0;
  return true;
}

void SegmentPool::move_ring_to_huge_pages() {
  // Faulted in again at once as huge pages, rather than left for khugepaged to collapse
  // some time later: zeroing 4 MiB once costs about what 1 ms of the stream does.
  if (!discard_ring()) return;
  ring_.advise_huge_pages(true);
  huge_pages_ = true;
}

bool SegmentPool::ring_uses_huge_pages() const {
  std::lock_guard lock(mutex_);
  return huge_pages_;
}

bool SegmentPool::trim_if_idle() noexcept {
  std::unique_lock lock(mutex_, std::try_to_lock);
  if (!lock.owns_lock()) return true;  // busy: not idle
  if (!idle_.quiet_for(stats_.ring_allocations + stats_.dedicated_allocations, kIdleTrimAfter)) {
    return true;
  }
  if (builder_holds_memory()) return true;  // a message being built: look again later
  if (discard_ring() && huge_pages_) {
    ring_.advise_huge_pages(false);  // a few messages later must not fault in 2 MiB
    huge_pages_ = false;
  }
  spare_.clear();
  for (auto& block : dedicated_) {  // all in flight: their pages are the pipe's now
    block->memory.discard(0, block->memory.size());
    block->dirty_bytes = 0;
  }
  return false;
}

}  // namespace capnsplice::detail
