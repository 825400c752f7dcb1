// Helpers of the shared-memory tests (tests/shared_memory_test.cc, tests/arena_test.cc).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "capnsplice/channel.h"
#include "support/blob.h"

namespace capnsplice::testing {

using namespace std::chrono_literals;

inline ChannelOptions shared_options() {
  return ChannelOptions().with_name("shared").with_send_timeout(10s);
}

/// A message whose data is filled in place, `size` bytes, built in `channel`'s pools.
inline OutgoingMessage blob_in_place(Channel& channel, std::uint64_t seq, std::size_t size,
                              Random& random) {
  auto message = channel.new_message();
  fill_blob_in_place(message, seq, size, random);
  return message;
}

/// The mappings of this process whose path contains `name`, as "perms start-end".
inline std::vector<std::pair<std::string, std::pair<std::uintptr_t, std::uintptr_t>>> mappings_of(
    const std::string& name) {
  std::vector<std::pair<std::string, std::pair<std::uintptr_t, std::uintptr_t>>> found;
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    if (line.find(name) == std::string::npos) continue;
    std::istringstream fields(line);
    std::string range, perms;
    fields >> range >> perms;
    const auto dash = range.find('-');
    found.push_back({perms,
                     {std::stoull(range.substr(0, dash), nullptr, 16),
                      std::stoull(range.substr(dash + 1), nullptr, 16)}});
  }
  return found;
}

/// Descriptors of this process open on an arena memfd ("/memfd:capnsplice-arena").
inline int arena_descriptors() {
  int count = 0;
  for (int fd = 0; fd < 1024; ++fd) {
    char target[256] = {};
    const std::string link = "/proc/self/fd/" + std::to_string(fd);
    if (::readlink(link.c_str(), target, sizeof target - 1) > 0) {
      count += std::string_view(target).find("memfd:capnsplice-arena") != std::string_view::npos;
    }
  }
  return count;
}

}  // namespace capnsplice::testing
