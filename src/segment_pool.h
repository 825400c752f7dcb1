// The sender's segment pool (internal): where outgoing messages are built.
//
// One page-aligned ring hands out chunks at `head` and takes them
// back at `tail`, in allocation order:
//
//        tail                                            head
//         v                                                v
//   ......[ sent, in the pipe ][ sent ][ filler ][ building ]..... free, all zero .....
//         ^ oldest chunk the pipe (or a builder) may still read
//
// A chunk comes back when its builder is dropped unsent, when it was sent by copy
// (writev returned), or when it was vmspliced and the reader has consumed every byte
// of it. Only the kernel is trusted for the last one: consumed = written − queued,
// where queued is ioctl(FIONREAD) on the pipe (reader_progress.h). Until then the
// chunk is never handed out again — bytes given to vmsplice must stay untouched.
//
// Free memory is kept zeroed, as Cap'n Proto's allocateSegment() requires: when a
// chunk comes back, the bytes that were written to it are cleared. A chunk is taken
// greedily (the largest contiguous free run, up to half the ring) so most messages
// are one segment; at send time the unused tail of the newest chunk is trimmed back.
//
// Memory follows traffic. The ring's pages are faulted in as chunks first use them, as
// small pages: a channel that carries a few messages costs a few pages. Once messages
// have been written across three quarters of it, the channel streams, and the ring is
// re-faulted as huge pages (MADV_HUGEPAGE: 64 KiB streams +25 %). After kIdleTrimAfter without an
// allocation the trimmer thread (idle_trimmer.h) gives every page back, in-flight ones
// included (the pipe keeps its own references to those), and the ring starts small again.
//
// Requests the ring cannot serve — larger than half of it, or while builders hold it —
// get a dedicated mapping, reclaimed by the same consumption rule. Up to two
// reclaimed dedicated mappings are kept for reuse, so a stream of large messages does
// not map and fault in fresh memory each time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "capnsplice/deadline.h"
#include "flush_queued.h"
#include "idle_trimmer.h"
#include "mapped_memory.h"
#include "reader_progress.h"

namespace capnsplice::detail {

/// A dedicated mapping for a request the ring could not serve.
struct DedicatedBlock;

/// One allocation handed to a message builder.
struct Chunk {
  std::byte* data = nullptr;
  std::size_t bytes = 0;
  /// Ring chunk id (when `dedicated` is null).
  std::uint64_t id = 0;
  DedicatedBlock* dedicated = nullptr;
};

/// Counters for tests and the benchmark.
struct PoolStats {
  std::uint64_t ring_allocations = 0;
  std::uint64_t dedicated_allocations = 0;
  std::uint64_t waits_for_reader = 0;
  std::uint64_t consumption_queries = 0;
};

class SegmentPool final : public Trimmable {
 public:
  /// Whether memory handed out is zero. Cap'n Proto segments need it; buffers the
  /// caller fills completely (OutgoingMessage::allocate_data) do not, and skip the pass.
  enum class Zeroing { zeroed, unzeroed };

  /// `capacity` bytes of ring, mapped on first use, for messages written into the pipe
  /// whose reader `progress` tells about. `context` names the channel in errors.
  /// Greedy chunks stop at `greedy_limit` (0: half the ring): a sender with a
  /// shared-memory path sets its threshold here, so that any object at least that large
  /// needs a segment of its own, which the shared path then serves.
  SegmentPool(std::size_t capacity, std::shared_ptr<ReaderProgress> progress,
              std::string context, Zeroing zeroing = Zeroing::zeroed,
              std::size_t greedy_limit = 0);
  ~SegmentPool();
  SegmentPool(const SegmentPool&) = delete;
  SegmentPool& operator=(const SegmentPool&) = delete;

  /// At least `min_bytes` of zeroed, 8-byte aligned memory. `greedy` takes the largest
  /// free run instead (for segments that will grow, trimmed at send). When the ring is
  /// full, has `flush_queued` write the messages whose chunks fill it, then waits for the
  /// reader while in-flight bytes are what fills it, until `deadline` (Timeout). Once the
  /// pipe is closed (ReaderProgress::close), chunks in flight are never reused and new
  /// requests the ring cannot serve get dedicated memory.
  Chunk allocate(std::size_t min_bytes, bool greedy, Deadline deadline,
                 const FlushQueued& flush_queued);

