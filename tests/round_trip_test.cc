// Messages of every size and shape arrive intact, in one process and across fork().
#include <capnp/message.h>
#include <fcntl.h>

#include <catch2/catch.hpp>
#include <thread>
#include <vector>

#include "capnsplice/channel.h"
#include "support/blob.h"
#include "test.capnp.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;

const std::vector<std::size_t> kSizes = {0,     1,     63,      64,      4096,        16383,
                                         16384, 65536, 1 << 20, 3 << 20, 5 << 20 | 7, 32 << 20};

/// Sends every size from a thread and checks each on arrival. Returns the sender's
/// counters, so a test can check which path the messages took.
SenderStats round_trip_all_sizes(ChannelOptions options, unsigned parts = 0) {
  auto [near, far] = Channel::pair(options);
  std::thread sender([&near = near, parts] {
    Random random(1);
    for (std::size_t i = 0; i < kSizes.size(); ++i) send_blob(near, i, kSizes[i], random, parts);
  });
  for (std::size_t i = 0; i < kSizes.size(); ++i) {
    auto blob = far.receive_as<test::Blob>();
    INFO("size " << kSizes[i]);
    CHECK(blob->getSeq() == i);
    CHECK(blob_size(blob.root()) == (parts == 0 ? kSizes[i] : kSizes[i] / parts * parts));
    CHECK(blob_intact(blob.root()));
  }
  sender.join();
  return near.sender().stats();
}

/// Spliced messages, or copied ones where this kernel's vmsplice copies anyway.
std::uint64_t spliced_where_possible(const SenderStats& stats) {
  return stats.vmsplice_aliases_pages ? stats.spliced_messages : stats.copied_messages;
}

}  // namespace

TEST_CASE("messages from empty to 32 MiB round-trip intact on the automatic path") {
  const SenderStats stats = round_trip_all_sizes(ChannelOptions().with_max_message_bytes(64 * MiB));
  CHECK(stats.messages == kSizes.size());
  CHECK(stats.copied_messages > 0);  // the small ones
  CHECK(stats.shared_messages > 0);  // 128 KiB and up
}

TEST_CASE("messages from empty to 32 MiB round-trip intact when always copied") {
  const SenderStats stats = round_trip_all_sizes(ChannelOptions().with_send_path(SendPath::copy));
  CHECK(stats.copied_messages == kSizes.size());
}

TEST_CASE("messages from empty to 32 MiB round-trip intact when always spliced") {
  const SenderStats stats =
      round_trip_all_sizes(ChannelOptions().with_send_path(SendPath::vmsplice));
  CHECK(spliced_where_possible(stats) == kSizes.size());
}

TEST_CASE("multi-segment messages round-trip intact") {
  // A small pool forces payload pieces into several segments.
  round_trip_all_sizes(ChannelOptions().with_pool_bytes(256 * KiB), /*parts=*/7);
}

TEST_CASE("multi-segment messages up to 32 MiB round-trip intact when always spliced") {
  const SenderStats stats = round_trip_all_sizes(
      ChannelOptions().with_pool_bytes(256 * KiB).with_send_path(SendPath::vmsplice),
      /*parts=*/7);
  CHECK(spliced_where_possible(stats) == kSizes.size());
}

TEST_CASE("data filled in place with allocate_data round-trips at every size") {
  auto [near, far] = Channel::pair();
  std::thread sender([&near = near] {
    Random random(9);
    for (std::size_t i = 0; i < kSizes.size(); ++i) {
      auto message = near.new_message();
      fill_blob_in_place(message, i, kSizes[i], random);
      near.send(std::move(message));
    }
  });
  for (std::size_t i = 0; i < kSizes.size(); ++i) {
    auto message = far.receive();
    auto blob = message.root<test::Blob>();
    INFO("size " << kSizes[i]);
    CHECK(blob.getSeq() == i);
    CHECK(blob.getData().size() == kSizes[i]);
    CHECK(blob_intact(blob));
    // The data is a segment of its own, padded with zeros to a whole word.
    if (kSizes[i] == 0) continue;
    REQUIRE(message.segments().size() == 2);
    auto last = message.segments()[1];
    const auto* bytes = reinterpret_cast<const unsigned char*>(last.begin());
    for (std::size_t b = kSizes[i]; b < last.size() * 8; ++b) CHECK(bytes[b] == 0);
  }
  sender.join();
}

