#include "shared_path.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "capnsplice.capnp.h"
#include "capnsplice/error.h"
#include "pooled_message_builder.h"

namespace capnsplice::detail {

namespace {

/// A peer announcing an arena larger than this is not believed.
constexpr std::uint64_t kLargestArena = std::uint64_t{1} << 40;

std::uint64_t load_word(const capnp::word& word) noexcept {
  std::uint64_t value;
  std::memcpy(&value, &word, sizeof value);
  return value;
}

}  // namespace

// --- DescriptorBuilder ---------------------------------------------------------------

DescriptorBuilder::DescriptorBuilder(std::size_t segments) {
  kj::ArrayPtr<capnp::word> memory = kj::arrayPtr(inline_.data(), inline_.size());
  if (segments > kInlineSegments) {
    heap_ = kj::heapArray<capnp::word>(descriptor_words(segments));
    std::memset(heap_.begin(), 0, heap_.size() * sizeof(capnp::word));
    memory = heap_;
  }
  builder_.emplace(memory);
}

// --- SharedSender --------------------------------------------------------------------

SharedSender::SharedSender(std::shared_ptr<ControlLink> link, const SenderOptions& options,
                           std::string context)
    : link_(std::move(link)),
      threshold_(options.shared_memory_threshold_bytes),
      everything_(options.path == SendPath::shared_memory),
      capacity_(options.arena_bytes),
      keep_bytes_(options.arena_keep_bytes),
      available_(shared_memory_unavailable_reason().empty()),
      idle_retire_after_(options.arena_idle_retire_after),
      context_(std::move(context)) {}

bool SharedSender::wants(std::size_t bytes) {
  // Requests too large for half the arena could never be served while another message
  // is held: those take the pipe.
  const bool large_enough = everything_ || (threshold_ != 0 && bytes >= threshold_);
  return available_ && large_enough && bytes <= capacity_ / 2 && link_->peer_accepts_shared();
}

SendArena& SharedSender::arena_for_allocation_locked(std::shared_ptr<SendArena>& replaced) {
  if (arena_ && link_->peer_gone()) arena_->release_all();  // nobody will read what is held
  // Only an idle arena is replaced: nothing held or being built refers to it, and no
  // descriptor naming it is still to be read (each held message is released only after
  // the reader read its descriptor and dropped the message).
  if (!arena_ || arena_->should_retire(keep_bytes_)) {
    auto arena = std::make_shared<SendArena>(next_arena_id_, capacity_, context_);
    // Announced before anything can name it. Releases go to it alone from now on, and
    // only now: if the announcement fails, the old arena goes on serving.
    link_->send_arena(arena->id(), arena->capacity(), arena->fd());
    link_->attach_send_arena(arena);
    ++next_arena_id_;
    replaced = std::exchange(arena_, std::move(arena));
    has_arena_.store(true, std::memory_order_relaxed);
  }
  return *arena_;
}

std::shared_ptr<SendArena> SharedSender::current_arena() const {
  std::lock_guard lock(mutex_);
  return arena_;
}

ArenaBlock SharedSender::allocate(std::size_t bytes, bool zeroed, Deadline deadline) {
  for (;;) {
    link_->pump(Deadline::immediate());  // take in what the reader released
    std::size_t held, in_use, capacity;
    std::shared_ptr<SendArena> replaced;  // unmapped after the lock: that takes a while
    {
      std::lock_guard lock(mutex_);
      SendArena& arena = arena_for_allocation_locked(replaced);
      held = arena.held_messages();
      in_use = arena.bytes_in_use();
      // Backpressure by bytes as well as by count: with only a small descriptor on the
      // pipe, nothing else keeps a sender from running hundreds of MiB ahead of a slower
      // reader, and every page that touches stays resident (shared_arena.h). Only what
      // the reader holds counts, so a message of any size can start while it holds a
      // little (say, the latest state it keeps).
      const bool room = held < kMaxHeldSharedMessages && arena.held_bytes() < keep_bytes_ / 2;
      if (room) {
        if (auto block = arena.allocate(bytes, zeroed)) return *block;
      }
      capacity = arena.capacity();
    }
    // Nothing the reader could release: what fills the arena is being built (each
    // object is at most half of it, but one message's objects can add up to more).
    if (held == 0) {
      throw Error(ErrorCode::MessageTooLarge, context_,
                  "an object of " + std::to_string(bytes) +
                      " bytes does not fit in the shared-memory arena of " +
                      std::to_string(capacity) + " bytes, " + std::to_string(in_use) +
                      " of them taken by messages being built and none held for the reader");
    }
    // Queued messages hold blocks too, and are released only once written and read.
    if (auto sender = sender_.lock(); sender && sender->flush_queued(deadline)) continue;
    if (deadline.expired()) {
      throw Error(ErrorCode::Timeout, context_,
                  "the shared-memory arena (" + std::to_string(capacity) + " bytes, " +
                      std::to_string(in_use) + " in use, more than " +
                      std::to_string(keep_bytes_ / 2) +
                      " held for the reader lets nothing new start) is full of messages the "
                      "reader still holds, and the deadline passed");
    }
    // Sleep until the reader releases something, without holding the link's lock
    // (holding it while waiting deadlocked two soak processes).
    link_->nap_for_records(deadline);
  }
}

std::optional<ArenaBlock> SharedSender::allocate_more(std::size_t bytes) {
  std::lock_guard lock(mutex_);
  return arena_ ? arena_->allocate(bytes, /*zeroed=*/false) : std::nullopt;
}

void SharedSender::retire_idle_arena() {
  if (!has_arena_.load(std::memory_order_relaxed)) return;
  const std::chrono::nanoseconds now = coarse_now();
  if (now.count() < next_idle_check_ns_.load(std::memory_order_relaxed)) return;
  next_idle_check_ns_.store((now + kIdleArenaCheckInterval).count(), std::memory_order_relaxed);
  link_->pump(Deadline::immediate());  // take in what the reader released
  std::shared_ptr<SendArena> retired;  // unmapped after the lock: that takes a while
  std::lock_guard lock(mutex_);
  if (!arena_ || !arena_->idle_past_keep(keep_bytes_, now, idle_retire_after_)) return;
  // Idle: nothing held or being built refers to it, so no descriptor names it again.
  link_->send_retire(arena_->id());
  retired = std::move(arena_);
  has_arena_.store(false, std::memory_order_relaxed);
}

void SharedSender::free(const ArenaBlock& block) { current_arena()->free(block); }

std::uint64_t SharedSender::describe(PooledMessageBuilder& builder, std::vector<ArenaBlock> blocks,
                                     capnp::MessageBuilder& descriptor, Deadline deadline) {
  auto segments = builder.segments_for_output();
  std::vector<std::pair<std::uint64_t, std::uint64_t>> places;  // offset, words
  places.reserve(segments.size());
  try {
    for (const auto& segment : segments) {
      const auto* begin = reinterpret_cast<const std::byte*>(segment.begin());
      const std::size_t bytes = segment.size() * sizeof(capnp::word);
      const ArenaBlock* home = nullptr;
      for (const ArenaBlock& block : blocks) {
        if (block.data <= begin && begin + bytes <= block.data + block.bytes) home = &block;
      }
      if (home != nullptr) {
        places.emplace_back(home->offset + static_cast<std::uint64_t>(begin - home->data),
                            segment.size());
        continue;
      }
      // A segment built in the pipe pool (the root, small objects): the reader must find
      // every segment in the arena, so copy it there. It is small.
      std::optional<ArenaBlock> room = allocate_more(bytes);
      ArenaBlock copy = room ? *room : allocate(bytes, /*zeroed=*/false, deadline);
      if (bytes != 0) std::memcpy(copy.data, begin, bytes);
      blocks.push_back(copy);
      places.emplace_back(copy.offset, segment.size());
    }
  } catch (...) {
    for (const ArenaBlock& block : blocks) free(block);
    throw;
  }

  std::uint64_t id;
  std::shared_ptr<SendArena> arena;
  {
    std::lock_guard lock(mutex_);
    id = next_message_id_++;
    arena = arena_;  // where `blocks` are: they keep it from being replaced
  }
  arena->hold_until_released(id, std::move(blocks));

  auto root = descriptor.initRoot<wire::SharedMessage>();
  root.setMagic(wire::SharedMessage::EXPECTED_MAGIC);
  root.setArena(arena->id());
  root.setId(id);
  auto list = root.initSegments(static_cast<unsigned>(places.size()));
  for (unsigned i = 0; i < places.size(); ++i) {
    list[i].setOffset(places[i].first);
    list[i].setWords(places[i].second);
  }
  return id;
}

void SharedSender::abandon(std::uint64_t message_id) { current_arena()->release(message_id); }

std::uint64_t SharedSender::arena_bytes_in_use() const {
  std::lock_guard lock(mutex_);
  return arena_ ? arena_->bytes_in_use() : 0;
}

std::uint64_t SharedSender::arenas_created() const {
  std::lock_guard lock(mutex_);
  return next_arena_id_ - 1;
}

// --- SharedReceiver ------------------------------------------------------------------

SharedReceiver::SharedReceiver(std::shared_ptr<ControlLink> link, const ReceiveLimits& limits,
                               std::string context)
    : link_(std::move(link)), limits_(limits), context_(std::move(context)) {
  if (shared_memory_unavailable_reason().empty()) link_->announce_accepts_shared();
}

bool SharedReceiver::is_descriptor(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) {
  // A SharedMessage root: a struct pointer to 3 data words and 1 pointer whose first
  // data word is the magic.
  if (segments.size() != 1 || segments[0].size() < 5) return false;
  const auto segment = segments[0];
  const std::uint64_t root = load_word(segment[0]);
  if ((root & 3) != 0) return false;
  const auto offset = static_cast<std::int32_t>(static_cast<std::uint32_t>(root)) >> 2;
  const auto data_words = static_cast<std::uint16_t>(root >> 32);
  const auto pointers = static_cast<std::uint16_t>(root >> 48);
  if (data_words != 3 || pointers != 1) return false;
  const std::int64_t start = 1 + std::int64_t{offset};
  if (start < 1 || start + 4 > static_cast<std::int64_t>(segment.size())) return false;
  return load_word(segment[static_cast<std::size_t>(start)]) == wire::SharedMessage::EXPECTED_MAGIC;
}

std::shared_ptr<ReceiveArena> SharedReceiver::arena(std::uint32_t id) {
  // A sender names only its latest arena: it moves to the next one once nothing in the
  // old one is held, that is once every message of it was read and dropped here.
  if (arena_ && arena_->id() == id && link_->latest_arena() == id && link_->retired_arena() < id) {
    return arena_;
  }
  // The sender puts each arena on the control link before it writes any descriptor
  // naming it, so the record is queued by the time the descriptor is read: the wait is
  // only a bound for a peer that lies (a descriptor for an arena it never sends), and
  // take_arena refuses at once an arena older than the latest.
  auto [memfd, capacity] = link_->take_arena(id, Deadline::after(std::chrono::seconds(1)));
  if (capacity == 0 || capacity > kLargestArena) {
    throw Error(ErrorCode::MalformedFrame, context_,
                "the peer announced an arena of " + std::to_string(capacity) + " bytes");
  }
  // The older arena is unmapped once the last message reading it is dropped and this
  // end lets go of it (release_retired).
  constexpr std::size_t kMaxRetiredArenas = 2;
  if (retired_.size() >= kMaxRetiredArenas) retired_.erase(retired_.begin());
  if (arena_) retired_.push_back(std::move(arena_));
  arena_ = std::make_shared<ReceiveArena>(id, std::move(memfd),
                                          static_cast<std::size_t>(capacity), context_);
  return arena_;
}

void SharedReceiver::release_retired() noexcept {
  retired_.clear();
  if (!arena_) return;
  const std::chrono::nanoseconds now = coarse_now();
  if (now < next_retire_check_) return;
  next_retire_check_ = now + kIdleArenaCheckInterval;
  try {
    link_->pump(Deadline::immediate());
  } catch (const Error&) {
    return;  // a broken link shows up where it matters: the next arena or release
  }
  if (link_->retired_arena() >= arena_->id()) arena_.reset();
}

void SharedReceiver::open(capnp::MessageReader& descriptor, ReceivedMessageState& state) {
  auto root = descriptor.getRoot<wire::SharedMessage>();
  auto places = root.getSegments();
  if (places.size() == 0 || places.size() > limits_.max_segments) {
    throw Error(ErrorCode::MalformedFrame, context_,
                "a shared-memory message lists " + std::to_string(places.size()) +
                    " segments; 1 to " + std::to_string(limits_.max_segments) + " are allowed");
  }
  std::shared_ptr<ReceiveArena> arena = this->arena(root.getArena());
  auto* slots = state.segment_slots(places.size());
  std::uint64_t words = 0;
  for (unsigned i = 0; i < places.size(); ++i) {
    auto segment = arena->segment(places[i].getOffset(), places[i].getWords());
    if (!segment) {
      throw Error(ErrorCode::MalformedFrame, context_,
                  "segment " + std::to_string(i) + " of a shared-memory message (offset " +
                      std::to_string(places[i].getOffset()) + ", " +
                      std::to_string(places[i].getWords()) + " words) is not inside the arena");
    }
    slots[i] = *segment;
    words += places[i].getWords();
  }
  // Segments may overlap (each may even cover the whole arena): what they declare can
  // add up to far more than there is, so the arena's size caps the words counted.
  const std::uint64_t readable =
      std::min<std::uint64_t>(words, arena->capacity() / sizeof(capnp::word));
  state.segments = kj::arrayPtr(slots, places.size());
  state.frame_bytes = words * sizeof(capnp::word);
  state.shared_arena = std::move(arena);
  state.shared_link = link_;
  state.shared_id = root.getId();

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
