// The control socket pair of a Channel::pair() (internal), made when first needed.
//
// Both ends of such a pair live in this process, and most pairs never send a message
// large enough for the shared-memory path: their control link would cost two
// descriptors for nothing. So the two ends' ControlLinks share one ControlPair, which
// makes the SOCK_SEQPACKET socketpair only when one end needs the link (its sender is
// about to use the peer's announcement and send an arena). Until then a link has no
// socket: nothing can come to it, and the one record it may owe — its receiver's
// AcceptsShared — is kept here as a flag that the peer's link reads instead of the
// record (both ends are in this process, or in a fork() of it that copied the flag).
// Once made, both links work exactly as with an eagerly made pair.
//
// fork() copies a pair not made yet into the child, where making it would connect
// nothing to the parent: a pthread_atfork handler makes every pair still to be made
// before any fork(), and none is made lazily after one (posix_spawn runs no handler).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>

namespace capnsplice::detail {

/// What an end said it takes of descriptors (its ReceiveLimits): per message, and
/// waiting in all (what its peer's sender may have in flight).
struct DescriptorLimits {
  std::uint32_t per_message = 0;
  std::uint32_t waiting = 0;
};

class ControlPair {
 public:
  /// A pair not made yet, of the channel `name` (for its links' error messages).
  explicit ControlPair(std::string name);
  ~ControlPair();

  ControlPair(const ControlPair&) = delete;
  ControlPair& operator=(const ControlPair&) = delete;

  /// The socket of end `side` (0 or 1), -1 while the pair is not made or once that end
  /// closed it. Lock-free, for the link of that end.
  int fd(int side) const noexcept { return fds_[side].load(std::memory_order_acquire); }

  /// Makes the pair unless made already (then true). False, with nothing made, when an
  /// end went before it was made, after a fork() that found it unmade and could not make
  /// it, or when socketpair() fails now (out of descriptors: the next call tries again).
  bool make();

  /// End `side` reads shared-memory messages. True when the pair is not made yet: the
  /// peer's link learns it from announced() instead of a record. False when it is made:
  /// the link sends the record itself.
  bool defer_announcement(int side);

  /// Whether end `side` said it reads shared-memory messages before the pair was made.
  bool announced(int side) const;

  /// End `side` takes descriptors within `limits`: as defer_announcement().
  bool defer_descriptor_announcement(int side, DescriptorLimits limits);

  /// What end `side` said it takes before the pair was made (none: nothing).
  std::optional<DescriptorLimits> announced_descriptor_limits(int side) const;

  /// End `side`'s link is gone: its socket closes, so the peer's link sees the end of
  /// the link as with an eager pair, and the pair is never made from now on.
  void close(int side) noexcept;

  /// Makes the pair unless an end is gone, and then never lazily again (before fork()).
  void make_for_fork() noexcept;

  /// The channel's name. Its links say "channel 'name': control" only in an error: a
  /// pair that never fails makes no such string.
  const std::string& name() const noexcept { return name_; }

 private:
  friend struct ControlPairRegistry;

  bool make_locked();

  const std::string name_;
  mutable std::mutex mutex_;
  std::array<std::atomic<int>, 2> fds_{-1, -1};  // written under `mutex_`
  std::array<bool, 2> announced_{false, false};
  std::array<std::optional<DescriptorLimits>, 2> descriptor_limits_{};
  std::array<bool, 2> closed_{false, false};
  bool made_ = false;
  bool frozen_ = false;  // a fork() found the pair unmade: never made lazily after
  ControlPair* previous_ = nullptr;  // in the registry (ControlPairRegistry)
  ControlPair* next_ = nullptr;
};

}  // namespace capnsplice::detail
