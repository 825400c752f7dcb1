// Shared-memory arenas for large messages (internal).
//
// A sender builds a large message directly in its arena; the pipe carries only a small
// descriptor (a wire::SharedMessage) and the receiver reads the message where it is.
//
//   sender (read-write)                          receiver (read-only)
//   SendArena: memfd, sealed                     ReceiveArena: the same memfd, mapped
//   +----------+---------------------+-----+     read-only inside a reservation of
//   | boost    | msg 7 segments      | ... |     zero pages:
//   | segment  | (allocated with the |     |     [ guard | arena (r--s) | guard ]
//   | manager  | rbtree allocator)   |     |     so a pointer changed while it is read
//   +----------+---------------------+-----+     lands in zeros, never outside.
//
// The arena file is a memfd: it has no name, so nothing is ever left in /dev/shm. The
// sender maps it read-write first, then seals it before the receiver sees it:
//   F_SEAL_SHRINK | F_SEAL_GROW   a sender cannot shrink it under the receiver's reads
//                                 (which would raise SIGBUS);
//   F_SEAL_FUTURE_WRITE           only mappings made before the seal can write: the
//                                 receiver's descriptor (the same open file, O_RDWR)
//                                 cannot mmap it writable, write(), fallocate() holes
//                                 into it, or mprotect its read-only mapping writable,
//                                 so it cannot touch the allocator's metadata or a
//                                 message being built (tests/hostile_peer_test.cc);
//   F_SEAL_SEAL                   and nobody can change the seals.
// ReceiveArena refuses an arena without the first and the third (ProtocolViolation;
// src/sealed_memfd.h, which the doorbell shares).
//
// The write seal also refuses the sender's own hole punching (MADV_REMOVE), so freed
// arena memory stays resident: an arena's resident size is its high-water mark
// (SendArena::footprint), at most its capacity (SenderOptions::arena_bytes), until the
// arena is destroyed. A sender therefore replaces an idle arena whose footprint passed
// SenderOptions::arena_keep_bytes and outgrew its recent use (should_retire_locked) with a
// fresh one (SharedSender): dropping the old arena is the only way to give its pages back.
//
// Allocation is Boost.Interprocess's rbtree_best_fit, placed in the arena itself. Memory
// of a message comes back when the receiver reports it done (SendArena::release), after
// checking the report.
#pragma once

#include <boost/circular_buffer.hpp>
#include <boost/container/small_vector.hpp>
#include <boost/interprocess/indexes/iset_index.hpp>
#include <boost/interprocess/managed_external_buffer.hpp>
#include <boost/interprocess/mem_algo/rbtree_best_fit.hpp>
#include <boost/interprocess/sync/mutex_family.hpp>
#include <boost/interprocess/mapped_region.hpp>
#include <capnp/common.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "capnsplice/unique_fd.h"
#include "mapped_memory.h"
#include "release_ring.h"

namespace capnsplice::detail {

class ControlLink;

/// The environment variable that switches the shared-memory path off in a process
/// ("1"): large messages then take the pipe, as on a kernel without arenas.
inline constexpr const char* kDisableSharedMemoryVariable = "CAPNSPLICE_DISABLE_SHARED_MEMORY";

/// Why this process cannot use shared-memory arenas, or empty when it can. Checked once
/// per process: kDisableSharedMemoryVariable, then a sealed memfd like an arena's
/// (memfd_create may be refused by a sandbox; F_SEAL_FUTURE_WRITE needs Linux 5.1).
/// A receiver that cannot does not say it reads shared memory, and a sender that cannot
/// does not use it, so large messages take the pipe: slower, never wrong.
const std::string& shared_memory_unavailable_reason();


/// Whether this process has the address space to map a peer's arena of the default size
/// with its guard zones (ReceiveArena: 18 GiB reserved, no memory). Probed once per
/// process (one system call without a limit, three with one): under a tight limit it does
/// not say it reads shared memory, and its peer sends by pipe. A limit lowered after the
/// first channel is not seen; mapping an arena then fails and names the cause.
bool room_for_a_peers_arena() noexcept;

/// CLOCK_MONOTONIC_COARSE (a few ns, ms resolution): for the idle-arena checks, which
/// run on every send.
std::chrono::nanoseconds coarse_now() noexcept;

/// How often a receiver looks for an idle arena to let go of, at most (senders leave it
/// to the trimmer thread, idle_trimmer.h).
inline constexpr std::chrono::milliseconds kIdleArenaCheckInterval{10};

/// One allocation in an arena: where it is, for the descriptor.
struct ArenaBlock {
  std::byte* data = nullptr;
  std::uint64_t offset = 0;  // from the start of the arena
  std::size_t bytes = 0;
};

/// The blocks of one message: usually a root and a payload, so two fit without an
/// allocation (this is on every shared message's path, several times).
using ArenaBlocks = boost::container::small_vector<ArenaBlock, 2>;

/// The sending side's arena: a sealed memfd mapped read-write, and its allocator.
class SendArena {
 public:
  /// Creates a memfd of `capacity` bytes (sparse: memory is used only when touched),
  /// maps it and seals it (see above), and its release ring (release_ring.h; without one
  /// when that fails: releases then come by the link alone). Throws SystemError naming
  /// `context`.
  SendArena(std::uint32_t id, std::size_t capacity, std::string context);
  ~SendArena();
  SendArena(const SendArena&) = delete;
  SendArena& operator=(const SendArena&) = delete;

