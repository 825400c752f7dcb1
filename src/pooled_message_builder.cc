#include "pooled_message_builder.h"

#include <capnp/any.h>

#include <limits>

namespace capnsplice::detail {

PooledMessageBuilder::PooledMessageBuilder(
    std::shared_ptr<SegmentPool> pool, std::optional<std::chrono::nanoseconds> allocation_timeout)
    : pool_(std::move(pool)), allocation_timeout_(allocation_timeout) {}

PooledMessageBuilder::~PooledMessageBuilder() noexcept(false) {
  if (released_) return;
  // Dropped without being sent: the chunks were never handed to the kernel.
  try {
    finish_building();
  } catch (...) {
    // Reporting the written sizes failed; the pool then zeroes whole chunks.
  }
  release_chunks();
}

kj::ArrayPtr<capnp::word> PooledMessageBuilder::allocateSegment(unsigned minimumSize) {
  const bool first = chunks_.empty();
  const std::size_t front = first ? kTableRoomBytes : 0;
  Chunk chunk = pool_->allocate(std::size_t{minimumSize} * sizeof(capnp::word) + front,
                                /*greedy=*/true, Deadline::after(allocation_timeout_));
  chunks_.push_back(chunk);
  // Segment sizes travel as 32-bit word counts.
  const std::size_t words = std::min<std::size_t>((chunk.bytes - front) / sizeof(capnp::word),
                                                  std::numeric_limits<std::uint32_t>::max());
  return kj::arrayPtr(reinterpret_cast<capnp::word*>(chunk.data + front), words);
}

kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> PooledMessageBuilder::segments_for_output() {
  auto segments = getSegmentsForOutput();
  if (segments.size() == 0) {
    getRoot<capnp::AnyPointer>();  // allocates segment 0 with a null root pointer
    segments = getSegmentsForOutput();
  }
  return segments;
}

std::byte* PooledMessageBuilder::first_segment_start() const noexcept {
  return chunks_.front().data + kTableRoomBytes;
}

std::byte* PooledMessageBuilder::allocate_table(std::size_t bytes) {
  Chunk chunk = pool_->allocate(bytes, /*greedy=*/false, Deadline::after(allocation_timeout_));
  chunks_.push_back(chunk);
  table_chunk_bytes_ = bytes;
  return chunk.data;
}

void PooledMessageBuilder::finish_building() {
  if (finished_) return;
  finished_ = true;
  auto segments = getSegmentsForOutput();
  for (std::size_t i = 0; i < chunks_.size(); ++i) {
    std::size_t used;
    if (i < segments.size()) {
      used = segments[i].size() * sizeof(capnp::word) + (i == 0 ? kTableRoomBytes : 0);
    } else if (i == segments.size() && table_chunk_bytes_ != 0) {
      used = table_chunk_bytes_;
    } else {
      used = chunks_[i].bytes;  // unknown: let the pool clear all of it
    }
    pool_->finish_building(chunks_[i], used);
  }
}

void PooledMessageBuilder::release_chunks() {
  released_ = true;
  for (const Chunk& chunk : chunks_) pool_->release(chunk);
}

void PooledMessageBuilder::release_chunks_after(std::uint64_t stream_end) {
  released_ = true;
  for (const Chunk& chunk : chunks_) pool_->release_after(chunk, stream_end);
}

}  // namespace capnsplice::detail