  /// The builder is done: only the first `used_bytes` were written. Gives the unused
  /// tail back when the chunk is the newest one.
  void finish_building(const Chunk& chunk, std::size_t used_bytes);

  /// The chunk may be reused (unsent, or sent by copy).
  void release(const Chunk& chunk);

  /// The chunk was vmspliced; reusable once the reader has consumed `stream_end` bytes.
  void release_after(const Chunk& chunk, std::uint64_t stream_end);

  std::size_t capacity() const noexcept { return capacity_; }
  PoolStats stats() const;

  /// After kIdleTrimAfter without an allocation, gives the ring's pages, the spare
  /// dedicated mappings and the pages of dedicated ones in flight back to the kernel;
  /// nothing while a builder holds memory. Called by the trimmer thread.
  bool trim_if_idle() noexcept override;

  /// Whether the ring is (to be) backed by huge pages: once a ring's worth went through it.
  bool ring_uses_huge_pages() const;

 private:
  enum class State : std::uint8_t { building, in_flight, free };
  struct RingChunk {
    std::uint64_t begin;  // monotonic ring position
    std::uint64_t end;
    std::size_t dirty_bytes;  // bytes from `begin` that may be non-zero
    std::uint64_t stream_end;
    State state;
  };

  /// Carves a chunk of at least `wanted` bytes (greedy: the larger free run, up to
  /// half the ring) out of the ring; false when no run is large enough.
  bool try_ring(std::size_t wanted, bool greedy, Chunk& out);
  std::size_t greedy_floor() const noexcept;
  Chunk allocate_dedicated(std::size_t min_bytes);
  /// Asks the kernel how far the reader got and takes back what it consumed. False when
  /// nobody can tell any more (the pipe was closed).
  bool query_and_reclaim();
  /// Takes back every chunk whose bytes the reader consumed (`consumed`).
  void reclaim(std::uint64_t consumed);
  /// True when waiting for the reader can free ring space: the oldest chunk is in flight.
  bool oldest_chunk_in_flight() const;
  RingChunk& ring_chunk(std::uint64_t id);
  bool builder_holds_memory() const;
  /// Gives the ring's pages back (none while a builder holds a ring chunk): they read as
  /// zeros again, so no chunk is dirty any more. Returns whether it did.
  bool discard_ring();
  /// A ring that builders wrote three quarters of belongs to a stream: huge pages.
  /// Asked on every allocation and release, so the test is inline.
  void use_huge_pages_once_streaming() {
    if (!huge_pages_ && touched_bytes_ >= capacity_ / 4 * 3) move_ring_to_huge_pages();
  }
  void move_ring_to_huge_pages();
  void zero_dirty(RingChunk& chunk);
  /// Clears the first `dirty_bytes` at `data` (when this pool keeps memory zeroed).
  void clear(std::byte* data, std::size_t& dirty_bytes) const;

  const std::size_t capacity_;
  const std::string context_;
  const Zeroing zeroing_;
  const std::size_t greedy_limit_;

  mutable std::mutex mutex_;
  MappedMemory ring_;
  std::deque<RingChunk> chunks_;  // allocation order; front has id first_id_
  std::uint64_t first_id_ = 0;
  std::uint64_t head_ = 0;
  std::uint64_t tail_ = 0;
  std::vector<std::unique_ptr<DedicatedBlock>> dedicated_;  // in use or in flight
  std::vector<std::unique_ptr<DedicatedBlock>> spare_;      // reclaimed, zeroed
  std::uint64_t last_consumed_ = 0;
  std::uint64_t spliced_since_query_ = 0;  // ring bytes put in flight since the last FIONREAD
  /// How far into the ring builders wrote since it was mapped or trimmed. A channel of
  /// requests and replies starts over at the ring's beginning whenever it is empty and
  /// keeps to its first pages; a stream runs through the whole ring.
  std::uint64_t touched_bytes_ = 0;
  /// Ring chunks being built or queued to be written (State::building): their bytes
  /// must not be discarded.
  std::size_t building_chunks_ = 0;
  bool huge_pages_ = false;
  IdleClock idle_;
  const std::shared_ptr<ReaderProgress> progress_;
  PoolStats stats_;
};

}  // namespace capnsplice::detail
