// The "host" workload's baseline: the host as a careful author writes it without
// capnsplice — one AF_UNIX socketpair per plugin, plain Cap'n Proto, an epoll loop.
//
//   * Each plugin's socket is non-blocking and registered once, edge-triggered, for
//     reading and writing (no epoll_ctl per message).
//   * Replies are read into a per-plugin buffer until a short read (the socket is then
//     drained) and read in place with FlatArrayMessageReader; the buffer is reused.
//   * Requests are built in one reused scratch segment (MallocMessageBuilder) and
//     serialised into a per-plugin output buffer; every request made while serving one
//     readiness event goes out in one write(), and what the socket does not take waits in
//     the buffer for the next EPOLLOUT edge.
//   * The loop's 1 ms tick (HostSession) is a timerfd in the same epoll set.
//
// The plugin is its mirror: blocking reads into a buffer, every complete request
// answered into an output buffer, written in one go.
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <capnsplice/unique_fd.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <span>
#include <stdexcept>
#include <vector>

#include "host_workload.h"
#include "payload.h"

namespace bench {

namespace {

using capnsplice::UniqueFd;
using capnsplice::demo::Chunk;

[[noreturn]] void throw_errno(const char* call) {
  throw std::runtime_error(std::string(call) + ": " + std::strerror(errno));
}

/// Bytes waiting to be written: appended by capnp::writeMessage, taken by write().
class OutputBuffer final : public kj::OutputStream {
 public:
  void write(const void* data, size_t size) override {
    const auto* bytes = static_cast<const std::byte*>(data);
    bytes_.insert(bytes_.end(), bytes, bytes + size);
  }
  std::span<const std::byte> pending() const { return std::span(bytes_).subspan(begin_); }
  bool empty() const { return begin_ == bytes_.size(); }
  void consume(std::size_t count) {
    begin_ += count;
    if (begin_ == bytes_.size()) {
      bytes_.clear();  // keeps its capacity
      begin_ = 0;
    } else if (begin_ > bytes_.size() / 2) {
      bytes_.erase(bytes_.begin(), bytes_.begin() + static_cast<std::ptrdiff_t>(begin_));
      begin_ = 0;
    }
  }

 private:
  std::vector<std::byte> bytes_;
  std::size_t begin_ = 0;
};

/// Incoming bytes, cut into Cap'n Proto frames that are read in place (word-aligned).
class FrameBuffer {
 public:
  struct ReadResult {
    std::size_t bytes = 0;
    bool drained = false;  ///< EAGAIN or a short read: nothing more to read now
    bool end = false;      ///< the peer closed its end
  };

  /// One read() into the free space, after moving unparsed bytes to the front and
  /// growing the buffer if the next frame needs it.
  ReadResult read_from(int fd) {
    const std::size_t unparsed = filled_ - parsed_;
    if (parsed_ > 0) std::memmove(bytes(), bytes() + parsed_, unparsed);
    filled_ = unparsed;
    parsed_ = 0;
    if (words_.size() * 8 < std::max(wanted_, filled_ + 4096)) {
      words_.resize(std::max(wanted_, filled_ + 4096) / 8 * 2);
    }
    const std::size_t space = words_.size() * 8 - filled_;
    const ssize_t got = ::read(fd, bytes() + filled_, space);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return {0, true, false};
    if (got < 0) throw_errno("read");
    filled_ += static_cast<std::size_t>(got);
    return {static_cast<std::size_t>(got), static_cast<std::size_t>(got) < space, got == 0};
  }

  /// The next complete frame in the buffer, valid until the next read_from().
  std::optional<kj::ArrayPtr<const capnp::word>> next_frame() {
    const std::size_t available = filled_ - parsed_;
    if (available < sizeof(capnp::word)) return std::nullopt;
    const auto* start = reinterpret_cast<const capnp::word*>(bytes() + parsed_);
    const std::size_t words = capnp::expectedSizeInWordsFromPrefix(
        kj::arrayPtr(start, available / sizeof(capnp::word)));
    wanted_ = words * sizeof(capnp::word);
    if (wanted_ > available) return std::nullopt;
    parsed_ += wanted_;
    return kj::arrayPtr(start, words);
  }

 private:
  std::byte* bytes() { return reinterpret_cast<std::byte*>(words_.data()); }

  std::vector<std::uint64_t> words_ = std::vector<std::uint64_t>(8192);  // 64 KiB to start
  std::size_t filled_ = 0, parsed_ = 0;
  std::size_t wanted_ = 0;  // bytes of the frame being waited for
};

/// Builds Chunks in one zeroed scratch segment, reused (capnp zeroes it again after each).
class ChunkWriter {
 public:
  explicit ChunkWriter(std::size_t payload_bytes)
      : payload_bytes_(payload_bytes), scratch_(payload_bytes / 8 + 16) {}

  void write(kj::OutputStream& out, std::uint64_t seq) {
    capnp::MallocMessageBuilder message(
        kj::arrayPtr(reinterpret_cast<capnp::word*>(scratch_.data()), scratch_.size()));
    fill_chunk(message.initRoot<Chunk>(), seq, payload_bytes_);
    capnp::writeMessage(out, message);
  }

