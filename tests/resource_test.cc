// Channels own their descriptors and memory: close-on-exec, and released on every path.
#include <catch2/catch.hpp>

#include <dirent.h>
#include <fcntl.h>

#include <fstream>
#include <set>
#include <string>
#include <thread>

#include "capnsplice/channel.h"
#include "support/blob.h"
#include "support/raw_pipe.h"
#include "support/sanitizer.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;

std::set<int> open_descriptors() {
  std::set<int> fds;
  DIR* dir = ::opendir("/proc/self/fd");
  REQUIRE(dir != nullptr);
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') fds.insert(std::stoi(entry->d_name));
  }
  fds.erase(::dirfd(dir));
  ::closedir(dir);
  return fds;
}

std::size_t mapping_count() {
  std::ifstream maps("/proc/self/maps");
  std::size_t lines = 0;
  for (std::string line; std::getline(maps, line);) ++lines;
  return lines;
}

/// Sends messages of every kind (copied, spliced, large, filled in place) both ways.
void exercise(Channel& a, Channel& b) {
  Random random(1);
  std::thread sender([&a, &random] {
    send_blob(a, 0, 100, random);
    send_blob(a, 1, 100000, random);
    send_blob(a, 2, 6 * MiB, random);
    auto message = a.new_message();
    fill_blob_in_place(message, 3, 3 * MiB, random);
    a.send(std::move(message));
  });
  for (int i = 0; i < 4; ++i) CHECK(blob_intact(b.receive_as<test::Blob>().root()));
  sender.join();
  send_blob(b, 4, 10, random);
  CHECK(a.receive_as<test::Blob>()->getSeq() == 4);
}

}  // namespace

TEST_CASE("every descriptor a channel opens is close-on-exec") {
  const std::set<int> before = open_descriptors();
  auto [a, b] = Channel::pair();
  exercise(a, b);
  const std::set<int> during = open_descriptors();
  int new_descriptors = 0;
  for (int fd : during) {
    if (before.count(fd) != 0) continue;
    ++new_descriptors;
    INFO("descriptor " << fd);
    CHECK((::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
  }
  CHECK(new_descriptors >= 4);  // two pipes, at least
}

TEST_CASE("destroying a used channel releases its descriptors and memory mappings") {
  {  // warm up: the allocator's own mappings settle
    auto [a, b] = Channel::pair();
    exercise(a, b);
  }
  const std::set<int> fds_before = open_descriptors();
  const std::size_t maps_before = mapping_count();
  for (int round = 0; round < 20; ++round) {
    auto [a, b] = Channel::pair();
    exercise(a, b);
  }
  CHECK(open_descriptors() == fds_before);
  // Allocator noise, not one mapping per channel. ThreadSanitizer maps shadow for every new
  // address range, so only the other builds can hold this to a small number.
  CHECK(mapping_count() <= maps_before + (kThreadSanitizer ? 200 : 2));
}

TEST_CASE("a received message outlives its channel") {
  ReceivedMessage kept;
  {
    auto [a, b] = Channel::pair();
    Random random(2);
    send_blob(a, 7, 5000, random);
    kept = b.receive();
  }
  auto blob = kept.root<test::Blob>();
  CHECK(blob.getSeq() == 7);
  CHECK(blob_intact(blob));
}

TEST_CASE("an unsent message outlives its channel and is released with it") {
  OutgoingMessage unsent;
  {
    auto [a, b] = Channel::pair();
    unsent = a.new_message();
  }
  Random random(3);
  fill_blob(unsent.init_root<test::Blob>(), 1, 200000, random);
  CHECK(unsent.get_root<test::Blob>().getSeq() == 1);
}

TEST_CASE("holding many received messages does not stall the receiver") {
  auto [a, b] = Channel::pair(ChannelOptions().with_receive_buffer_bytes(256 * KiB));
  std::thread sender([&a = a] {
    Random random(4);
    for (int i = 0; i < 200; ++i) send_blob(a, i, 20000, random);  // 4 MB, ring is 256 KiB
  });
  std::vector<ReceivedMessage> held;
  for (int i = 0; i < 200; ++i) held.push_back(b.receive());
  sender.join();
  for (int i = 0; i < 200; ++i) {
    auto blob = held[i].root<test::Blob>();
    CHECK(blob.getSeq() == static_cast<std::uint64_t>(i));
    CHECK(blob_intact(blob));
  }
  CHECK(b.receiver().stats().own_buffer_messages > 0);
}

TEST_CASE("held messages that fill the receive ring exactly do not end the stream") {
  RawPipe pipe;
  ReceiverOptions options;
  options.buffer_bytes = 64 * KiB;
  Receiver receiver(std::move(pipe.read_end), options);
  // Frames of exactly 4 KiB: a one-word table, then 511 words (a null root and zeros).
  std::vector<std::uint32_t> frame(1024, 0);
  frame[1] = 511;
  std::vector<ReceivedMessage> held;
  for (int i = 0; i < 16; ++i) {
    pipe.write_words(frame);
    held.push_back(receiver.receive_for(std::chrono::seconds(1)));
  }
  // Held messages now fill every byte of the ring: the next frame needs room elsewhere,
  // and the writer is still there, so this is no end of stream.
  pipe.write_words(frame);
  CHECK(receiver.receive_for(std::chrono::seconds(1)).frame_bytes() == 4 * KiB);
}
