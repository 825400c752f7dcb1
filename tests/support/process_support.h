// Helpers of the process tests: the peer program, descriptor and child counts.
#pragma once

#include <dirent.h>
#include <sys/wait.h>

#include <chrono>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "capnsplice/channel.h"
#include "capnsplice/error.h"
#include "capnsplice/process.h"
#include "error_from.h"

namespace capnsplice::testing {

/// The test's end of a channel to a peer: named "peer"; sends give up after 10 s, so a
/// test that would block for ever fails instead.
inline ChannelOptions peer_channel_options() {
  return ChannelOptions().with_name("peer").with_send_timeout(std::chrono::seconds(10));
}

/// Starts tests/channel_peer.cc (built as capnsplice_test_peer) with `arguments` and
/// `environment` ("NAME=value" added).
inline Child spawn_peer(std::initializer_list<std::string> arguments,
                        ChannelOptions options = peer_channel_options(),
                        std::vector<std::string> environment = {}) {
  return spawn({.program = CAPNSPLICE_TEST_PEER,
                .arguments = arguments,
                .environment = std::move(environment),
                .channel = options});
}

/// Makes this thread's wake-up eventfd, which capnsplice makes on a thread's first
/// blocking receive and keeps until the thread exits: a count of descriptors taken after
/// this sees only what it measures.
inline void make_thread_wake_fd() {
  auto [near, far] = Channel::pair();
  static_cast<void>(error_from([&far = far] { far.receive(Deadline::immediate()); }));
}

/// Descriptors open in this process right now.
inline int open_fd_count() {
  int count = 0;
  DIR* dir = ::opendir("/proc/self/fd");
  while (dirent* entry = ::readdir(dir)) count += entry->d_name[0] != '.' ? 1 : 0;
  ::closedir(dir);
  return count - 1;  // the directory stream's own descriptor
}

/// True when this process has no child left to reap (no zombie, none running).
inline bool no_children_left() { return ::waitpid(-1, nullptr, WNOHANG) < 0 && errno == ECHILD; }

/// Receives until the channel fails; returns the error (a hang shows up as Timeout).
inline Error receive_until_error(Channel& channel) {
  for (;;) {
    try {
      channel.receive(Deadline::after(std::chrono::seconds(10)));
    } catch (const Error& error) {
      return error;
    }
  }
}

/// Milliseconds elapsed since `start`, as a double.
inline double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

}  // namespace capnsplice::testing
