// System-call layer shared by senders and receivers (internal).
//
// Every function here retries EINTR, turns EPIPE into PeerClosed and other failures
// into SystemError naming the call, and never lets SIGPIPE reach the process.
#pragma once

#include <sys/uio.h>

#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "capnsplice/deadline.h"
#include "sigpipe_guard.h"

namespace capnsplice::detail {

/// How bytes go into the pipe.
enum class WriteMethod {
  copy,      ///< writev: the kernel copies the bytes; memory is reusable on return.
  vmsplice,  ///< the pipe references the pages; memory must stay untouched until read.
};

/// A gather list being written, advanced past the bytes already written.
struct IovCursor {
  iovec* iov;
  std::size_t count;

  bool empty() const noexcept { return count == 0; }
  void advance(std::size_t bytes) noexcept;
};

/// What a wait ended with.
enum class WaitResult { ready, timed_out, interrupted };

/// Waits until `fd` is ready for `events` (POLLIN / POLLOUT; hang-up and error count
/// as ready so the following call reports them), the deadline passes, or
/// `interrupt_fd` (if >= 0) becomes readable.
WaitResult wait_for(int fd, short events, Deadline deadline, int interrupt_fd = -1);

/// Like wait_for(), but first polls without sleeping for up to `spin`: a peer that
/// answers within it costs no sleep and wake-up (tens of µs on these machines). poll()
/// looks at a pipe without taking its lock, so spinning does not slow the peer down.
WaitResult spin_then_wait(int fd, short events, std::chrono::nanoseconds spin,
                          Deadline deadline, int interrupt_fd = -1);

/// One attempt to write part of the gather list. Returns bytes written, or 0 when the
/// pipe is full (EAGAIN). Throws PeerClosed or SystemError.
std::size_t write_some(int fd, WriteMethod method, const IovCursor& cursor,
                       std::string_view context, SigpipeGuard& guard);

/// One attempt to read up to `bytes` into `buffer` without blocking: vmsplice in the
/// read direction when `splice` (see reads_by_splice), read() otherwise. Returns bytes
/// read, 0 at end of stream, or -1 when nothing is ready. Throws SystemError.
long read_some(int fd, bool splice, std::byte* buffer, std::size_t bytes,
               std::string_view context);

/// Bytes written into the pipe and not yet read (ioctl FIONREAD). Works on either end.
std::size_t pipe_queued_bytes(int fd, std::string_view context);

/// Whether vmsplice maps the caller's pages into the pipe (true on the kernels this was
/// written on) or copies them (a 2026 proposal would make it copy). Probed once per
/// process: splice a page, change it, read it back — the changed bytes mean aliasing.
bool vmsplice_aliases_pages() noexcept;

/// True when `fd` is a pipe or FIFO.
bool is_pipe(int fd) noexcept;

/// What a sender or receiver needs to know of its descriptor. For a descriptor the
/// application gave, probe_descriptor() asks the kernel; for a pipe end capnsplice just
/// made, the flags it was made with are known, and a channel asks nothing.
struct DescriptorFacts {
  int flags = 0;      ///< file status flags, as F_GETFL returns them
  bool pipe = false;  ///< a pipe or FIFO
  /// A pipe capnsplice made, which its sender may raise when traffic needs it
  /// (PipeCapacity); the application's descriptors keep the capacity it gave them.
  bool raisable = false;
  std::size_t pipe_bytes = 0;  ///< what to raise it to: ChannelOptions::pipe_bytes

  bool nonblocking() const noexcept;
};

/// One fcntl(F_GETFL) and one fstat. Throws SystemError.
DescriptorFacts probe_descriptor(int fd, std::string_view context);

/// True when a receiver may read a descriptor with vmsplice: a pipe open read-only. On a
/// pipe open O_RDWR (a FIFO opened that way, a reopened /proc/self/fd) vmsplice would
/// take the write direction and splice the receive buffer into the pipe; such ends use
/// read().
bool reads_by_splice(const DescriptorFacts& facts) noexcept;

/// Throws InvalidArgument unless the descriptor is open for reading (`for_writing`
/// false) or writing. vmsplice picks its direction from the descriptor's mode, so a
/// wrong end would silently move bytes the other way.
void require_access_mode(const DescriptorFacts& facts, bool for_writing,
                         std::string_view context);

/// require_access_mode() for a descriptor not probed yet (one fcntl).
void require_access_mode(int fd, bool for_writing, std::string_view context);

/// Sets O_NONBLOCK on `fd`, whose flags are `facts.flags` (updated). Nothing to do when it
/// is set already. Throws SystemError.
void set_nonblocking(int fd, DescriptorFacts& facts, std::string_view context);

}  // namespace capnsplice::detail
