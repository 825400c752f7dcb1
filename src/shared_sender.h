// The sending half of the shared-memory path (internal): arena allocation and message
// descriptors. The path as a whole is described in shared_path.h.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <capnp/message.h>

#include "capnsplice/deadline.h"
#include "capnsplice/error.h"
#include "capnsplice/options.h"
#include "control_link.h"
#include "flush_queued.h"
#include "fork_generation.h"
#include "idle_trimmer.h"
#include "reader_progress.h"
#include "shared_arena.h"

namespace capnsplice::detail {

/// The sending half: arena allocation and message descriptors.
class SharedSender final : public Trimmable {
 public:
  /// Descriptors go into the pipe that `progress` tells about; arenas are announced and
  /// released over `link`.
  SharedSender(std::shared_ptr<ControlLink> link, std::shared_ptr<ReaderProgress> progress,
               const SenderOptions& options, std::string context);
  ~SharedSender() { unschedule(); }

  /// True when a request of `bytes` goes to the arena: it is at least the threshold (or
  /// the path is SendPath::shared_memory), this process can make arenas, the current
  /// arena (if any) is this process's own (arena_generation_) and the peer said it reads
  /// shared-memory messages.
  bool wants(std::size_t bytes);

  /// False when this process cannot make arenas (shared_memory_unavailable_reason()).
  bool available() const noexcept { return available_.load(std::memory_order_relaxed); }

  /// True when every segment goes to the arena (SendPath::shared_memory).
  bool everything() const noexcept { return everything_; }

  /// False in a fork() child whose inherited arena is its parent's: the blocks of a
  /// builder it inherited are the parent's, to be neither freed nor described here.
  bool arena_is_ours() const noexcept {
    return !has_arena_.load(std::memory_order_relaxed) ||
           arena_generation_.load(std::memory_order_relaxed) == fork_generation();
  }

  /// True when a message built in this sender's arena can go by descriptor: the arena is
  /// this process's (arena_is_ours()) and the peer has not lost it (a lost arena is kept
  /// until idle, so a message built in it before the loss was known must take the pipe).
  bool can_describe() const;

  /// Arena memory for a message being built, from a fresh arena when the current one
  /// should retire (SendArena::should_retire_locked). While the arena is full of messages
  /// the reader holds, waits for it to release some, until `deadline` (then Timeout). When
  /// it holds none and there is still no room, no release can make any: throws
  /// MessageTooLarge at once (one message's objects add up to more than the arena). It
  /// cannot tell which message the unsent blocks belong to, so messages built on other
  /// threads at the same time that fill the arena also make it fail rather than wait.
  /// Empty when no arena could be made here after all (memfd_create refused, RLIMIT_AS):
  /// available() is false from then on and the caller takes the pipe pool instead. Empty
  /// too, without waiting, when the arena has no room and `deadline` had already passed
  /// on entry (a caller that may not wait: the message takes the pipe).
  /// Queued messages hold blocks too, released only once written and read: before it
  /// waits, it has `flush_queued` write them.
  std::optional<ArenaBlock> allocate(std::size_t bytes, bool zeroed, Deadline deadline,
                                     const FlushQueued& flush_queued);

  /// Unzeroed arena memory for part of a message that already holds arena blocks (so
  /// the arena cannot be replaced under it), without taking in releases first (a system
  /// call) or the checks for starting a new message; empty when there is no room now.
  std::optional<ArenaBlock> allocate_more(std::size_t bytes);

  /// Drops the arena once it has been idle (nothing held or being built) for
  /// SenderOptions::arena_idle_retire_after, whatever its footprint, and tells the peer:
  /// an idle channel keeps no arena pages. Called by the trimmer thread, which takes in
  /// the reader's releases first.
  bool trim_if_idle() noexcept override;

  /// Gives back a block of a message that was dropped unsent.
  void free(const ArenaBlock& block);

  /// Moves every one of a message's `segments` into the arena (copying those that are
  /// not in its `blocks` yet), holds them under a new message id (taking `blocks`, which
  /// it leaves empty), and builds the descriptor into `descriptor`. Returns the id.
  /// Copying waits for arena room like allocate(), until `deadline`; without room by
  /// then it throws Overloaded. On any failure `blocks` are as they were: the message is
  /// still whole and the caller's.
  std::uint64_t describe(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                         ArenaBlocks& blocks,
                         capnp::MessageBuilder& descriptor, Deadline deadline,
                         const FlushQueued& flush_queued);

  /// The descriptor of `message_id` could not be sent: free its blocks.
  void abandon(std::uint64_t message_id);

  std::uint64_t arena_bytes_in_use() const;

  /// Arenas made so far: the first, then one per replacement (and one per announcement
  /// that timed out, whose id is used up).
  std::uint64_t arenas_created() const;

  /// Messages the reader released through the release ring (release_ring.h), and by a
  /// Release record on the link.
  std::uint64_t releases_by_ring() const noexcept {
    return releases_by_ring_.load(std::memory_order_relaxed);
  }
  std::uint64_t releases_by_record() const noexcept;

 private:
  /// Overloaded: a copy into the arena found no room by its deadline.
  Error arena_full_error() const;
  /// The arena to allocate from, with what the reader released taken in, made or
  /// replaced first when it should be (see allocate()). Called with `mutex_` held, and
  /// the allocation made before it is let go: blocks are made only in the current
  /// arena, so a replaced arena stays idle. A replaced arena is handed to `replaced`,
  /// for the caller to let go of after unlocking (unmapping it takes ~70 ms per GiB).
  /// Null when there is no arena and none can be made.
  SendArena* arena_for_allocation_locked(std::shared_ptr<SendArena>& replaced, Deadline deadline);
  /// The current arena, which every live block is in (none before the first allocation).
  std::shared_ptr<SendArena> current_arena() const;
  /// Drops the arena if it has been idle for idle_retire_after_, whatever its footprint,
  /// and tells the peer. Returns whether this end still has one.
  bool retire_arena_if_idle();
  /// Takes in what the reader posted in `arena`'s ring and decides whether the next
  /// allocation reads the link too. Returns SendArena::should_retire_locked. `mutex_` held.
  bool collect_releases_locked(SendArena& arena);

  std::shared_ptr<ControlLink> link_;
  const std::shared_ptr<ReaderProgress> progress_;
  const std::size_t threshold_;
  const bool everything_;
  const std::size_t capacity_;
  const std::size_t keep_bytes_;
  std::atomic<bool> available_;  // false also once making an arena failed
  const std::chrono::nanoseconds idle_retire_after_;
  const std::string context_;
  /// fork_generation() of the process that made the current arena: only it allocates
  /// there. A fork() child that inherited an arena keeps to the pipe; one that inherited
  /// a sender without an arena (fork_with_channel) makes its own.
  std::atomic<std::uint64_t> arena_generation_{0};
  std::atomic<bool> has_arena_{false};                     // arena_ is set
  mutable std::mutex mutex_;  // guards the arena, its replacement and the ids
  std::shared_ptr<SendArena> arena_;
  std::uint32_t next_arena_id_ = 1;
  std::uint64_t next_message_id_ = 1;
  bool ring_seen_ = false;  // the current arena's reader took to its ring
  /// Whether an allocation reads the link before it looks for room (collect_releases_locked).
  std::atomic<bool> read_link_for_releases_{true};
  std::atomic<std::uint64_t> releases_by_ring_{0};  // written under `mutex_`
};

}  // namespace capnsplice::detail
