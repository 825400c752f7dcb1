#include "shared_sender.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "capnsplice.capnp.h"
#include "capnsplice/error.h"

namespace capnsplice::detail {

SharedSender::SharedSender(std::shared_ptr<ControlLink> link,
                           std::shared_ptr<ReaderProgress> progress, const SenderOptions& options,
                           std::string context)
    : link_(std::move(link)),
      progress_(std::move(progress)),
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
  return available_.load(std::memory_order_relaxed) && large_enough && bytes <= capacity_ / 2 &&
         arena_is_ours() && link_->peer_accepts_shared();
}

SendArena* SharedSender::arena_for_allocation_locked(std::shared_ptr<SendArena>& replaced,
                                                     Deadline deadline) {
  if (arena_ && link_->peer_gone()) arena_->release_all();  // nobody will read what is held
  // What the reader released first: that may make the arena idle.
  const bool retire = arena_ && collect_releases_locked(*arena_);
  // Only an idle arena is replaced: nothing held or being built refers to it, and no
  // descriptor naming it is still to be read (each held message is released only after
  // the reader read its descriptor and dropped the message).
  if (!arena_ || retire) {
    std::shared_ptr<SendArena> arena;
    try {
      arena = std::make_shared<SendArena>(next_arena_id_, capacity_, context_);
    } catch (const Error& error) {
      if (error.code() != ErrorCode::SystemError) throw;
      // memfd_create refused (a sandbox) or the mapping refused (RLIMIT_AS): from now on
      // this sender keeps to the pipe, as in a process that cannot make arenas at all.
      available_.store(false, std::memory_order_relaxed);
      // The old arena, if any, serves this request (wants() says no from now on),
      // unless the peer cannot read it.
      return arena_ && !arena_->lost_by_peer() ? arena_.get() : nullptr;
    }
    // Announced before anything can name it. Releases go to it alone from now on, and
    // only now: if the announcement fails, the old arena goes on serving. A peer that
    // does not read its link in time gets this request by pipe (a caller's deadline is
    // never spent waiting for the announcement; the next large request tries again).
    try {
      link_->send_arena(arena->id(), arena->capacity(), arena->fd(), arena->ring_fd(), deadline);
    } catch (const Error& error) {
      if (error.code() != ErrorCode::Timeout) throw;
      // The id is used up: the peer may have the ring of this attempt, which must not
      // be paired with the next arena.
      ++next_arena_id_;
      return nullptr;
    }
    arena->forget_ring_fd();
    ring_seen_ = false;
    read_link_for_releases_.store(true, std::memory_order_relaxed);
    link_->attach_send_arena(arena);
    ++next_arena_id_;
    replaced = std::exchange(arena_, std::move(arena));
    arena_generation_.store(fork_generation(), std::memory_order_relaxed);
    has_arena_.store(true, std::memory_order_relaxed);
  }
  // A lost arena still in use (the reader holds messages of it) is replaced once idle;
  // until then what would go there takes the pipe rather than be lost too.
  if (arena_->lost_by_peer()) return nullptr;
  return arena_.get();
}

bool SharedSender::can_describe() const {
  if (!arena_is_ours()) return false;
  const std::shared_ptr<SendArena> arena = current_arena();
  return arena && !arena->lost_by_peer();
}

std::shared_ptr<SendArena> SharedSender::current_arena() const {
  std::lock_guard lock(mutex_);
  return arena_;
}

