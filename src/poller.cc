#include "capnsplice/poller.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>

#include "capnsplice/error.h"

namespace capnsplice {
namespace {

constexpr const char* kContext = "poller";
constexpr int kMaxEventsPerWait = 64;

/// Milliseconds to wait for `deadline`, rounded up so a wait never ends early.
int timeout_ms(Deadline deadline) {
  if (deadline.is_never()) return -1;
  const auto left = deadline.remaining().count();
  const auto ms = (left + 999'999) / 1'000'000;
  return static_cast<int>(std::min<decltype(ms)>(ms, INT_MAX));
}

}  // namespace

Poller::Poller()
    : epoll_(::epoll_create1(EPOLL_CLOEXEC)), wake_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (!epoll_) throw_system_error(kContext, "epoll_create1");
  if (!wake_) throw_system_error(kContext, "eventfd");
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.fd = wake_.get();
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &event) != 0) {
    throw_system_error(kContext, "epoll_ctl");
  }
}

void Poller::watch(int fd, Entry entry) {
  epoll_event event{};
  event.events = EPOLLIN;  // EPOLLHUP and EPOLLERR are always reported
  event.data.fd = fd;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event) != 0) {
    const std::string what = entry.channel != nullptr
                                 ? "add channel '" + entry.channel->name() + "'"
                                 : "add descriptor " + std::to_string(fd);
    throw_system_error(std::string(kContext) + ": " + what, "epoll_ctl");
  }
  entries_[fd] = entry;
}

void Poller::add(Channel& channel, std::uint64_t key) {
  watch(channel.receive_fd(), {&channel, key});
}

void Poller::add(int fd, std::uint64_t key) { watch(fd, {nullptr, key}); }

void Poller::remove(int fd) {
  auto found = entries_.find(fd);
  if (found == entries_.end()) return;
  if (found->second.write_watch >= 0) {
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, found->second.write_watch, nullptr);
    write_watches_.erase(found->second.write_watch);
  }
  entries_.erase(found);
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
}

void Poller::update_write_interest() {
  for (auto& [fd, entry] : entries_) {
    if (entry.channel == nullptr) continue;
    const bool wanted = entry.channel->unsent_bytes() != 0;
    if (wanted == (entry.write_watch >= 0)) continue;
    if (wanted) {
      const int watch = entry.channel->watch_fd();
      epoll_event event{};
      event.events = EPOLLIN;  // the watch descriptor is readable when the pipe has room
      event.data.fd = watch;
      if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, watch, &event) != 0) {
        throw_system_error(std::string(kContext) + ": watch channel '" + entry.channel->name() +
                               "' for room",
                           "epoll_ctl");
      }
      entry.write_watch = watch;
      write_watches_[watch] = fd;
    } else {
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, entry.write_watch, nullptr);
      write_watches_.erase(entry.write_watch);
      entry.write_watch = -1;
    }
  }
}

PollEvent& Poller::event_for(int fd, const Entry& entry) {
  auto found = std::find_if(events_.begin(), events_.end(),
                            [fd](const PollEvent& event) { return event.fd == fd; });
  if (found != events_.end()) return *found;
  events_.push_back(PollEvent{entry.key, entry.channel, fd, false, false, false});
  return events_.back();
}

std::span<const PollEvent> Poller::wait(Deadline deadline) {
  events_.clear();
  update_write_interest();
  // Complete messages already buffered do not make a descriptor readable.
  for (auto& [fd, entry] : entries_) {
    if (entry.channel != nullptr && entry.channel->has_buffered_message()) {
      event_for(fd, entry).readable = true;
    }
  }
  epoll_event ready[kMaxEventsPerWait];
  int count;
  do {
    count = ::epoll_wait(epoll_.get(), ready, kMaxEventsPerWait,
                         events_.empty() ? timeout_ms(deadline) : 0);
  } while (count < 0 && errno == EINTR);
  if (count < 0) throw_system_error(kContext, "epoll_wait");

  for (int i = 0; i < count; ++i) {
    const int fd = ready[i].data.fd;
    if (fd == wake_.get()) {
      std::uint64_t wakes;
      static_cast<void>(::read(wake_.get(), &wakes, sizeof wakes));
      continue;
    }
    if (auto watch = write_watches_.find(fd); watch != write_watches_.end()) {
      auto entry = entries_.find(watch->second);
      if (entry == entries_.end()) continue;
      PollEvent& event = event_for(entry->first, entry->second);
      event.writable = entry->second.channel->unsent_bytes() != 0;
      continue;
    }
    auto entry = entries_.find(fd);
    if (entry == entries_.end()) continue;
    PollEvent& event = event_for(fd, entry->second);
    event.readable = event.readable || (ready[i].events & EPOLLIN) != 0;
    event.hung_up = (ready[i].events & (EPOLLHUP | EPOLLERR)) != 0;
  }
  return events_;
}

void Poller::wake() {
  const std::uint64_t one = 1;
  static_cast<void>(::write(wake_.get(), &one, sizeof one));
}

}  // namespace capnsplice
