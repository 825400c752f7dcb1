// "Write what is queued", as the memory of a message being built asks for it (internal).
//
// A sender's queued messages hold pool chunks and arena blocks that come back only once
// they are written. A builder whose pool or arena is full therefore has the queue written
// before it waits for the reader: the builder finds this function in the sender's
// BuildingMemory, and hands it to the pool or arena it allocates from. It refers to the
// sender weakly, so a builder may outlive its sender (the call then writes nothing).
#pragma once

#include <memory>

#include "capnsplice/deadline.h"

namespace capnsplice::detail {

class FlushQueued {
 public:
  /// Writes nothing (no sender).
  FlushQueued() = default;

  /// Calls `(owner->*Flush)(deadline)` while `owner` lives, e.g.
  /// `FlushQueued::of<&SenderCore::flush_queued>(std::weak_ptr<SenderCore>(core))`.
  template <auto Flush, typename Owner>
  static FlushQueued of(std::weak_ptr<Owner> owner) {
    FlushQueued result;
    result.owner_ = std::move(owner);
    result.call_ = [](void* target, Deadline deadline) -> bool {
      return (static_cast<Owner*>(target)->*Flush)(deadline);
    };
    return result;
  }

  /// Writes queued messages until `deadline` (what the pipe does not take stays queued).
  /// Returns whether any bytes were written.
  bool operator()(Deadline deadline) const {
    const std::shared_ptr<void> owner = owner_.lock();
    return owner && call_(owner.get(), deadline);
  }

 private:
  std::weak_ptr<void> owner_;
  bool (*call_)(void*, Deadline) = nullptr;
};

}  // namespace capnsplice::detail
