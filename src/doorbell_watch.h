// What a receiver keeps of its peer's doorbell (internal; the doorbell: doorbell.h).
//
// The receiver tells the watch about every read of the pipe; the watch then knows when
// the pipe was last found empty and what the counter said just before that read. Until
// the counter moves, nothing new came from the ringing sender, so a receive that would
// spin watches the counter and skips the read that would fail, and try_receive_spinning()
// answers "nothing" without a system call (but for one read in kDoorbellTrustedLooks).
//
// A writer that does not ring (a raw write() to the pipe, a copy of the sender forked
// before its first write: it made a doorbell of its own, which the receiver never took)
// shows as bytes the doorbell did not announce: the pipe polled readable, or a read that
// the doorbell said was useless found bytes, with no ring since the pipe was found empty
// and no write of the ringing sender in progress (missed_unless_rung_since()).
// kMaxMisses of them among kMissWindow reads stop the watch (ReceiverStats::doorbell
// turns false), and the receiver polls the pipe as without a doorbell.
//
//   read begins ── seen = counter ──> read returns less than asked (pipe empty)
//        quiet() == (counter == seen): no write of the ringing sender since
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string_view>

#include "capnsplice/deadline.h"
#include "doorbell.h"

namespace capnsplice::detail {

class ControlLink;

/// Misses (see above) that stop the watch, when they come within this many reads.
inline constexpr std::uint32_t kMaxMisses = 8;
inline constexpr std::uint32_t kMissWindow = 1024;

class DoorbellWatch {
 public:
  /// `wanted` (ReceiverOptions::doorbell) and a link: looks for the peer's doorbell.
  DoorbellWatch(bool wanted, std::shared_ptr<ControlLink> link);
  ~DoorbellWatch();
  DoorbellWatch(const DoorbellWatch&) = delete;
  DoorbellWatch& operator=(const DoorbellWatch&) = delete;

  /// Whether it watches a doorbell.
  bool active() const noexcept { return reader_ != nullptr; }

  /// Takes the peer's doorbell from the link if it came, at most once a millisecond and
  /// only while one is wanted and none is watched. A doorbell that is not one (a hostile
  /// or broken peer) or that cannot be mapped ends the search: the receiver polls the
  /// pipe as without (ReceiverStats::doorbell stays false).
  void look_for_it(std::string_view context) noexcept {
    if (link_) look_on_link(context);
  }

  /// Call right before each read of the pipe.
  void before_read() noexcept {
    if (reader_) before_read_ = reader_->rings();
  }
  /// Call after it: `emptied` when the read returned less than it asked (the pipe is
  /// empty now), not at the end of the stream.
  void after_read(bool emptied) noexcept {
    seen_ = before_read_;
    seen_valid_ = reader_ != nullptr && emptied;
    if (++reads_ % kMissWindow == 0) misses_ = 0;
  }

  /// What the counter said when the pipe was last found empty (while quiet()).
  std::uint64_t seen() const noexcept { return seen_; }

  /// There were bytes in the pipe although quiet() said none came, with the counter at
  /// `seen`: a miss, unless the ringing sender rang since or is writing. quiet() is false
  /// until the next read; kMaxMisses misses stop the watch.
  void missed_unless_rung_since(std::uint64_t seen) noexcept;

  /// The pipe was found empty, the doorbell has not rung since and no write is under way.
  bool quiet() const noexcept {
    return seen_valid_ && reader_->rings() == seen_ && reader_->writing() == 0;
  }

  /// The doorbell rang since the pipe was last found empty.
  bool rang() const noexcept { return reader_ && reader_->rings() != seen_; }

  /// After quiet() said so: true once every kDoorbellTrustedLooks calls, when a busy poll
  /// reads for real (for writers that do not ring, and the end of the stream).
  bool time_for_a_real_read() noexcept { return ++trusted_looks_ % kDoorbellTrustedLooks == 0; }

  /// After quiet(): watches the counters until a write begins or rings (true), or `spin`
  /// or `deadline` passes, or `stop` (an interrupt) says so (false). Yields the core now and then, for
  /// a peer that shares it.
  template <class Stop>
  bool spin_until_rung(std::chrono::nanoseconds spin, Deadline deadline, Stop stop) const;

  /// One look of a spin: lets the other hyperthread of the core run meanwhile.
  static void pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

 private:
  void look_on_link(std::string_view context) noexcept;
  static void yield_now() noexcept;

  std::shared_ptr<ControlLink> link_;  // while a doorbell is still wanted
  std::unique_ptr<DoorbellReader> reader_;
  std::chrono::steady_clock::time_point next_look_{};
  std::uint64_t before_read_ = 0;
  std::uint64_t seen_ = 0;
  bool seen_valid_ = false;
  std::uint32_t trusted_looks_ = 0;
  std::uint32_t reads_ = 0;
  std::uint32_t misses_ = 0;
};

template <class Stop>
bool DoorbellWatch::spin_until_rung(std::chrono::nanoseconds spin, Deadline deadline,
                                    Stop stop) const {
  if (spin.count() <= 0 || deadline.expired()) return !quiet();
  const auto until = std::chrono::steady_clock::now() + spin;
  for (std::uint32_t looks = 1;; ++looks) {
    if (!quiet()) return true;
    if (stop()) return false;
    pause();
    if (looks % 64 == 0) {  // a clock read costs more than a look
      if (std::chrono::steady_clock::now() >= until || deadline.expired()) return false;
      if (looks % 256 == 0) yield_now();
    }
  }
}

}  // namespace capnsplice::detail
