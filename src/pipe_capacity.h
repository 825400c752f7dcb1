// The capacity of the pipe a sender writes into, raised once when traffic needs it
// (internal).
//
// A pipe starts at the kernel's default (16 pages). Raising every pipe at creation spent
// the user's pipe budget (pipe-user-pages-soft: 64 MiB, 64 pipes of 1 MiB) on channels
// that may never carry a stream; past the budget the kernel gives every new pipe of that
// user 2 pages, the application's own pipes too. So a sender raises its pipe only the
// first time a write finds it full or a frame is larger than the default, and tries that
// once: a refusal is final and reported in SenderStats, never retried per message.
#pragma once

#include <cstddef>

namespace capnsplice::detail {

/// The kernel's default pipe capacity, 16 pages of 4 KiB, for a user within budget.
inline constexpr std::size_t kDefaultPipeBytes = std::size_t{64} * 1024;

/// How a sender's pipe may change size.
class PipeCapacity {
 public:
  /// A descriptor whose capacity is left alone: the application's, or not a pipe.
  PipeCapacity() noexcept = default;

  /// A pipe capnsplice made: it may be raised once to `requested` bytes (0: 1 MiB within
  /// /proc/sys/fs/pipe-max-size).
  static PipeCapacity raisable(std::size_t requested) noexcept;

  /// Whether a frame of `frame_bytes` should raise the pipe before it is written: it
  /// cannot fit a pipe of the default capacity. One comparison: asked for every frame.
  bool wants_raise_for(std::size_t frame_bytes) const noexcept {
    return pending_ && frame_bytes > kDefaultPipeBytes;
  }

  /// The one attempt to raise `fd`'s pipe (later calls do nothing but one test). Returns
  /// whether the pipe is larger now, so that a write that found it full can go on at once.
  bool raise(int fd) noexcept { return pending_ && raise_now(fd); }

  /// The pipe's capacity in bytes: known after a raise, else asked from the kernel
  /// (F_GETPIPE_SZ); 0 for a descriptor that is not a pipe or is closed.
  std::size_t bytes(int fd) const noexcept;

  /// Whether the raise was tried and the kernel refused it or granted less than asked.
  bool refused() const noexcept { return refused_; }

 private:
  std::size_t requested_ = 0;
  bool pending_ = false;  // a raise is allowed and not tried yet
  bool refused_ = false;
  std::size_t bytes_ = 0;  // after the raise: the capacity then; 0 before (unknown)

  bool raise_now(int fd) noexcept;
};

/// Sets `fd`'s pipe to `bytes` when that is below the kernel's default: a smaller pipe
/// costs no budget, and shrinking later could fail (EBUSY) once the pipe holds more.
void shrink_new_pipe(int fd, std::size_t bytes) noexcept;

}  // namespace capnsplice::detail
