// How far the reader of a pipe has got, as the kernel tells it (internal).
//
// The sender counts the bytes it writes into the pipe; the kernel counts the bytes still
// in it (ioctl FIONREAD). The difference is what the reader has taken out:
//
//   stream:   [ consumed by the reader ][ still in the pipe ]
//             0                  consumed                written
//                                        <-- FIONREAD -->
//
// The send pools ask this object before they reuse memory that was vmspliced (bytes
// given to vmsplice must stay untouched until the reader has consumed them), and wait on
// it when in-flight bytes are what fills them. Data flows one way: the sender reports
// what it wrote, the pools ask; neither pools nor this object know the sender.
//
// The sender owns the descriptor. Before it closes it, it calls close(): from then on
// nothing here touches the descriptor (a number the kernel may give to another file),
// consumption is unknown, and the waits throw the error the sender gives.
#pragma once

#include <atomic>
#include <cstdint>
#include <shared_mutex>
#include <optional>
#include <string>

#include "capnsplice/deadline.h"
#include "capnsplice/error.h"

namespace capnsplice::detail {

class ReaderProgress {
 public:
  /// The write end `fd` of a pipe (owned by the caller); `context` names it in errors.
  ReaderProgress(int fd, std::string context);

  ReaderProgress(const ReaderProgress&) = delete;
  ReaderProgress& operator=(const ReaderProgress&) = delete;

  /// The sender wrote `bytes` more into the pipe. Returns the stream offset after them.
  std::uint64_t wrote(std::size_t bytes) noexcept {
    return written_.fetch_add(bytes, std::memory_order_release) + bytes;
  }

  /// Stream bytes written into the pipe so far.
  std::uint64_t written() const noexcept { return written_.load(std::memory_order_acquire); }

  /// Stream bytes the reader has taken out of the pipe, per the kernel (one system call).
  /// Never more than the truth, it may be less. Empty once the sender closed the pipe.
  std::optional<std::uint64_t> consumed_bytes();

  /// Blocks until the reader has probably consumed more, or briefly; returns at
  /// `deadline` at the latest. Throws PeerClosed when the reader is gone.
  void wait_for_reader(Deadline deadline);

  /// Throws PeerClosed when nobody can read the pipe any more (its read end is closed),
  /// without waiting: for waits whose wake-up comes from elsewhere (arena releases).
  void require_reader();

  /// The sender is about to close the descriptor; `why` is what the waits throw from now
  /// on. Waits for the calls in progress on the descriptor, waits included.
  void close(Error why);

  /// Whether the pipe takes a write now, without waiting. Throws PeerClosed when its read
  /// end is closed, and `why` of close() once closed.
  bool pipe_has_room();

 private:
  bool pipe_has_room_locked();

  const std::string context_;
  std::atomic<std::uint64_t> written_{0};
  /// Guards fd_ and closed_: shared by every use of the descriptor, so a pool asking
  /// FIONREAD never waits behind a builder waiting for the reader; close() takes it alone.
  std::shared_mutex mutex_;
  int fd_;
  std::optional<Error> closed_;
};

}  // namespace capnsplice::detail
