#include "pipe_io.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <ctime>

#include "capnsplice/error.h"
#include "capnsplice/unique_fd.h"

namespace capnsplice::detail {

void IovCursor::advance(std::size_t bytes) noexcept {
  while (bytes > 0 && count > 0) {
    if (bytes >= iov->iov_len) {
      bytes -= iov->iov_len;
      ++iov;
      --count;
    } else {
      iov->iov_base = static_cast<char*>(iov->iov_base) + bytes;
      iov->iov_len -= bytes;
      bytes = 0;
    }
  }
  // Skip empty entries so empty() is exact.
  while (count > 0 && iov->iov_len == 0) {
    ++iov;
    --count;
  }
}

WaitResult wait_for(int fd, short events, Deadline deadline, int interrupt_fd) {
  pollfd fds[2] = {{fd, events, 0}, {interrupt_fd, POLLIN, 0}};
  const nfds_t count = interrupt_fd >= 0 ? 2 : 1;
  for (;;) {
    timespec timeout{};
    timespec* timeout_ptr = nullptr;
    if (!deadline.is_never()) {
      auto left = deadline.remaining();
      timeout.tv_sec = static_cast<time_t>(left.count() / 1'000'000'000);
      timeout.tv_nsec = static_cast<long>(left.count() % 1'000'000'000);
      timeout_ptr = &timeout;
    }
    int ready = ::ppoll(fds, count, timeout_ptr, nullptr);
    if (ready < 0) {
      if (errno == EINTR) continue;
      throw_system_error("", "ppoll");
    }
    if (ready == 0) return WaitResult::timed_out;
    if (count == 2 && fds[1].revents != 0) return WaitResult::interrupted;
    return WaitResult::ready;
  }
}

WaitResult spin_then_wait(int fd, short events, std::chrono::nanoseconds spin,
                          Deadline deadline, int interrupt_fd) {
  // A deadline already passed (a non-blocking call) looks once: no spin, no yield.
  if (spin.count() > 0 && !deadline.expired()) {
    const auto stop = std::chrono::steady_clock::now() + spin;
    do {
      const WaitResult result = wait_for(fd, events, Deadline::immediate(), interrupt_fd);
      if (result != WaitResult::timed_out) return result;
      // When the peer waits for this very core, spinning would only delay it: let it
      // run. With a core of its own the call returns at once.
      ::sched_yield();
    } while (std::chrono::steady_clock::now() < stop && !deadline.expired());
  }
  return wait_for(fd, events, deadline, interrupt_fd);
}

std::size_t write_some(int fd, WriteMethod method, const IovCursor& cursor,
                       std::string_view context, SigpipeGuard& guard) {
  const auto count = static_cast<int>(std::min<std::size_t>(cursor.count, IOV_MAX));
  for (;;) {
    ssize_t written = method == WriteMethod::vmsplice
                          ? ::vmsplice(fd, cursor.iov, count, SPLICE_F_NONBLOCK)
                          : ::writev(fd, cursor.iov, count);
    if (written >= 0) return static_cast<std::size_t>(written);
    switch (errno) {
      case EINTR:
        continue;
      case EAGAIN:
        return 0;
      case EPIPE:
        guard.saw_broken_pipe();
        throw Error(ErrorCode::PeerClosed, context, "peer closed its receiving end");
      default:
        throw_system_error(context, method == WriteMethod::vmsplice ? "vmsplice" : "writev");
    }
  }
}

long read_some(int fd, bool splice, std::byte* buffer, std::size_t bytes,
               std::string_view context) {
  for (;;) {
    ssize_t got;
    if (splice) {
      iovec target{buffer, bytes};
      got = ::vmsplice(fd, &target, 1, SPLICE_F_NONBLOCK);
    } else {
      got = ::read(fd, buffer, bytes);
    }
    if (got >= 0) return static_cast<long>(got);
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return -1;
    throw_system_error(context, splice ? "vmsplice (read)" : "read");
  }
}

std::size_t pipe_queued_bytes(int fd, std::string_view context) {
  int queued = 0;
  if (::ioctl(fd, FIONREAD, &queued) != 0) throw_system_error(context, "ioctl(FIONREAD)");
  return static_cast<std::size_t>(queued);
}

bool vmsplice_aliases_pages() noexcept {
  static const bool aliases = [] {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return true;  // cannot tell: assume the worst
    UniqueFd read_end(fds[0]);
    UniqueFd write_end(fds[1]);
    const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    void* memory = ::mmap(nullptr, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) return true;
    auto* bytes = static_cast<unsigned char*>(memory);
    std::memset(bytes, 'A', page);
    iovec spliced{bytes, page};
    bool result = true;
    if (::vmsplice(write_end.get(), &spliced, 1, SPLICE_F_NONBLOCK) == static_cast<ssize_t>(page)) {
      std::memset(bytes, 'B', page);  // after the splice: an aliasing pipe now holds 'B's
      unsigned char first = 0;
      result = ::read(read_end.get(), &first, 1) == 1 && first == 'B';
    }
    ::munmap(memory, page);
    return result;
  }();
  return aliases;
}

bool is_pipe(int fd) noexcept {
  struct stat info {};
  return ::fstat(fd, &info) == 0 && S_ISFIFO(info.st_mode);
}

DescriptorFacts probe_descriptor(int fd, std::string_view context) {
  DescriptorFacts facts;
  facts.flags = ::fcntl(fd, F_GETFL);
  if (facts.flags < 0) throw_system_error(context, "fcntl(F_GETFL)");
  facts.pipe = is_pipe(fd);
  return facts;
}

bool DescriptorFacts::nonblocking() const noexcept { return (flags & O_NONBLOCK) != 0; }

bool reads_by_splice(const DescriptorFacts& facts) noexcept {
  return facts.pipe && (facts.flags & O_ACCMODE) == O_RDONLY;
}

void require_access_mode(const DescriptorFacts& facts, bool for_writing,
                         std::string_view context) {
  const int mode = facts.flags & O_ACCMODE;
  const bool ok = mode == O_RDWR || mode == (for_writing ? O_WRONLY : O_RDONLY);
  if (!ok) {
    throw Error(ErrorCode::InvalidArgument, context,
                for_writing ? "descriptor is not open for writing (the read end of a pipe?)"
                            : "descriptor is not open for reading (the write end of a pipe?)");
  }
}

void require_access_mode(int fd, bool for_writing, std::string_view context) {
  DescriptorFacts facts;
  facts.flags = ::fcntl(fd, F_GETFL);
  if (facts.flags < 0) throw_system_error(context, "fcntl(F_GETFL)");
  require_access_mode(facts, for_writing, context);
}

void set_nonblocking(int fd, DescriptorFacts& facts, std::string_view context) {
  if ((facts.flags & O_NONBLOCK) != 0) return;
  if (::fcntl(fd, F_SETFL, facts.flags | O_NONBLOCK) < 0) {
    throw_system_error(context, "fcntl(O_NONBLOCK)");
  }
  facts.flags |= O_NONBLOCK;
}

}  // namespace capnsplice::detail
