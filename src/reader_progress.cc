#include "reader_progress.h"

#include <poll.h>

#include <cerrno>
#include <ctime>
#include <mutex>

#include "pipe_io.h"

namespace capnsplice::detail {

ReaderProgress::ReaderProgress(int fd, std::string context)
    : context_(std::move(context)), fd_(fd) {}

std::optional<std::uint64_t> ReaderProgress::consumed_bytes() {
  std::shared_lock lock(mutex_);
  if (closed_) return std::nullopt;
  // Load `written_` before asking for the queue length: bytes written in between then
  // show up in `queued` only, which makes the result smaller, never larger.
  const std::uint64_t written = written_.load(std::memory_order_acquire);
  const std::uint64_t queued = pipe_queued_bytes(fd_, context_);
  return written > queued ? written - queued : 0;
}

bool ReaderProgress::pipe_has_room_locked() {
  if (closed_) throw *closed_;
  pollfd probe{fd_, POLLOUT, 0};
  // A zero-timeout poll still fails with EINTR when a signal is pending: try again.
  while (::poll(&probe, 1, 0) < 0) {
    if (errno != EINTR) throw_system_error(context_, "poll");
  }
  if ((probe.revents & POLLERR) != 0) {
    throw Error(ErrorCode::PeerClosed, context_, "peer closed its receiving end");
  }
  return (probe.revents & POLLOUT) != 0;
}

bool ReaderProgress::pipe_has_room() {
  std::shared_lock lock(mutex_);
  return pipe_has_room_locked();
}

void ReaderProgress::require_reader() { static_cast<void>(pipe_has_room()); }

void ReaderProgress::wait_for_reader(Deadline deadline) {
  std::shared_lock lock(mutex_);
  if (!pipe_has_room_locked()) {
    // The pipe is full: the kernel wakes us as soon as the reader frees a slot.
    wait_for(fd_, POLLOUT, deadline);
    return;
  }
  // The pipe has room, so the reader is draining what is left and no kernel event
  // marks its progress. Pause briefly; the pool asks FIONREAD again.
  const timespec pause{0, 20'000};
  ::nanosleep(&pause, nullptr);
}

void ReaderProgress::close(Error why) {
  std::unique_lock lock(mutex_);
  closed_.emplace(std::move(why));
  fd_ = -1;
}

}  // namespace capnsplice::detail
