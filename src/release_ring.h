// The release ring (internal): where a receiver reports the shared-memory messages it is
// done with, in memory its peer's sender reads, instead of a Release record on the
// control link (a sendmsg at the receiver and a recvmsg at the sender per message, and
// the sender's failing recvmsg on every allocation while looking for them).
//
//   one page per arena, made by the sender (ReleaseCollector) with the arena and sent
//   just before it (control record ReleaseRing); the receiver (ReleasePoster) maps it
//   when it maps the arena. Both map it read-write.
//
//   +----------------------+------------------------+-----------------------------+
//   | posted | attached    | collected | waiting    | ids[kReleaseRingSlots]      |
//   +----------------------+------------------------+-----------------------------+
//     receiver writes        sender writes (the       receiver writes ids[posted % N]
//                            receiver clears waiting)
//
//   receiver, per message dropped:          sender, per allocation (and on the trimmer):
//     room = N - (posted - collected)          take ids[collected .. posted), release each
//     ids[posted % N] = id; ++posted           (SendArena::release checks every id)
//     sender waiting? -> clear it, a Wake      waiting for room: waiting = 1, look again,
//     no room -> a Release record instead        then sleep on the link (woken by Wake)
//
// Neither side trusts the other's half. Each keeps its own counter privately and only
// publishes it: a receiver that lies makes its own messages be freed early or never (as
// a forged Release record would), and a count that runs more than N ahead breaks the
// ring for good (the sender goes back to the link). A sender that lies about `collected`
// makes the receiver fall back to Release records. The sender seals the page against
// shrinking and growing (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) before it is sent, so
// neither side's accesses can fault; the receiver refuses a page without F_SEAL_SHRINK.
//
// While the receiver has not mapped the ring (`attached` is 0), the sender reads the
// link on every allocation as before: an arena the receiver could not map is reported
// there (ArenaLost). Releases the ring does not take (full, broken, or posted from a
// fork() child) go as Release records, which the sender reads when it waits for room and
// on the trimmer thread. An honest sender holds at most kMaxHeldSharedMessages messages,
// far fewer than the slots, so an honest pair never finds the ring full.
//
// The Wake record only shortens a wait: a sender waiting for room sleeps on the link at
// most 1 ms at a time and looks again (ControlLink::nap_for_records), so a Wake that is
// lost (the link full, another thread's pump took it) costs at most that.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string_view>

#include "capnsplice/unique_fd.h"
#include "fork_generation.h"
#include "sealed_memfd.h"

namespace capnsplice::detail {

/// Bytes of a release ring's memfd: one page.
inline constexpr std::size_t kReleaseRingBytes = 4096;

/// Message ids a ring holds between two collections.
inline constexpr std::size_t kReleaseRingSlots = 480;

/// The layout of the page. Each half on its own cache lines.
struct ReleaseRingPage {
  alignas(64) std::atomic<std::uint64_t> posted;     ///< ids written so far (receiver)
  std::atomic<std::uint32_t> attached;               ///< the receiver maps the ring
  alignas(64) std::atomic<std::uint64_t> collected;  ///< ids taken so far (sender)
  std::atomic<std::uint32_t> waiting;                ///< the sender sleeps for a Wake
  alignas(64) std::atomic<std::uint64_t> ids[kReleaseRingSlots];
};
static_assert(sizeof(ReleaseRingPage) <= kReleaseRingBytes);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

/// One mapping of a ring page.
using ReleaseRingMapping = MemfdPage<ReleaseRingPage, kReleaseRingBytes>;

/// The sender's side, one per SendArena. Not thread-safe: the arena's lock guards it.
class ReleaseCollector final : public ReleaseRingMapping {
 public:
  /// A fresh sealed page and its memfd (to send with the arena). Throws SystemError.
  static std::unique_ptr<ReleaseCollector> make(std::string_view context);

  /// The memfd until it was sent (then closed: the mapping keeps the page).
  UniqueFd& memfd() noexcept { return memfd_; }

  /// Whether releases come through the ring: the receiver mapped it and never broke it.
  bool in_use() const noexcept {
    return !broken_ && page_->attached.load(std::memory_order_acquire) != 0;
  }

  /// Calls `release(id)` for every id posted since the last call and returns how many.
  /// A receiver that posted more than the ring holds broke it: none are taken, now or
  /// later (in_use() is false from then on).
  template <typename Release>
  std::size_t collect(Release&& release) {
    if (waiting_) {
      page_->waiting.store(0, std::memory_order_relaxed);
      waiting_ = false;
    }
    if (broken_) return 0;
    const std::uint64_t posted = page_->posted.load(std::memory_order_acquire);
    if (posted == collected_) return 0;
    if (posted - collected_ > kReleaseRingSlots) {
      broken_ = true;
      // A count no poster can reach: the receiver finds no room and sends records.
      page_->collected.store(~std::uint64_t{0}, std::memory_order_release);
      return 0;
    }
    for (std::uint64_t i = collected_; i != posted; ++i) {
      release(page_->ids[i % kReleaseRingSlots].load(std::memory_order_relaxed));
    }
    const std::size_t taken = posted - collected_;
    collected_ = posted;
    page_->collected.store(posted, std::memory_order_release);
    return taken;
  }

  /// About to sleep until the receiver releases something: asks for a Wake record with
  /// the next post. False when something was posted meanwhile (collect, do not sleep).
  bool ask_for_wake() noexcept;

  ReleaseCollector(void* address, UniqueFd memfd) noexcept
      : ReleaseRingMapping(address), memfd_(std::move(memfd)) {}

 private:
  UniqueFd memfd_;
  std::uint64_t collected_ = 0;
  bool waiting_ = false;
  bool broken_ = false;
};

/// The receiver's side, one per ReceiveArena; any thread may post.
class ReleasePoster final : public ReleaseRingMapping {
 public:
  /// Maps the peer's page and says so in it. Throws ProtocolViolation for one that is not
  /// a memfd of kReleaseRingBytes sealed against shrinking, SystemError when mapping fails.
  static std::unique_ptr<ReleasePoster> map(UniqueFd memfd, std::string_view context);

  enum class Posted {
    no_room,    ///< the sender has not collected (or says so): send a Release record
    posted,     ///< done
    wake_peer,  ///< done, and the sender sleeps until told: send a Wake record
  };

  /// Reports `message_id` released.
  Posted post(std::uint64_t message_id) noexcept;

  explicit ReleasePoster(void* address) noexcept;

 private:
  std::mutex mutex_;  // posts come from whichever thread drops a message
  std::uint64_t posted_ = 0;
  /// The process that mapped the ring. A fork() child that drops an inherited message
  /// does not post: its count would collide with its parent's (records instead).
  const std::uint64_t fork_generation_;
};

}  // namespace capnsplice::detail