  std::uint32_t id() const noexcept { return id_; }
  int fd() const noexcept { return file_.get(); }

  /// The release ring's memfd until forget_ring_fd(), or -1 (no ring).
  int ring_fd() const noexcept { return ring_ ? ring_->memfd().get() : -1; }
  /// The ring was sent with the arena: its descriptor is not needed any more.
  void forget_ring_fd() noexcept {
    if (ring_) ring_->memfd().reset();
  }

  struct Collected {
    std::size_t released = 0;  ///< messages held that the ring released
    /// Whether the receiver reports releases in the ring (it mapped it and keeps to it):
    /// until then they come by the link, which the sender must read.
    bool by_ring = false;
    bool should_retire = false;  ///< should_retire_locked(keep_bytes) after that
  };

  /// Releases what the receiver posted in the ring since the last call, and says whether
  /// the arena should retire then, under one lock (this is on every allocation).
  Collected collect_releases(std::size_t keep_bytes);

  /// Before sleeping on the link until the receiver releases something: with a ring in
  /// use, asks the receiver for a Wake record with its next post. False when something
  /// was posted meanwhile: collect instead of sleeping. (Without a ring, releases come as
  /// records, which wake the sleeper themselves.)
  bool ask_for_wake();
  std::size_t capacity() const noexcept { return capacity_; }

  /// `bytes` of memory (zeroed if `zeroed`), or empty when the arena has no room now.
  std::optional<ArenaBlock> allocate(std::size_t bytes, bool zeroed);

  /// What allocate_if_room() did and saw, all under one lock.
  struct Attempt {
    std::optional<ArenaBlock> block;
    std::size_t held = 0;        ///< messages held for the receiver
    std::size_t held_bytes = 0;  ///< bytes of their blocks (not of those being built)
    std::size_t in_use = 0;      ///< bytes_in_use()
  };

  /// allocate(), unless the receiver holds `max_held` messages or `max_held_bytes`.
  Attempt allocate_if_room(std::size_t bytes, bool zeroed, std::size_t max_held,
                           std::size_t max_held_bytes);

  /// Gives back a block that never left this process (message dropped unsent).
  void free(const ArenaBlock& block);

  /// Hands the blocks of a sent message over until the receiver reports `message_id`.
  void hold_until_released(std::uint64_t message_id, ArenaBlocks blocks);

  /// The receiver is done with `message_id`: frees its blocks. Returns false (and
  /// changes nothing) when no message with that id is held: a report is never trusted
  /// without that check.
  bool release(std::uint64_t message_id);

  /// The receiver is gone: nothing held can be read any more; frees everything.
  void release_all();

  /// Bytes in blocks held for the receiver or being built.
  std::size_t bytes_in_use() const;

  /// True when no block is held for the receiver or being built (not even an empty one):
  /// nothing anywhere refers to this arena's memory, so it can be dropped.
  bool idle() const;

  /// The end of the furthest block ever handed out, from the arena's start (the
  /// allocator's own header included), in whole pages. Best fit hands out the start of
  /// the smallest free block that fits, so the untouched rest of the arena is cut into
  /// only when nothing below fits: this is the arena's high-water mark. Every page it
  /// has made resident lies below it and stays so until the arena is destroyed.
  std::size_t footprint() const;

  /// Freed blocks kept for reuse (see recently_freed_), and their bytes.
  std::size_t kept_blocks() const;
  std::size_t kept_bytes() const;

  /// The peer could not take this arena's descriptor (it was out of descriptors) or
  /// could not map it.
  void mark_lost_by_peer() noexcept { lost_by_peer_.store(true, std::memory_order_relaxed); }
  bool lost_by_peer() const noexcept { return lost_by_peer_.load(std::memory_order_relaxed); }

  /// True when the arena is idle, has been since `idle_for` before `now` (coarse_now()),
  /// and keeps pages resident: nothing is coming to reuse them.
  bool idle_and_resident(std::chrono::nanoseconds now, std::chrono::nanoseconds idle_for) const;

 private:
  using Allocator = boost::interprocess::basic_managed_external_buffer<
      char, boost::interprocess::rbtree_best_fit<boost::interprocess::null_mutex_family>,
      boost::interprocess::iset_index>;

  /// True when the arena is idle and keeps more pages resident (footprint) than both
  /// `keep_bytes` and twice the most its last busy spell (from a first block to idle
  /// again) had in use at once: the pages no longer earn their keep. A stream of large
  /// messages reusing the same pages keeps its arena, since refaulting them every time
  /// would cost more than the copy the arena saves; a burst followed by smaller
  /// messages gives its pages back. Also true once idle after the peer said it lost the
  /// arena's descriptor (mark_lost_by_peer): no message in it can reach the peer.
  bool should_retire_locked(std::size_t keep_bytes) const;
  std::optional<ArenaBlock> allocate_locked(std::size_t bytes, bool zeroed);
  void free_locked(const ArenaBlock& block);
  /// A kept block of exactly `bytes` (see recently_freed_), or null.
  void* take_recently_freed(std::size_t bytes) noexcept;

