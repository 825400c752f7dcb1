// The poller: one thread waits on many channels (and descriptors) at once.
#include "capnsplice/poller.h"

#include <poll.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <csignal>
#include <map>
#include <set>
#include <thread>
#include <vector>

#include "capnsplice/process.h"
#include "support/blob.h"
#include "support/process_support.h"
#include "support/raw_pipe.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

std::set<std::uint64_t> keys_of(std::span<const PollEvent> events) {
  std::set<std::uint64_t> keys;
  for (const PollEvent& event : events) keys.insert(event.key);
  return keys;
}

void send_seq(Channel& channel, std::uint64_t seq) {
  channel.send_struct<test::Blob>([seq](test::Blob::Builder blob) { blob.setSeq(seq); });
}

bool descriptor_readable(int fd) {
  pollfd probe{fd, POLLIN, 0};
  return ::poll(&probe, 1, 0) == 1;
}

}  // namespace

TEST_CASE("the poller reports which of many channels have messages") {
  std::vector<std::pair<Channel, Channel>> pairs;
  for (int i = 0; i < 5; ++i) pairs.push_back(Channel::pair());
  Poller poller;
  for (std::uint64_t i = 0; i < pairs.size(); ++i) poller.add(pairs[i].second, 100 + i);
  CHECK(poller.size() == 5);
  send_seq(pairs[1].first, 1);
  send_seq(pairs[3].first, 3);
  auto events = poller.wait(Deadline::after(10s));
  CHECK(keys_of(events) == std::set<std::uint64_t>{101, 103});
  for (const PollEvent& event : events) {
    CHECK(event.readable);
    CHECK_FALSE(event.hung_up);
    CHECK(event.channel == &pairs[event.key - 100].second);
    CHECK(event.channel->try_receive().has_value());
  }
  CHECK(poller.wait(Deadline::after(20ms)).empty());
}

TEST_CASE("a message already buffered is reported although its descriptor is not readable") {
  auto [near, far] = Channel::pair();
  Poller poller;
  poller.add(far, 7);
  for (std::uint64_t seq = 0; seq < 3; ++seq) send_seq(near, seq);
  CHECK(far.receive().root<test::Blob>().getSeq() == 0);  // one read took all three
  REQUIRE_FALSE(descriptor_readable(far.receive_fd()));   // so epoll alone would sleep
  auto events = poller.wait(Deadline::after(10s));
  REQUIRE(keys_of(events) == std::set<std::uint64_t>{7});
  CHECK(events[0].readable);
  int drained = 0;
  while (auto message = far.try_receive()) ++drained;
  CHECK(drained == 2);
  CHECK(poller.wait(Deadline::after(20ms)).empty());
}

TEST_CASE("a closed channel is reported as hung up, and draining it ends empty with at_end, "
          "without an exception") {
  auto [near, far] = Channel::pair();
  Poller poller;
  poller.add(far, 1);
  send_seq(near, 42);
  { Channel closing = std::move(near); }
  auto events = poller.wait(Deadline::after(10s));
  REQUIRE(events.size() == 1);
  CHECK(events[0].readable);
  CHECK(events[0].hung_up);
  CHECK_FALSE(far.at_end());
  CHECK(far.try_receive()->root<test::Blob>().getSeq() == 42);  // what was sent arrives
  CHECK_FALSE(far.try_receive().has_value());
  CHECK(far.at_end());
  CHECK_FALSE(far.try_receive().has_value());  // and stays so
  CHECK(far.at_end());
  // A blocking receive has nothing to return: it says PeerClosed.
  CHECK(error_from([&far = far] { far.receive(); }).code() == ErrorCode::PeerClosed);
}

TEST_CASE("a peer that dies in the middle of a message makes try_receive throw "
          "TruncatedMessage, and at_end stays false") {
  RawPipe pipe;
  Receiver receiver(std::move(pipe.read_end));
  pipe.write_words({0, 4, 1, 2});  // a frame of 4 words, 2 of them sent
  pipe.write_end.reset();
  CHECK(error_from([&] { receiver.try_receive(); }).code() == ErrorCode::TruncatedMessage);
  CHECK_FALSE(receiver.at_end());
  CHECK(error_from([&] { receiver.try_receive(); }).code() == ErrorCode::TruncatedMessage);
}

TEST_CASE("the end of stream is at_end, without an exception, also when held messages fill "
          "the ring to its last byte") {
  // 8 frames of 8 KiB fill a 64 KiB ring exactly; holding them makes the receiver start
  // the next frame in a buffer of its own, which the end of stream leaves empty.
  RawPipe pipe;
  ReceiverOptions options;
  options.buffer_bytes = 64 * KiB;
  Receiver receiver(std::move(pipe.read_end), options);
  constexpr std::uint32_t kWords = 8 * 1024 / 8 - 1;  // + the 8-byte table: 8 KiB
  std::vector<ReceivedMessage> held;
  for (int i = 0; i < 8; ++i) {
    std::vector<std::uint32_t> frame{0, kWords};
    frame.resize(2 + 2 * kWords);  // zero words: a null root
    pipe.write_words(frame);
    held.push_back(receiver.receive(Deadline::after(10s)));
  }
  pipe.write_end.reset();
  CHECK_FALSE(receiver.try_receive().has_value());
  CHECK(receiver.at_end());
}

