#include "shared_receiver.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "capnsplice.capnp.h"
#include "capnsplice/error.h"

namespace capnsplice::detail {

namespace {

/// A peer announcing an arena larger than this is not believed.
constexpr std::uint64_t kLargestArena = std::uint64_t{1} << 40;

}  // namespace

void SharedReceiver::announce(ControlLink& link) {
  if (shared_memory_unavailable_reason().empty() && room_for_a_peers_arena()) {
    link.announce_accepts_shared();
  }
}

SharedReceiver::SharedReceiver(std::shared_ptr<ControlLink> link, const ReceiveLimits& limits,
                               std::string context)
    : link_(std::move(link)), limits_(limits), context_(std::move(context)) {}

std::shared_ptr<ReceiveArena> SharedReceiver::arena(std::uint32_t id) {
  schedule();
  std::lock_guard lock(arenas_mutex_);
  // A sender names only its latest arena: it moves to the next one once nothing in the
  // old one is held, that is once every message of it was read and dropped here.
  if (arena_ && arena_->id() == id && link_->latest_arena() == id && link_->retired_arena() < id) {
    return arena_;
  }
  // The sender puts each arena on the control link before it writes any descriptor
  // naming it, so the record is queued by the time the descriptor is read: take_arena
  // need not wait, and refuses at once what the peer never sent.
  auto [memfd, capacity] = link_->take_arena(id);
  if (capacity == 0 || capacity > kLargestArena) {
    throw Error(ErrorCode::ProtocolViolation, context_,
                "the peer announced an arena of " + std::to_string(capacity) + " bytes");
  }
  // The older arena is unmapped once the last message reading it is dropped and this
  // end lets go of it (release_retired).
  constexpr std::size_t kMaxRetiredArenas = 2;
  if (retired_.size() >= kMaxRetiredArenas) retired_.erase(retired_.begin());
  if (arena_) retired_.push_back(std::move(arena_));
  try {
    arena_ = std::make_shared<ReceiveArena>(id, std::move(memfd),
                                            static_cast<std::size_t>(capacity), context_);
  } catch (const Error& error) {
    // Not mapped (no address space, say): like an arena whose descriptor never came.
    if (error.code() == ErrorCode::SystemError) {
      link_->lose_arena(id, error.sys_errno(), "could not be mapped (" + error.detail() + ")");
    }
    throw;
  }
  // The ring came just before the arena, so take_arena read it too.
  arena_->attach_release_ring(link_->take_release_ring(id), context_);
  return arena_;
}

void SharedReceiver::release_retired() noexcept {
  std::lock_guard lock(arenas_mutex_);
  retired_.clear();
  if (!arena_) return;
  const std::chrono::nanoseconds now = coarse_now();
  if (now < next_retire_check_) return;
  next_retire_check_ = now + kIdleArenaCheckInterval;
  release_retired_locked();
}

bool SharedReceiver::trim_if_idle() noexcept {
  std::lock_guard lock(arenas_mutex_);
  retired_.clear();
  if (arena_) release_retired_locked();
  return arena_ != nullptr;
}

void SharedReceiver::release_retired_locked() noexcept {
  try {
    link_->pump(Deadline::immediate());
  } catch (const Error&) {
    return;  // a broken link shows up where it matters: the next arena or release
  }
  if (link_->retired_arena() >= arena_->id()) arena_.reset();
}

void SharedReceiver::open(kj::ArrayPtr<const capnp::word> descriptor,
                          ReceivedMessageState& state) {
  if (link_->latest_arena() == 0) link_->pump(Deadline::immediate());
  if (link_->latest_arena() == 0) {
    throw Error(ErrorCode::MalformedFrame, context_,
                "first segment is empty: a message needs at least its root pointer (the peer "
                "announced no shared-memory arena, so this is no descriptor of one)");
  }
  // The peer is a capnsplice sender: from here on, a fault is a protocol violation, and
  // Cap'n Proto's own exceptions about the descriptor's bytes are turned into one.
  try {
    open_descriptor(descriptor, state);
  } catch (const kj::Exception& exception) {
    throw Error(ErrorCode::ProtocolViolation, context_,
                "a shared-memory descriptor is not a valid SharedMessage: " +
                    std::string(exception.getDescription().cStr()));
  }
}

void SharedReceiver::open_descriptor(kj::ArrayPtr<const capnp::word> descriptor_words,
                                     ReceivedMessageState& state) {
  if (link_->releases_overflowed()) {
    throw Error(ErrorCode::ProtocolViolation, context_,
                "the peer does not read its control link: more than " +
                    std::to_string(kMaxUnsentReleases) +
                    " releases could not be sent, more messages than a sender may hold");
  }
  const kj::ArrayPtr<const capnp::word> segments[] = {descriptor_words};
  capnp::SegmentArrayMessageReader descriptor(segments);
  auto root = descriptor.getRoot<wire::SharedMessage>();
  if (root.getMagic() != wire::SharedMessage::EXPECTED_MAGIC) {
    throw Error(ErrorCode::ProtocolViolation, context_,
                "a shared-memory descriptor lacks SharedMessage's magic word");
  }
  auto places = root.getSegments();
  if (places.size() != 0 && places[0].getWords() == 0) {
    throw Error(ErrorCode::ProtocolViolation, context_,
                "a shared-memory message's segment 0 is empty: it has no root pointer");
  }
  if (places.size() == 0 || places.size() > limits_.max_segments) {
    throw Error(ErrorCode::ProtocolViolation, context_,
                "a shared-memory message lists " + std::to_string(places.size()) +
                    " segments; 1 to " + std::to_string(limits_.max_segments) + " are allowed");
  }
  std::shared_ptr<ReceiveArena> arena;
  try {
    arena = this->arena(root.getArena());
  } catch (const Error& error) {
    // An arena lost for want of descriptors: the sender may free the message.
    if (error.code() == ErrorCode::SystemError) link_->send_release(root.getArena(), root.getId());
    throw;
  }
  schedule();  // again, now that the arena is mapped (see SharedSender::allocate)
  auto* slots = state.segment_slots(places.size());
  std::uint64_t words = 0;
  for (unsigned i = 0; i < places.size(); ++i) {
    auto segment = arena->segment(places[i].getOffset(), places[i].getWords());
    if (!segment) {
      throw Error(ErrorCode::ProtocolViolation, context_,
                  "segment " + std::to_string(i) + " of a shared-memory message (offset " +
                      std::to_string(places[i].getOffset()) + ", " +
                      std::to_string(places[i].getWords()) + " words) is not inside the arena");
    }
    slots[i] = *segment;
    words += places[i].getWords();
  }
  // The receive limit holds for every path: a shared message is no exception.
  if (words > limits_.max_message_bytes / sizeof(capnp::word)) {
    arena->report_released(root.getId(), *link_);  // nothing here will read it
    throw Error(ErrorCode::MessageTooLarge, context_,
                "shared-memory message of " + std::to_string(words * sizeof(capnp::word)) +
                    " bytes exceeds the limit of " + std::to_string(limits_.max_message_bytes) +
                    " bytes");
  }
  // Segments may overlap (each may even cover the whole arena): what they declare can
  // add up to far more than there is, so the arena's size caps the words counted.
  const std::uint64_t readable =
      std::min<std::uint64_t>(words, arena->capacity() / sizeof(capnp::word));
  state.segments = kj::arrayPtr(slots, places.size());
  state.frame_bytes = words * sizeof(capnp::word);
  state.memory.emplace<SharedArenaView>(std::move(arena), link_, root.getId());

  // The traversal limit follows the message: it guards against amplification, not size.
  capnp::ReaderOptions options;
  const std::uint64_t configured = limits_.traversal_limit_words != 0
                                       ? limits_.traversal_limit_words
                                       : 4 * (limits_.max_message_bytes / sizeof(capnp::word));
  options.traversalLimitInWords = std::max(configured, 4 * readable);
  options.nestingLimit = limits_.nesting_limit;
  state.reader.emplace(state.segments, options);
}

}  // namespace capnsplice::detail
