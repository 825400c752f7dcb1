#include "pooled_message_builder.h"

#include <capnp/any.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "shared_sender.h"

namespace capnsplice::detail {

namespace {
/// When every message goes to the arena, its first arena segment is at least this large,
/// and each next one at least as large as all before it (as Cap'n Proto's
/// MallocMessageBuilder grows) up to kLargestArenaSegmentGrowth: a message of many small
/// objects does not become one segment per object, and a small message zeroes little (a
/// 64 KiB first segment, zeroed for every message, cost a 64 B message 20 times what the
/// rest of it did).
constexpr std::size_t kFirstArenaSegmentBytes = 1024;
/// Growth stops here, so a large message of small objects reserves (and zeroes) at most
/// this much beyond what it uses.
constexpr std::size_t kLargestArenaSegmentGrowth = std::size_t{64} * 1024;
}  // namespace

PooledMessageBuilder::PooledMessageBuilder(
    std::shared_ptr<const BuildingMemory> memory,
    std::optional<std::chrono::nanoseconds> allocation_timeout,
    std::optional<Deadline> allocation_deadline)
    : memory_(std::move(memory)),
      allocation_timeout_(allocation_timeout),
      allocation_deadline_(allocation_deadline) {}

PooledMessageBuilder::~PooledMessageBuilder() noexcept(false) {
  for (const ArenaBlock& block : arena_blocks_) memory_->shared->free(block);  // never sent
  if (released_) return;
  // Dropped without being sent: the chunks were never handed to the kernel.
  try {
    finish_building();
  } catch (...) {
    // Reporting the written sizes failed; the pools then clear whole chunks.
  }
  release_chunks();
}

Chunk PooledMessageBuilder::allocate_from(SegmentPool& pool, std::size_t bytes, bool greedy) {
  return pool.allocate(bytes, greedy, allocation_deadline(), memory_->flush_queued);
}

std::optional<ArenaBlock> PooledMessageBuilder::allocate_shared(std::size_t bytes, bool zeroed) {
  SharedSender* shared = memory_->shared.get();
  if (shared == nullptr || !shared->wants(bytes)) return std::nullopt;
  std::optional<ArenaBlock> block =
      shared->allocate(bytes, zeroed, allocation_deadline(), memory_->flush_queued);
  if (block) arena_blocks_.push_back(*block);
  return block;
}

kj::ArrayPtr<capnp::word> PooledMessageBuilder::allocateSegment(unsigned minimumSize) {
  const std::size_t requested = std::size_t{minimumSize} * sizeof(capnp::word);
  // The root segment stays in the pool (so an empty message never needs the arena)
  // unless every segment goes to the arena; then segments get room to grow in.
  const bool everything = memory_->shared && memory_->shared->everything();
  if (!chunks_.empty() || everything) {
    const std::size_t bytes =
        everything ? std::max(requested, std::clamp(arena_segment_bytes_, kFirstArenaSegmentBytes,
                                                    kLargestArenaSegmentGrowth))
                   : requested;
    if (auto block = allocate_shared(bytes, /*zeroed=*/true)) {
      arena_segment_bytes_ += block->bytes;
      return kj::arrayPtr(reinterpret_cast<capnp::word*>(block->data),
                          block->bytes / sizeof(capnp::word));
    }
  }
  const bool first = chunks_.empty();
  const std::size_t front = first ? kTableRoomBytes : 0;
  Chunk chunk =
      allocate_from(*memory_->segments, std::size_t{minimumSize} * sizeof(capnp::word) + front, true);
  chunks_.push_back({chunk, memory_->segments.get(), front, 0, true});
  // Segment sizes travel as 32-bit word counts.
  const std::size_t words = std::min<std::size_t>((chunk.bytes - front) / sizeof(capnp::word),
                                                  std::numeric_limits<std::uint32_t>::max());
  return kj::arrayPtr(reinterpret_cast<capnp::word*>(chunk.data + front), words);
}

capnp::Orphan<capnp::Data> PooledMessageBuilder::allocate_data(std::size_t bytes,
                                                               kj::ArrayPtr<kj::byte>& memory) {
  // The orphanage allocates segment 0 first, so the external segment never becomes the
  // root segment.
  capnp::Orphanage orphanage = getOrphanage();
  if (bytes == 0) {
    memory = nullptr;  // an empty external segment would be dropped from the output
    return orphanage.newOrphan<capnp::Data>(0);
  }
  const std::size_t padded = (bytes + 7) & ~std::size_t{7};
  if (auto block = allocate_shared(padded, /*zeroed=*/false)) {
    std::memset(block->data + bytes, 0, padded - bytes);  // the padding is on the wire
    auto* start = reinterpret_cast<kj::byte*>(block->data);
    memory = kj::arrayPtr(start, bytes);
    return orphanage.referenceExternalData(capnp::Data::Reader(start, bytes));
  }
  Chunk chunk = allocate_from(*memory_->data, padded, false);
  chunks_.push_back({chunk, memory_->data.get(), 0, chunk.bytes, false});
  // The padding is visible on the wire: it must be zero.
  std::memset(chunk.data + bytes, 0, padded - bytes);
  auto* start = reinterpret_cast<kj::byte*>(chunk.data);
  memory = kj::arrayPtr(start, bytes);
  return orphanage.referenceExternalData(capnp::Data::Reader(start, bytes));
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
  return chunks_.front().chunk.data + kTableRoomBytes;
}

std::byte* PooledMessageBuilder::allocate_table(std::size_t bytes) {
  Chunk chunk = allocate_from(*memory_->segments, bytes, false);
  chunks_.push_back({chunk, memory_->segments.get(), 0, bytes, false});
  return chunk.data;
}

void PooledMessageBuilder::finish_building() {
  if (finished_) return;
  finished_ = true;
  // Each capnp segment lives at the start of one of our segment chunks (after the
  // table room for the first); find it to learn how much of the chunk was written.
  auto segments = getSegmentsForOutput();
  for (OwnedChunk& owned : chunks_) {
    if (!owned.is_segment) continue;
    owned.used_bytes = owned.chunk.bytes;  // not found: let the pool clear all of it
    const auto* start = reinterpret_cast<const capnp::word*>(owned.chunk.data + owned.front_bytes);
    for (const auto& segment : segments) {
      if (segment.begin() == start) {
        owned.used_bytes = owned.front_bytes + segment.size() * sizeof(capnp::word);
        break;
      }
    }
  }
  for (const OwnedChunk& owned : chunks_)
    owned.pool->finish_building(owned.chunk, owned.used_bytes);
}

void PooledMessageBuilder::release_chunks() {
  finish_building();  // the pools learn how much to clear
  released_ = true;
  for (const OwnedChunk& owned : chunks_) owned.pool->release(owned.chunk);
}

void PooledMessageBuilder::release_chunks_after(std::uint64_t stream_end) {
  finish_building();
  released_ = true;
  for (const OwnedChunk& owned : chunks_) owned.pool->release_after(owned.chunk, stream_end);
}

}  // namespace capnsplice::detail