std::optional<ArenaBlock> SharedSender::allocate(std::size_t bytes, bool zeroed,
                                                Deadline deadline,
                                                const FlushQueued& flush_queued) {
  // A caller that may not wait at all builds in the pool instead (the message then takes
  // the pipe): see SegmentPool::allocate.
  const bool never_wait = deadline.expired();
  schedule();
  bool read_link = read_link_for_releases_.load(std::memory_order_relaxed);
  for (;;) {
    if (read_link) link_->pump(Deadline::immediate());
    std::shared_ptr<SendArena> replaced;  // unmapped after the lock: that takes a while
    std::shared_ptr<SendArena> full;      // the arena to wait on when it has no room
    std::size_t capacity;
    SendArena::Attempt attempt;
    {
      std::lock_guard lock(mutex_);
      SendArena* made = arena_for_allocation_locked(replaced, deadline);
      if (made == nullptr) return std::nullopt;
      // Backpressure by bytes as well as by count: with only a small descriptor on the
      // pipe, nothing else keeps a sender from running hundreds of MiB ahead of a slower
      // reader, and every page that touches stays resident (shared_arena.h). Only what
      // the reader holds counts, so a message of any size can start while it holds a
      // little (say, the latest state it keeps).
      attempt = made->allocate_if_room(bytes, zeroed, kMaxHeldSharedMessages, keep_bytes_ / 2);
      if (!attempt.block) full = arena_;
      capacity = made->capacity();
    }
    const auto& [block, held, held_bytes, in_use] = attempt;
    if (block) {
      // Again, now that the arena exists: a look of the trimmer since the schedule()
      // above may have found none, and would not have looked again (an arena that stayed
      // mapped at both ends for good, found on a starved machine).
      schedule();
      return block;
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
    if (flush_queued(deadline)) continue;
    if (never_wait) return std::nullopt;
    if (deadline.expired()) {
      throw Error(ErrorCode::Timeout, context_,
                  "the reader still holds " + std::to_string(held) + " shared-memory messages (" +
                      std::to_string(held_bytes) + " bytes; a new one starts below " +
                      std::to_string(keep_bytes_ / 2) + " bytes and " +
                      std::to_string(kMaxHeldSharedMessages) + " messages, with room in the " +
                      std::to_string(capacity) + "-byte arena, " + std::to_string(in_use) +
                      " bytes of it in use), and the deadline passed");
    }
    // A reader that closed the pipe will release nothing, even with its control link
    // still open: that is PeerClosed, not a wait until the deadline.
    progress_->require_reader();
    // Sleep until the reader releases something, without holding the link's lock
    // (holding it while waiting deadlocked two soak processes), and read the link on
    // waking: what woke it, releases by record, a peer that went.
    if (full->ask_for_wake()) link_->nap_for_records(deadline);
    read_link = true;
  }
}

bool SharedSender::collect_releases_locked(SendArena& arena) {
  const auto [released, by_ring, should_retire] = arena.collect_releases(keep_bytes_);
  if (released != 0) {
    releases_by_ring_.store(releases_by_ring_.load(std::memory_order_relaxed) + released,
                            std::memory_order_relaxed);
  }
  // The link is read on every allocation until the reader took to the ring, and once
  // more after that: for releases it sent by record before.
  read_link_for_releases_.store(!by_ring || !ring_seen_, std::memory_order_relaxed);
  ring_seen_ = by_ring;
  return should_retire;
}

std::optional<ArenaBlock> SharedSender::allocate_more(std::size_t bytes) {
  std::lock_guard lock(mutex_);
  return arena_ ? arena_->allocate(bytes, /*zeroed=*/false) : std::nullopt;
}

bool SharedSender::trim_if_idle() noexcept {
  try {
    return retire_arena_if_idle();
  } catch (...) {
    return true;  // the link failed: try again later (a broken link shows up on sends)
  }
}

bool SharedSender::retire_arena_if_idle() {
  if (!has_arena_.load(std::memory_order_relaxed)) return false;
  if (!arena_is_ours()) return false;  // the parent's arena: not this process's to retire
  link_->pump(Deadline::immediate());  // take in what the reader released
  std::shared_ptr<SendArena> retired;  // unmapped after the lock: that takes a while
  std::lock_guard lock(mutex_);
  if (!arena_) return false;
  collect_releases_locked(*arena_);
  if (!arena_->idle_and_resident(coarse_now(), idle_retire_after_)) return true;
  // Idle: nothing held or being built refers to it, so no descriptor names it again.
  link_->send_retire(arena_->id());
  retired = std::move(arena_);
  has_arena_.store(false, std::memory_order_relaxed);
  return false;
}

void SharedSender::free(const ArenaBlock& block) {
  // A fork() child's copy of a builder names its parent's blocks, which the parent still
  // holds: freeing them here would free them in the allocator both processes see.
  if (!arena_is_ours()) return;
  // Blocks being built keep their arena current (it is replaced or retired only when
  // idle), so it is there; the check guards against a bug, not a peer.
  if (const std::shared_ptr<SendArena> arena = current_arena()) arena->free(block);
}

std::uint64_t SharedSender::describe(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                                     ArenaBlocks& blocks,
                                     capnp::MessageBuilder& descriptor, Deadline deadline,
                                     const FlushQueued& flush_queued) {
  boost::container::small_vector<std::pair<std::uint64_t, std::uint64_t>, 4> places;  // offset, words
  places.reserve(segments.size());
  const std::size_t built_blocks = blocks.size();  // the message's own: the caller's on failure
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
      try {
        if (!room) room = allocate(bytes, /*zeroed=*/false, deadline, flush_queued);
      } catch (const Error& error) {
        if (error.code() != ErrorCode::Timeout) throw;
        room.reset();
      }
      if (!room) throw arena_full_error();

      const ArenaBlock copy = *room;
      if (bytes != 0) std::memcpy(copy.data, begin, bytes);
      blocks.push_back(copy);
      places.emplace_back(copy.offset, segment.size());
    }
  } catch (...) {
    for (std::size_t i = built_blocks; i < blocks.size(); ++i) free(blocks[i]);
    blocks.erase(blocks.begin() + static_cast<std::ptrdiff_t>(built_blocks), blocks.end());
    throw;
  }

  std::uint64_t id;
  std::shared_ptr<SendArena> arena;
  {
    std::lock_guard lock(mutex_);
    id = next_message_id_++;
    arena = arena_;  // where `blocks` are: they keep it from being replaced
  }
  arena->hold_until_released(id, std::exchange(blocks, ArenaBlocks{}));  // held for the reader now

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

Error SharedSender::arena_full_error() const {
  return Error(ErrorCode::Overloaded, context_,
               "a segment of this shared-memory message was built in the pipe pool and must "
               "be copied into the arena, which is full of messages the reader has not "
               "released, and none was released before the deadline: the message was not "
               "taken and is still yours");
}

void SharedSender::abandon(std::uint64_t message_id) {
  if (!arena_is_ours()) return;  // the parent's message, as in free()
  // A queued descriptor's arena can be gone: a hostile reader may "release" ids it has
  // not read yet, and the idle arena is then retired. Its blocks went with it.
  if (const std::shared_ptr<SendArena> arena = current_arena()) arena->release(message_id);
}

std::uint64_t SharedSender::arena_bytes_in_use() const {
  std::lock_guard lock(mutex_);
  return arena_ ? arena_->bytes_in_use() : 0;
}

std::uint64_t SharedSender::releases_by_record() const noexcept {
  return link_->releases_received();
}

std::uint64_t SharedSender::arenas_created() const {
  std::lock_guard lock(mutex_);
  return next_arena_id_ - 1;
}

}  // namespace capnsplice::detail