  /// Keeps a freed block for reuse (recently_freed_), or gives it to the allocator.
  void keep_or_deallocate_locked(const ArenaBlock& block);

  /// Freed blocks of at most kLargestKeptBlock kept out of the allocator, the latest
  /// last: the next request of the same size takes one back without the allocator's tree
  /// (about a third of a small shared message's sending work, callgrind). At most
  /// kKeptBlocks (what a sender may hold unreleased, kMaxHeldSharedMessages, taken back
  /// at once after a wait, for two blocks each) and kKeptBytes, so that the holes they
  /// leave cannot push the arena's footprint up by more (a soak test of random sizes grew
  /// by 160 MiB without the bounds); the oldest go back past either, and all of them when
  /// a request finds no room.
  struct KeptBlock {
    std::size_t bytes;
    void* memory;
  };
  static constexpr std::size_t kKeptBlocks = 256;
  static constexpr std::size_t kKeptBytes = std::size_t{4} << 20;
  static constexpr std::size_t kLargestKeptBlock = std::size_t{64} << 10;
  bool release_locked(std::uint64_t message_id);

  const std::uint32_t id_;
  const std::size_t capacity_;
  const std::string context_;
  UniqueFd file_;
  boost::interprocess::mapped_region region_;
  mutable std::mutex mutex_;
  Allocator allocator_;
  std::map<std::uint64_t, ArenaBlocks> held_;  // message id -> its blocks
  std::unique_ptr<ReleaseCollector> ring_;  // null: releases come by the link alone
  boost::circular_buffer<KeptBlock> recently_freed_{kKeptBlocks};
  std::size_t kept_bytes_ = 0;  // in recently_freed_
  std::size_t bytes_in_use_ = 0;
  std::size_t held_bytes_ = 0;
  std::size_t blocks_in_use_ = 0;  // held or being built; empty blocks count too
  std::size_t footprint_ = 0;
  std::size_t busy_peak_ = 0;       // most bytes in use since the arena was last idle
  std::size_t last_busy_peak_ = 0;  // the same for the busy spell before that
  std::atomic<bool> lost_by_peer_{false};
  std::chrono::nanoseconds idle_since_ = coarse_now();  // coarse_now() when last idle
};

/// The receiving side's view of a peer's arena.
class ReceiveArena {
 public:
  /// Checks that `file` is a memfd of `capacity` bytes sealed against shrinking and
  /// against new writable uses (F_SEAL_FUTURE_WRITE), and maps it read-only between
  /// guard zones. Throws MalformedFrame (a peer sent something that is not a usable
  /// arena, naming what is missing) or SystemError.
  ReceiveArena(std::uint32_t id, UniqueFd file, std::size_t capacity, std::string_view context);

  std::uint32_t id() const noexcept { return id_; }
  std::size_t capacity() const noexcept { return capacity_; }

  /// Maps the release ring the peer sent with this arena (ControlLink::take_release_ring);
  /// one it cannot use (wrong size or seals, no address space) is closed, and releases go
  /// by the link, as to a peer that sent none.
  void attach_release_ring(UniqueFd memfd, std::string_view context) noexcept;

  /// Tells the peer it may free `message_id`: in the ring when there is one with room,
  /// else a Release record on `link`. Never blocks or throws.
  void report_released(std::uint64_t message_id, ControlLink& link) noexcept;

  /// The words at [offset, offset + words * 8) of the arena, or empty when that range
  /// is not inside it or not 8-byte aligned.
  std::optional<kj::ArrayPtr<const capnp::word>> segment(std::uint64_t offset,
                                                         std::uint64_t words) const noexcept;

  /// Start of the mapping (for tests).
  const std::byte* data() const noexcept { return data_; }

 private:
  const std::uint32_t id_;
  const std::size_t capacity_;
  /// Guard, arena, guard: all readable, never writable. The arena is mapped over its
  /// middle, so unmapping the reservation releases everything in one call.
  MappedMemory reservation_;
  const std::byte* data_ = nullptr;
  std::unique_ptr<ReleasePoster> ring_;  // null: releases go by the link
};

/// Bytes of zero pages kept readable on each side of a received arena. A Cap'n Proto
/// pointer reaches at most 2^29 words (4 GiB) from where it is read, and a list at most
/// 2^29 words beyond: one hop from inside the arena never leaves the reservation, and
/// the zeros there read as null pointers, which end any traversal.
inline constexpr std::size_t kArenaGuardBytes = std::size_t{8} << 30;

/// The address space a receiver reserves for a peer's arena of `capacity` bytes: the
/// arena between its two guard zones.
constexpr std::size_t arena_reservation_bytes(std::size_t capacity) noexcept {
  return capacity + 2 * kArenaGuardBytes;
}

}  // namespace capnsplice::detail
