// A capnp::MessageBuilder whose segments live in a SegmentPool (internal).
//
// Segment 0 starts kTableRoomBytes into its chunk, so the sender can write the
// segment table right in front of it and the first gather entry covers both:
//
//   chunk 0:  [ zero ...... | segment table ][ segment 0 words ............ ]
//             ^ chunk.data                  ^ chunk.data + kTableRoomBytes
//             <------- kTableRoomBytes ---->
//   chunk i:  [ segment i words ................................. ]
#pragma once

#include <capnp/message.h>

#include <chrono>
#include <memory>
#include <optional>
#include <vector>

#include "segment_pool.h"

namespace capnsplice::detail {

class PooledMessageBuilder final : public capnp::MessageBuilder {
 public:
  /// Room for the table of a message of up to 30 segments.
  static constexpr std::size_t kTableRoomBytes = 128;

  PooledMessageBuilder(std::shared_ptr<SegmentPool> pool,
                       std::optional<std::chrono::nanoseconds> allocation_timeout);
  ~PooledMessageBuilder() noexcept(false) override;

  kj::ArrayPtr<capnp::word> allocateSegment(unsigned minimumSize) override;

  /// The message's segments; gives an empty message its (null) root pointer first,
  /// since a frame must carry at least that.
  kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments_for_output();

  /// Where segment 0 starts: the segment table goes in the kTableRoomBytes before it.
  std::byte* first_segment_start() const noexcept;

  /// Adds a chunk for a segment table that did not fit in front of segment 0.
  std::byte* allocate_table(std::size_t bytes);

  /// Building is over: reports the written bytes of every chunk to the pool (which
  /// trims the newest chunk).
  void finish_building();

  /// The pool may reuse every chunk now (not sent, or sent by copy).
  void release_chunks();

  /// The pool may reuse every chunk once the reader has consumed `stream_end` bytes.
  void release_chunks_after(std::uint64_t stream_end);

  const std::shared_ptr<SegmentPool>& pool() const noexcept { return pool_; }

 private:
  std::shared_ptr<SegmentPool> pool_;
  std::optional<std::chrono::nanoseconds> allocation_timeout_;
  std::vector<Chunk> chunks_;  // chunk i holds segment i; a spilled table comes last
  std::size_t table_chunk_bytes_ = 0;  // bytes used in a separate table chunk, if any
  bool finished_ = false;
  bool released_ = false;
};

}  // namespace capnsplice::detail
