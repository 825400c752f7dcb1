// What a ReceivedMessage owns (internal).
#pragma once

#include <capnp/message.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <variant>
#include <vector>

#include "capnsplice/unique_fd.h"
#include "control_link.h"
#include "receive_ring.h"
#include "shared_arena.h"

namespace capnsplice::detail {

// The three places a received message's bytes can live. Each holds its memory until it
// is destroyed and then lets go of it; the handle it lets go through is a shared_ptr,
// which a move leaves empty, so a moved-from one lets go of nothing. They are move-
// constructible only: assigning over one would first have to let go of what it held,
// and nothing reassigns a message's memory.

/// A lease on the frame's bytes in the receive ring, where they were read.
class RingLease {
 public:
  RingLease(std::shared_ptr<ReceiveRing> ring, std::uint64_t id) noexcept
      : ring_(std::move(ring)), id_(id) {}
  RingLease(RingLease&&) noexcept = default;
  ~RingLease() {
    if (ring_) ring_->release(id_);
  }

 private:
  std::shared_ptr<ReceiveRing> ring_;
  std::uint64_t id_;
};

/// A buffer of the frame's own (it did not fit in the ring), given back to the ring when
/// done so that the next large frame reuses its pages.
class OwnFrameBuffer {
 public:
  OwnFrameBuffer(std::shared_ptr<ReceiveRing> ring, FrameBuffer buffer) noexcept
      : ring_(std::move(ring)), buffer_(std::move(buffer)) {}
  OwnFrameBuffer(OwnFrameBuffer&&) noexcept = default;
  ~OwnFrameBuffer() {
    if (ring_) ring_->give_back(std::move(buffer_));
  }

  const std::byte* data() const noexcept { return buffer_.data(); }

 private:
  std::shared_ptr<ReceiveRing> ring_;
  FrameBuffer buffer_;
};

/// A view of a message in the peer's shared-memory arena: keeps the arena mapped, and
/// tells the peer when done that it may free the message.
class SharedArenaView {
 public:
  SharedArenaView(std::shared_ptr<ReceiveArena> arena, std::shared_ptr<ControlLink> link,
                  std::uint64_t message_id) noexcept
      : arena_(std::move(arena)), link_(std::move(link)), message_id_(message_id) {}
  SharedArenaView(SharedArenaView&&) noexcept = default;
  ~SharedArenaView() {
    if (link_) arena_->report_released(message_id_, *link_);
  }

 private:
  std::shared_ptr<ReceiveArena> arena_;
  std::shared_ptr<ControlLink> link_;
  std::uint64_t message_id_;
};

/// Where a message's bytes live. std::monostate while the state is being filled (and
/// when filling it failed before there was anything to hold): nothing to let go of.
using MessageMemory = std::variant<std::monostate, RingLease, OwnFrameBuffer, SharedArenaView>;

struct ReceivedMessageState {
  /// Declared first, so destroyed last: the segment views and the reader below point
  /// into this memory, and the ring or the peer may reuse it as soon as it is let go of.
  MessageMemory memory;

  std::size_t frame_bytes = 0;
  std::array<kj::ArrayPtr<const capnp::word>, 4> inline_segments;
  std::unique_ptr<kj::ArrayPtr<const capnp::word>[]> heap_segments;
  kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments;
  /// The descriptors that came with the message, until the application takes them.
  std::vector<UniqueFd> descriptors;
  /// Declared last, so destroyed first: it reads `segments` and `memory`.
  std::optional<capnp::SegmentArrayMessageReader> reader;

  ReceivedMessageState() = default;
  // Not movable either: `segments` and `reader` may point into `inline_segments`.
  ReceivedMessageState(const ReceivedMessageState&) = delete;
  ReceivedMessageState& operator=(const ReceivedMessageState&) = delete;

  /// Room for `count` segment views.
  kj::ArrayPtr<const capnp::word>* segment_slots(std::uint32_t count) {
    if (count <= inline_segments.size()) return inline_segments.data();
    heap_segments = std::make_unique<kj::ArrayPtr<const capnp::word>[]>(count);
    return heap_segments.get();
  }
};

}  // namespace capnsplice::detail
