// What a ReceivedMessage owns (internal).
#pragma once

#include <capnp/message.h>

#include <array>
#include <memory>
#include <optional>

#include "control_link.h"
#include "receive_ring.h"
#include "shared_arena.h"

namespace capnsplice::detail {

struct ReceivedMessageState {
  std::shared_ptr<ReceiveRing> ring;
  /// Either a lease on the ring...
  std::optional<std::uint64_t> lease_id;
  /// ...or a buffer of its own (frames that did not fit in the ring), given back to the
  /// ring for reuse afterwards...
  FrameBuffer own_buffer;
  /// ...or a view of the peer's shared-memory arena, reported released when done.
  std::shared_ptr<ReceiveArena> shared_arena;
  std::shared_ptr<ControlLink> shared_link;
  std::uint64_t shared_id = 0;

  std::size_t frame_bytes = 0;
  std::array<kj::ArrayPtr<const capnp::word>, 4> inline_segments;
  std::unique_ptr<kj::ArrayPtr<const capnp::word>[]> heap_segments;
  kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments;
  std::optional<capnp::SegmentArrayMessageReader> reader;

  ReceivedMessageState() = default;
  ReceivedMessageState(const ReceivedMessageState&) = delete;
  ReceivedMessageState& operator=(const ReceivedMessageState&) = delete;

  ~ReceivedMessageState() {
    reader.reset();
    if (shared_link) {
      shared_link->send_release(shared_arena->id(), shared_id);
    } else if (lease_id) {
      ring->release(*lease_id);
    } else if (own_buffer.words) {
      ring->give_back(std::move(own_buffer));
    }
  }

  /// Room for `count` segment views.
  kj::ArrayPtr<const capnp::word>* segment_slots(std::uint32_t count) {
    if (count <= inline_segments.size()) return inline_segments.data();
    heap_segments = std::make_unique<kj::ArrayPtr<const capnp::word>[]>(count);
    return heap_segments.get();
  }
};

}  // namespace capnsplice::detail