TEST_CASE("a poller wait ends empty at its deadline or when woken from another thread") {
  auto [near, far] = Channel::pair();
  Poller poller;
  poller.add(far, 1);
  CHECK(poller.wait(Deadline::after(20ms)).empty());
  CHECK(poller.wait(Deadline::immediate()).empty());
  std::thread waker([&poller] {
    std::this_thread::sleep_for(50ms);
    poller.wake();
  });
  CHECK(poller.wait().empty());  // never returns if wake() does not work
  waker.join();
}

TEST_CASE("a removed channel is no longer reported, and adding one twice fails") {
  auto [near, far] = Channel::pair(ChannelOptions().with_name("twice"));
  Poller poller;
  poller.add(far, 1);
  Error error = error_from([&poller, &far = far] { poller.add(far, 2); });
  CHECK(error.sys_errno() == EEXIST);
  CHECK_THAT(error.what(), Catch::Contains("add channel 'twice'"));
  poller.remove(far);
  poller.remove(far);  // harmless
  CHECK(poller.size() == 0);
  send_seq(near, 1);
  CHECK(poller.wait(Deadline::after(20ms)).empty());
}

TEST_CASE("a child's exit descriptor is reported next to its channel when it dies") {
  Child child = spawn_peer({"sink"});
  REQUIRE(child.process.exit_fd() >= 0);
  Poller poller;
  poller.add(child.channel, 1);
  poller.add(child.process.exit_fd(), 2);
  CHECK(poller.wait(Deadline::after(20ms)).empty());
  child.process.kill(SIGKILL);
  std::set<std::uint64_t> seen;
  const auto give_up = std::chrono::steady_clock::now() + 10s;
  while (seen.size() < 2 && std::chrono::steady_clock::now() < give_up) {
    for (const PollEvent& event : poller.wait(Deadline::after(10s))) {
      seen.insert(event.key);
      CHECK((event.key == 2) == (event.channel == nullptr));
    }
  }
  CHECK(seen == std::set<std::uint64_t>{1, 2});
}

TEST_CASE("a child's exit descriptor outlives wait(), so the poller can remove it then") {
  Child child = spawn_peer({"sink"});
  const int exit_fd = child.process.exit_fd();
  REQUIRE(exit_fd >= 0);
  Poller poller;
  poller.add(child.channel, 1);
  poller.add(exit_fd, 2);
  child.channel.close_sending();  // the sink exits 0
  std::set<std::uint64_t> ended;
  while (poller.size() > 0) {  // the loop use-cases.md shows: it must end
    auto events = poller.wait(Deadline::after(10s));
    REQUIRE_FALSE(events.empty());
    for (const PollEvent& event : events) {
      ended.insert(event.key);
      if (event.key == 1) {
        CHECK_FALSE(child.channel.try_receive().has_value());
        CHECK(child.channel.at_end());
        poller.remove(child.channel);
      } else {
        CHECK(child.process.wait().success());
        CHECK(child.process.exit_fd() == exit_fd);  // still open, still the same
        poller.remove(child.process.exit_fd());
      }
    }
  }
  CHECK(ended == std::set<std::uint64_t>{1, 2});
  CHECK(descriptor_readable(exit_fd));  // a pidfd of a reaped child stays readable
}

TEST_CASE("one thread serves many spawned children and keeps serving when one crashes") {
  constexpr int kChildren = 4;
  constexpr std::uint64_t kRequestsEach = 50;
  constexpr int kCrashing = 2;
  std::vector<Child> children;
  Poller poller;
  for (int i = 0; i < kChildren; ++i) {
    children.push_back(
        spawn_peer({"echo"}, ChannelOptions().with_name("echo-" + std::to_string(i))));
  }
  for (int i = 0; i < kChildren; ++i) {
    poller.add(children[i].channel, static_cast<std::uint64_t>(i));
    send_seq(children[i].channel, 0);
  }
  std::map<std::uint64_t, std::uint64_t> answered;
  std::set<std::uint64_t> gone;
  while (poller.size() > 0) {
    auto events = poller.wait(Deadline::after(10s));
    REQUIRE_FALSE(events.empty());  // nothing may hang
    for (const PollEvent& event : events) {
      try {
        while (auto message = event.channel->try_receive()) {
          const auto seq = message->root<test::Blob>().getSeq();
          CHECK(seq == answered[event.key]);
          if (++answered[event.key] == kRequestsEach) {
            poller.remove(*event.channel);
            break;
          }
          if (event.key == kCrashing && seq == kRequestsEach / 2) {
            children[kCrashing].process.kill(SIGKILL);
          }
          send_seq(*event.channel, seq + 1);
        }
        if (event.channel->at_end()) {  // the killed child's stream ended between messages
          gone.insert(event.key);
          poller.remove(*event.channel);
        }
      } catch (const Error& error) {
        INFO(error.what());
        REQUIRE(error.peer_gone());
        gone.insert(event.key);
        poller.remove(*event.channel);
      }
    }
  }
  CHECK(gone == std::set<std::uint64_t>{kCrashing});
  for (std::uint64_t i = 0; i < kChildren; ++i) {
    if (i != kCrashing) CHECK(answered[i] == kRequestsEach);
  }
  CHECK(answered[kCrashing] < kRequestsEach);
}
