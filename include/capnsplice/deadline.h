// capnsplice/deadline.h — when a blocking call must give up.
#pragma once

#include <chrono>
#include <optional>

namespace capnsplice {

/// A point in time (steady clock) after which a blocking call throws Timeout,
/// or "never". Value type, cheap to copy.
class Deadline {
 public:
  using Clock = std::chrono::steady_clock;

  /// Blocks for as long as it takes.
  static Deadline never() noexcept { return Deadline(); }

  /// Does not block at all: only what is possible right now.
  static Deadline immediate() noexcept { return Deadline(Clock::time_point::min()); }

  /// Gives up `timeout` from now. A timeout too long for the clock to reach
  /// (`nanoseconds::max()`, "wait forever") is never(), not an overflow that expires at
  /// once; zero or less is already expired.
  static Deadline after(std::chrono::nanoseconds timeout) noexcept {
    const Clock::time_point now = Clock::now();
    if (timeout.count() <= 0) return Deadline(now);
    if (timeout > Clock::time_point::max() - now) return never();
    return Deadline(now + timeout);
  }

  /// Gives up `timeout` from now, for any duration type: `Deadline::after(10s)` would
  /// otherwise be ambiguous between the two overloads around this one. Durations beyond
  /// what nanoseconds hold (`seconds::max()`) saturate to never().
  template <typename Rep, typename Period>
  static Deadline after(std::chrono::duration<Rep, Period> timeout) noexcept {
    using Nanoseconds = std::chrono::nanoseconds;
    // Compared in a type that holds every duration (and unsigned ones) without wrapping.
    const std::chrono::duration<long double, std::nano> wide = timeout;
    if (wide.count() >= static_cast<long double>(Nanoseconds::max().count())) return never();
    if (wide.count() <= 0) return immediate();
    return after(std::chrono::duration_cast<Nanoseconds>(timeout));
  }

  /// `never()` for an empty optional, else `after(*timeout)`.
  static Deadline after(std::optional<std::chrono::nanoseconds> timeout) noexcept {
    return timeout ? after(*timeout) : never();
  }

  bool is_never() const noexcept { return !at_; }
  bool expired() const noexcept {
    // immediate() needs no clock: asked after every write of a non-blocking call.
    return at_ && (*at_ == Clock::time_point::min() || Clock::now() >= *at_);
  }

  /// Time left (zero when expired); only meaningful when !is_never().
  std::chrono::nanoseconds remaining() const noexcept {
    if (!at_) return std::chrono::nanoseconds::max();
    if (expired()) return std::chrono::nanoseconds::zero();  // immediate() would overflow
    auto left = *at_ - Clock::now();
    return left.count() > 0 ? std::chrono::duration_cast<std::chrono::nanoseconds>(left)
                            : std::chrono::nanoseconds::zero();
  }

 private:
  Deadline() noexcept = default;
  explicit Deadline(Clock::time_point at) noexcept : at_(at) {}

  std::optional<Clock::time_point> at_;
};

}  // namespace capnsplice
