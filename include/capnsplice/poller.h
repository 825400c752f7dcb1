// capnsplice/poller.h — wait on many channels at once from one thread (epoll).
//
// A host serving N plugins registers each plugin's channel under a key of its choosing
// and sleeps in wait() until some of them have messages or were closed:
//
//   capnsplice::Poller poller;
//   for (std::uint64_t i = 0; i < plugins.size(); ++i) poller.add(plugins[i].channel, i);
//   for (;;) {
//     for (const capnsplice::PollEvent& event : poller.wait()) {
//       while (auto message = event.channel->try_receive()) handle(event.key, *message);
//       if (event.channel->at_end()) poller.remove(*event.channel);  // plugin exited
//     }
//   }
//
// (A plugin that dies in the middle of a message makes try_receive() throw
// TruncatedMessage: catch capnsplice::Error around the loop to survive that too.)
//
// Drain each reported channel with try_receive() until it returns empty: one read can
// bring many messages, and a message already in the receiver's buffer does not make
// the descriptor readable. wait() checks every channel's buffer (has_buffered_message())
// before it sleeps, so a message left there is reported again rather than forgotten.
//
// Write interest comes by itself: while a channel holds unsent bytes (a try_send() that
// returned SendStatus::queued), wait() also watches for room in its pipe and reports
// `writable`; call try_flush() then. A channel with nothing unsent costs no write watch.
//
// Threads: one thread calls add/remove/wait; wake() may be called from any thread.
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "capnsplice/channel.h"
#include "capnsplice/deadline.h"
#include "capnsplice/unique_fd.h"

namespace capnsplice {

/// One ready channel (or descriptor) reported by Poller::wait().
struct PollEvent {
  std::uint64_t key = 0;       ///< the key it was added with
  Channel* channel = nullptr;  ///< null for a descriptor added with add(int, key)
  int fd = -1;                 ///< the descriptor polled (the channel's receive_fd())
  /// Messages or bytes are waiting: call try_receive() until it returns empty.
  bool readable = false;
  /// The peer closed its sending side or died: after the messages still buffered,
  /// try_receive() returns empty with at_end() true (or throws TruncatedMessage if it
  /// died mid-message). Remove the channel then; until it is removed every wait()
  /// reports it again.
  bool hung_up = false;
  /// The channel holds unsent bytes and its pipe may have room: call try_flush() (it
  /// never blocks, and returns what is still unsent).
  bool writable = false;
};

class Poller {
 public:
  /// Throws SystemError when epoll or eventfd cannot be created.
  Poller();
  Poller(Poller&&) noexcept = default;
  Poller& operator=(Poller&&) noexcept = default;

  /// Watches `channel`'s receiving side under `key`. The channel must stay at its address
  /// (not be moved or destroyed) until remove(). Adding a channel twice throws SystemError
  /// (EEXIST).
  void add(Channel& channel, std::uint64_t key);
  // (The channel's watch_fd() is made and watched as well while it holds unsent bytes.)

  /// Watches any descriptor for POLLIN under `key`: a RendezvousListener's fd(), a
  /// ChildProcess's exit_fd(). The descriptor must stay open until remove() — an
  /// exit_fd() does, wait() included, until its handle is destroyed:
  ///
  ///   poller.add(child.process.exit_fd(), key);
  ///   ...  // reported: the child ended
  ///   ExitStatus status = child.process.wait();
  ///   poller.remove(child.process.exit_fd());
  void add(int fd, std::uint64_t key);

  /// Stops watching. Removing what is not watched does nothing. Remove a descriptor
  /// before closing it: the poller cannot tell it was closed, and size() still counts it.
  void remove(Channel& channel) { remove(channel.receive_fd()); }
  void remove(int fd);

  /// Number of channels and descriptors watched.
  std::size_t size() const noexcept { return entries_.size(); }

  /// Waits until a watched channel has a message or was closed, a descriptor is
  /// readable, wake() is called or `deadline` passes. Returns the ready ones — empty when
  /// only the deadline or wake() ended the wait. The view is valid until the next wait().
  std::span<const PollEvent> wait(Deadline deadline = Deadline::never());

  /// Makes a wait() in another thread (or the next one) return at once. Thread-safe.
  void wake();

 private:
  struct Entry {
    Channel* channel;
    std::uint64_t key;
    int write_watch = -1;  // the channel's watch_fd() while watched for unsent bytes
  };
  void watch(int fd, Entry entry);
  /// Watches or unwatches each channel's watch_fd() as it holds unsent bytes or not.
  void update_write_interest();
  PollEvent& event_for(int fd, const Entry& entry);

  UniqueFd epoll_;
  UniqueFd wake_;  // eventfd
  std::unordered_map<int, Entry> entries_;
  std::unordered_map<int, int> write_watches_;  // watch_fd() -> the channel's receive_fd()
  std::vector<PollEvent> events_;
};

}  // namespace capnsplice