TEST_CASE("a channel's pipes asked smaller than the kernel's default are that small from "
          "the start") {
  // Larger ones start at the default and grow with traffic (pipe_budget_test.cc).
  auto [near, far] = Channel::pair(ChannelOptions().with_pipe_bytes(16 * KiB));
  CHECK(::fcntl(near.sender().fd(), F_GETPIPE_SZ) == static_cast<int>(16 * KiB));
  CHECK(::fcntl(far.sender().fd(), F_GETPIPE_SZ) == static_cast<int>(16 * KiB));
  CHECK(near.sender().stats().pipe_bytes == 16 * KiB);
}

TEST_CASE("a message with no root at all arrives as an empty message") {
  auto [near, far] = Channel::pair();
  near.send(near.new_message());
  auto message = far.receive();
  CHECK(message.segments().size() == 1);
  CHECK(message.frame_bytes() == 16);  // segment table + null root pointer
  auto blob = message.root<test::Blob>();
  CHECK(blob.getSeq() == 0);
  CHECK_FALSE(blob.hasData());
}

TEST_CASE("large pooled messages arrive with more than one segment") {
  auto [near, far] = Channel::pair(ChannelOptions().with_pool_bytes(256 * KiB));
  std::thread sender([&near = near] {
    Random random(2);
    send_blob(near, 0, 600 * KiB, random, /*parts=*/6);
  });
  auto message = far.receive();
  sender.join();
  CHECK(message.segments().size() > 1);
  CHECK(blob_intact(message.root<test::Blob>()));
}

TEST_CASE("a multi-segment message from a MallocMessageBuilder round-trips by copy") {
  auto [near, far] = Channel::pair();
  // One-word first segment and fixed growth: every object lands in a new segment.
  capnp::MallocMessageBuilder builder(1, capnp::AllocationStrategy::FIXED_SIZE);
  Random random(3);
  auto blob = builder.initRoot<test::Blob>();
  fill_blob(blob, 5, 3000, random, /*parts=*/10);
  REQUIRE(builder.getSegmentsForOutput().size() > 10);
  near.send_copy(builder);
  auto received = far.receive();
  CHECK(received.segments().size() == builder.getSegmentsForOutput().size());
  CHECK(blob_intact(received.root<test::Blob>()));
  CHECK(received.root<test::Blob>().getSeq() == 5);
}

TEST_CASE("received segments are 8-byte aligned views of the receive buffer") {
  auto [near, far] = Channel::pair();
  Random random(4);
  for (int i = 0; i < 100; ++i) send_blob(near, i, 1 + random.below(300), random);
  for (int i = 0; i < 100; ++i) {
    auto message = far.receive();
    for (auto segment : message.segments()) {
      CHECK(reinterpret_cast<std::uintptr_t>(segment.begin()) % 8 == 0);
    }
  }
}

TEST_CASE("one try_receive takes a frame larger than one read once its bytes are all in") {
  // Reads take at most 64 KiB each; an empty try_receive must still mean "nothing more
  // is ready", or a poller loop would sleep with a whole message in the pipe.
  auto [near, far] = Channel::pair(ChannelOptions().with_send_path(SendPath::vmsplice));
  Random random(11);
  send_blob(near, 1, 600 * KiB, random);  // fits in the 1 MiB pipe: send() returns
  auto message = far.try_receive();
  REQUIRE(message.has_value());
  CHECK(blob_intact(message->root<test::Blob>()));
  CHECK_FALSE(far.try_receive().has_value());
}

TEST_CASE(
    "a receive after a try_receive that found the pipe empty takes a message that came in "
    "between at once, and a later one blocks until the next arrives") {
  // After an empty read, receive() polls before it reads again (no second empty read):
  // the poll must still see what came in between, and a deadline must still hold.
  auto [near, far] = Channel::pair();
  Random random(12);
  CHECK_FALSE(far.try_receive().has_value());
  send_blob(near, 1, 40, random);
  CHECK(far.receive(Deadline::immediate()).root<test::Blob>().getSeq() == 1);
  CHECK_FALSE(far.try_receive().has_value());
  CHECK_THROWS_AS(far.receive(Deadline::immediate()), Error);
  std::thread later([&near = near, &random] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    send_blob(near, 2, 40, random);
  });
  CHECK(far.receive_for(std::chrono::seconds(10)).root<test::Blob>().getSeq() == 2);
  later.join();
}