 private:
  std::size_t payload_bytes_;
  std::vector<std::uint64_t> scratch_;
};

/// Writes what the socket takes; false when it took less than everything (full).
bool write_some(int fd, OutputBuffer& out) {
  while (!out.empty()) {
    const std::span<const std::byte> pending = out.pending();
    const ssize_t wrote = ::write(fd, pending.data(), pending.size());
    if (wrote < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
    if (wrote < 0) throw_errno("write");
    out.consume(static_cast<std::size_t>(wrote));
    if (static_cast<std::size_t>(wrote) < pending.size()) return false;
  }
  return true;
}

/// The plugin: answers every request until the host goes away.
int run_plugin(int fd, const HostPlan& plan) {
  FrameBuffer in;
  OutputBuffer out;
  ChunkWriter replies(plan.reply_bytes);
  for (;;) {
    if (in.read_from(fd).end) return 0;
    while (auto frame = in.next_frame()) {
      capnp::FlatArrayMessageReader request(*frame, bench_reader_options());
      replies.write(out, check_chunk(request.getRoot<Chunk>()));
    }
    while (!write_some(fd, out)) {  // blocking socket: a short write means "again"
    }
  }
}

struct Plugin {
  UniqueFd fd;
  FrameBuffer in;
  OutputBuffer out;
  std::uint64_t next_request = 0, next_reply = 0;
};

class EpollHost {
 public:
  EpollHost(const HostPlan& plan, std::vector<Plugin>& plugins)
      : plan_(plan), session_(plan), plugins_(plugins), requests_(plan.request_bytes) {
    add(timer_.get(), nullptr);
    for (Plugin& plugin : plugins_) add(plugin.fd.get(), &plugin);
  }

  HostOutcome run() {
    for (Plugin& plugin : plugins_) {
      for (std::size_t i = 0; i < plan_.window; ++i) requests_.write(plugin.out, plugin.next_request++);
      write_some(plugin.fd.get(), plugin.out);
    }
    arm_timer();
    std::vector<epoll_event> events(plugins_.size() + 1);
    for (;;) {
      const int ready = ::epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()), -1);
      if (ready < 0 && errno == EINTR) continue;
      if (ready < 0) throw_errno("epoll_wait");
      for (const epoll_event& event : std::span(events).first(static_cast<std::size_t>(ready))) {
        const Clock::time_point began = Clock::now();  // one step: one event served
        if (event.data.ptr != nullptr) {
          serve(*static_cast<Plugin*>(event.data.ptr));
        } else if (!on_tick()) {
          return session_.outcome();
        }
        session_.step(began);
      }
    }
  }

 private:
  void add(int fd, Plugin* plugin) {
    epoll_event event{.events = EPOLLIN | EPOLLOUT | EPOLLET, .data = {.ptr = plugin}};
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event) != 0) throw_errno("epoll_ctl");
  }

  /// Reads every reply, answers each with a new request, writes what the socket takes.
  void serve(Plugin& plugin) {
    for (;;) {
      const FrameBuffer::ReadResult read = plugin.in.read_from(plugin.fd.get());
      if (read.end) throw std::runtime_error("a plugin closed its socket");
      while (auto frame = plugin.in.next_frame()) {
        capnp::FlatArrayMessageReader reply(*frame, bench_reader_options());
        if (check_chunk(reply.getRoot<Chunk>()) != plugin.next_reply++) {
          throw std::runtime_error("a reply came out of order");
        }
        session_.count_reply();
        requests_.write(plugin.out, plugin.next_request++);
      }
      if (read.drained) break;
    }
    write_some(plugin.fd.get(), plugin.out);
  }

  bool on_tick() {
    std::uint64_t expirations = 0;
    if (::read(timer_.get(), &expirations, sizeof expirations) < 0 && errno != EAGAIN) {
      throw_errno("read(timerfd)");
    }
    if (!session_.tick()) return false;
    arm_timer();
    return true;
  }

  void arm_timer() {
    const auto since_epoch = session_.next_tick().time_since_epoch();  // CLOCK_MONOTONIC
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
    itimerspec when{.it_interval = {},
                    .it_value = {.tv_sec = seconds.count(),
                                 .tv_nsec = (since_epoch - seconds).count()}};
    if (::timerfd_settime(timer_.get(), TFD_TIMER_ABSTIME, &when, nullptr) != 0) {
      throw_errno("timerfd_settime");
    }
  }

  const HostPlan& plan_;
  HostSession session_;
  std::vector<Plugin>& plugins_;
  ChunkWriter requests_;
  UniqueFd epoll_{::epoll_create1(EPOLL_CLOEXEC)};
  UniqueFd timer_{::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)};
};

}  // namespace

HostOutcome run_socketpair_epoll_host(const HostPlan& plan) {
  std::vector<Plugin> plugins;
  plugins.reserve(plan.plugins);  // EpollHost keeps pointers to them
  std::vector<ChildProcess> children;
  children.reserve(plan.plugins);
  for (std::size_t i = 0; i < plan.plugins; ++i) {
    int ends[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends) != 0) throw_errno("socketpair");
    UniqueFd plugin_end(ends[1]);
    plugins.emplace_back().fd = UniqueFd(ends[0]);
    children.push_back(ChildProcess::spawn([&] {
      plugins.clear();  // the host's ends, this one's included: closed in the plugin
      return run_plugin(plugin_end.get(), plan);
    }));
    if (::fcntl(plugins.back().fd.get(), F_SETFL, O_NONBLOCK) != 0) throw_errno("fcntl");
  }
  return EpollHost(plan, plugins).run();
}

}  // namespace bench
