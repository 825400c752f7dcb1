// A capnp::MessageBuilder whose memory lives in the sender's pools (internal).
//
// Segment 0 starts kTableRoomBytes into its chunk, so the sender can write the
// segment table right in front of it and the first gather entry covers both:
//
//   chunk 0:  [ zero ...... | segment table ][ segment 0 words ............ ]
//             ^ chunk.data                  ^ chunk.data + kTableRoomBytes
//             <------- kTableRoomBytes ---->
//   chunk i:  [ segment i words ................................. ]
//
// Segments come from the zeroed segment pool. Data buffers the caller fills itself
// (allocate_data) come from the unzeroed data pool and join the message as external
// segments of their own (capnp::Orphanage::referenceExternalData).
#pragma once

#include <boost/container/small_vector.hpp>
#include <capnp/message.h>
#include <capnp/orphan.h>

#include <chrono>
#include <memory>
#include <optional>

#include "flush_queued.h"
#include "segment_pool.h"
#include "shared_arena.h"

namespace capnsplice::detail {

class SharedSender;

/// What one sender's messages are built from. The sender makes it once and each of its
/// builders shares it: one reference count to take per message, not one per pool.
struct BuildingMemory {
  std::shared_ptr<SegmentPool> segments;  // Cap'n Proto segments, kept zeroed
  std::shared_ptr<SegmentPool> data;      // allocate_data() buffers, not zeroed
  std::shared_ptr<SharedSender> shared;   // large requests; null without a control link
  /// What a full pool or arena has write before it waits for the reader.
  FlushQueued flush_queued;
};

class PooledMessageBuilder final : public capnp::MessageBuilder {
 public:
  /// Room for the table of a message of up to 30 segments.
  static constexpr std::size_t kTableRoomBytes = 128;

  /// `memory.shared` (may be null) takes requests large enough for the shared-memory
  /// path. A request for memory waits for room until `allocation_deadline`, or when that
  /// is empty for `allocation_timeout` (empty: as long as it takes); before it waits, a
  /// full pool or arena has `memory.flush_queued` write the sender's queue.
  PooledMessageBuilder(std::shared_ptr<const BuildingMemory> memory,
                       std::optional<std::chrono::nanoseconds> allocation_timeout,
                       std::optional<Deadline> allocation_deadline = std::nullopt);
  ~PooledMessageBuilder() noexcept(false) override;

  kj::ArrayPtr<capnp::word> allocateSegment(unsigned minimumSize) override;

  /// `bytes` of unzeroed memory for a Data value, and the orphan that puts it in the
  /// message (zero padding up to the next word included).
  capnp::Orphan<capnp::Data> allocate_data(std::size_t bytes, kj::ArrayPtr<kj::byte>& memory);

  /// The message's segments; gives an empty message its (null) root pointer first,
  /// since a frame must carry at least that.
  kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments_for_output();

  /// Where segment 0 starts: the segment table goes in the kTableRoomBytes before it.
  std::byte* first_segment_start() const noexcept;

  /// Adds a chunk for a segment table that did not fit in front of segment 0.
  std::byte* allocate_table(std::size_t bytes);

  /// Building is over: reports the written bytes of every chunk to its pool (which
  /// trims the newest chunk).
  void finish_building();

  /// The pools may reuse every chunk now (not sent, or sent by copy).
  void release_chunks();

  /// The pools may reuse every chunk once the reader has consumed `stream_end` bytes.
  void release_chunks_after(std::uint64_t stream_end);

  /// What the message is built from: tells a sender whether it built the message.
  const BuildingMemory* memory() const noexcept { return memory_.get(); }

  /// True when part of the message lives in the shared-memory arena: it must go by the
  /// shared-memory path.
  bool in_shared_memory() const noexcept { return !arena_blocks_.empty(); }

  /// The arena blocks this builder frees unless SharedSender::describe takes them (it
  /// leaves them empty once it did).
  ArenaBlocks& arena_blocks() noexcept { return arena_blocks_; }

 private:
  struct OwnedChunk {
    Chunk chunk;
    SegmentPool* pool;
    std::size_t front_bytes;  // bytes before the segment proper (the table room)
    std::size_t used_bytes;   // for chunks that are not capnp segments: all of it
    bool is_segment;
  };

  Chunk allocate_from(SegmentPool& pool, std::size_t bytes, bool greedy);
  /// An arena block of `bytes` when the request goes by shared memory, else empty.
  std::optional<ArenaBlock> allocate_shared(std::size_t bytes, bool zeroed);

  const std::shared_ptr<const BuildingMemory> memory_;
  Deadline allocation_deadline() const noexcept {
    return allocation_deadline_ ? *allocation_deadline_ : Deadline::after(allocation_timeout_);
  }

  std::optional<std::chrono::nanoseconds> allocation_timeout_;
  std::optional<Deadline> allocation_deadline_;
  // Most messages have one or two chunks (segment 0, a data buffer): no heap allocation.
  boost::container::small_vector<OwnedChunk, 2> chunks_;
  ArenaBlocks arena_blocks_;
  std::size_t arena_segment_bytes_ = 0;  // of the segments allocateSegment put in the arena
  bool finished_ = false;
  bool released_ = false;
};

}  // namespace capnsplice::detail