TEST_CASE(
    "a receive after a read that took all the pipe held waits before it reads again, and "
    "still takes a message that came in between at once") {
  // The usual request/reply pattern: the read that took a request found the pipe empty
  // after it, so the next receive() polls first instead of reading the pipe empty.
  auto [near, far] =
      Channel::pair(ChannelOptions().with_spin_before_block(std::chrono::nanoseconds(0)));
  // This thread's first wait makes its eventfd; before that, a receive reads first.
  CHECK_THROWS_AS(far.receive(Deadline::after(std::chrono::milliseconds(1))), Error);
  const std::uint64_t empty_reads = far.receiver().stats().empty_reads;
  Random random(13);
  send_blob(near, 1, 40, random);
  CHECK(far.receive_as<test::Blob>()->getSeq() == 1);  // a read shorter than it asked
  CHECK(far.receiver().emptied_pipe());
  std::thread later([&near = near, &random] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    send_blob(near, 2, 40, random);
  });
  CHECK(far.receive_for(std::chrono::seconds(10)).root<test::Blob>().getSeq() == 2);
  later.join();
  CHECK(far.receiver().stats().empty_reads == empty_reads);
  send_blob(near, 3, 40, random);  // came in between: the poll answers at once
  CHECK(far.receive(Deadline::immediate()).root<test::Blob>().getSeq() == 3);
  CHECK(far.receiver().stats().empty_reads == empty_reads);
}

TEST_CASE("one read brings many small messages") {
  auto [near, far] = Channel::pair();
  Random random(5);
  for (int i = 0; i < 1000; ++i) send_blob(near, i, 40, random);
  for (int i = 0; i < 1000; ++i) CHECK(far.receive_as<test::Blob>()->getSeq() == i);
  CHECK(far.receiver().stats().reads < 10);
  CHECK(far.receiver().stats().messages == 1000);
}

TEST_CASE("both directions of a channel carry messages at once") {
  auto [left, right] = Channel::pair();
  constexpr int kCount = 2000;
  auto pump = [](Channel& channel, std::uint64_t seed) {
    Random random(seed);
    for (int i = 0; i < kCount; ++i) send_blob(channel, i, random.below(70000), random);
  };
  std::thread left_sender(pump, std::ref(left), 6);
  std::thread right_sender(pump, std::ref(right), 7);
  auto drain = [](Channel& channel) {
    int intact = 0;
    for (int i = 0; i < kCount; ++i) {
      auto blob = channel.receive_as<test::Blob>();
      intact += blob->getSeq() == static_cast<std::uint64_t>(i) && blob_intact(blob.root());
    }
    return intact;
  };
  int left_intact = 0;
  std::thread left_receiver([&, &left = left] { left_intact = drain(left); });
  int right_intact = drain(right);
  left_sender.join();
  right_sender.join();
  left_receiver.join();
  CHECK(left_intact == kCount);
  CHECK(right_intact == kCount);
}

TEST_CASE("messages of every size cross fork() in both directions on every path") {
  const SendPath path = GENERATE(SendPath::automatic, SendPath::copy, SendPath::vmsplice);
  INFO("path " << static_cast<int>(path));
  auto [parent, child] = Channel::pair(ChannelOptions().with_name("fork").with_send_path(path));
  pid_t pid = fork_child([&child = child, &parent = parent] {
    { Channel dropped = std::move(parent); }  // the child keeps only its end
    // Echo each message back, rebuilt in the child's own pool, checking it on the way.
    for (std::size_t i = 0; i < kSizes.size(); ++i) {
      auto message = child.receive();
      auto blob = message.root<test::Blob>();
      if (!blob_intact(blob) || blob.getSeq() != i) return 1;
      auto echo = child.new_message();
      echo.builder().setRoot(blob);
      child.send(std::move(echo));
    }
    return 0;
  });
  { Channel dropped = std::move(child); }  // the parent keeps only its end
  std::thread sender([&parent = parent] {
    Random random(8);
    for (std::size_t i = 0; i < kSizes.size(); ++i) send_blob(parent, i, kSizes[i], random);
  });
  for (std::size_t i = 0; i < kSizes.size(); ++i) {
    auto blob = parent.receive_as<test::Blob>();
    CHECK(blob->getSeq() == i);
    CHECK(blob_size(blob.root()) == kSizes[i]);
    CHECK(blob_intact(blob.root()));
  }
  sender.join();
  CHECK(wait_child(pid) == 0);
  const SenderStats stats = parent.sender().stats();
  CHECK(stats.messages == kSizes.size());
  if (path == SendPath::vmsplice) CHECK(spliced_where_possible(stats) == kSizes.size());
  if (path == SendPath::copy) CHECK(stats.copied_messages == kSizes.size());
  if (path == SendPath::automatic) CHECK(stats.shared_messages > 0);
}
