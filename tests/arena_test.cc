// The life of a shared-memory arena: memory given back and reused, idle arenas
// replaced or retired, and the bounds on what a sender may hold (backpressure, timeout,
// a message too large for the arena).
#include <catch2/catch.hpp>

#include <capnp/message.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <optional>
#include <thread>
#include <vector>

#include "capnsplice/channel.h"
#include "capnsplice/process.h"
#include "support/blob.h"
#include "support/error_from.h"
#include "support/process_support.h"
#include "support/shared_memory_support.h"

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

TEST_CASE("arena memory is given back when messages are dropped, and reused under load") {
  auto [near, far] = Channel::pair(shared_options().with_arena_bytes(64 * MiB));
  constexpr int kCount = 300;  // 2.4 GB through a 64 MiB arena
  std::atomic<int> intact{0};
  std::thread reader([&] {
    for (int i = 0; i < kCount; ++i) {
      auto blob = far.receive_as<test::Blob>(Deadline::after(10s));
      intact += blob->getSeq() == static_cast<std::uint64_t>(i) && blob_intact(blob.root());
    }
  });
  Random random(4);
  for (int i = 0; i < kCount; ++i) {
    if (i % 2 == 0) {
      near.send(blob_in_place(near, i, 8 * MiB, random));
    } else {
      send_blob(near, i, 8 * MiB, random);
    }
  }
  reader.join();
  CHECK(intact == kCount);
  CHECK(near.sender().stats().shared_messages == kCount);
  // Every message was dropped: once the releases are in, nothing is held.
  near.send_struct<test::Empty>([](auto) {});
  far.receive();
  for (int attempt = 0; attempt < 100 && near.sender().stats().arena_bytes_in_use != 0; ++attempt) {
    send_blob(near, 0, 2 * MiB, random);  // each send takes in the pending releases
    far.receive();
  }
  CHECK(near.sender().stats().arena_bytes_in_use <= 2 * MiB + 64 * KiB);
}

TEST_CASE("once a message past arena_keep_bytes is done with, a fresh arena takes the "
          "next shared message and the old one is gone from both ends") {
  auto [near, far] = Channel::pair(shared_options().with_arena_keep_bytes(32 * MiB));
  Random random(17);
  {
    // 40 MiB at once, past the 32 MiB budget (a message larger than the 16 MiB a sender
    // may hold for the reader goes alone).
    near.send(blob_in_place(near, 0, 40 * MiB, random));
    CHECK(blob_intact(far.receive_as<test::Blob>().root()));
  }  // dropped: the arena is idle once the sender reads the release
  // The spell that just ended needed all 40 MiB at once, so the pages still earn their
  // keep: a smaller message after it goes to the same arena.
  near.send(blob_in_place(near, 6, 256 * KiB, random));
  CHECK(blob_intact(far.receive_as<test::Blob>().root()));
  CHECK(near.sender().stats().arenas_created == 1);
  // Now the last spell needed 256 KiB: the 40 MiB arena is replaced.
  near.send(blob_in_place(near, 7, 8 * MiB, random));
  auto next = far.receive_as<test::Blob>();
  CHECK(next->getSeq() == 7);
  CHECK(blob_intact(next.root()));
  CHECK(near.sender().stats().arenas_created == 2);
  // The receiver lets go of a replaced arena when it has nothing to read.
  CHECK_FALSE(far.try_receive().has_value());
  // Only the fresh arena is left: the sender's descriptor and read-write mapping, the
  // receiver's read-only mapping. Nothing refers to the old one: its pages are freed.
  CHECK(arena_descriptors() == 1);
  CHECK(mappings_of("capnsplice-arena").size() == 2);
}

TEST_CASE("a sender starts nothing new while the reader holds half of arena_keep_bytes") {
  // 32 MiB budget: once 16 MiB are held, the next message waits for the reader, which
  // holds them all, until the send timeout.
  auto [near, far] = Channel::pair(shared_options()
                                       .with_arena_keep_bytes(32 * MiB)
                                       .with_send_timeout(std::chrono::milliseconds(200)));
  Random random(20);
  std::vector<ReceivedMessage> held;
  for (int i = 0; i < 4; ++i) {
    near.send(blob_in_place(near, i, 4 * MiB, random));
    held.push_back(far.receive());
  }
  const Error waited = error_from([&] { near.send(blob_in_place(near, 4, 4 * MiB, random)); });
  CHECK(waited.code() == ErrorCode::Timeout);
  CHECK_THAT(waited.what(), Catch::Contains("(16777440 bytes; a new one starts below 16777216 bytes"));
  // Below the bound, a message of any size starts: the reader keeping one message (the
  // latest state, say) does not hold back a 40 MiB one.
  held.resize(1);
  near.send(blob_in_place(near, 5, 40 * MiB, random));
  CHECK(blob_intact(far.receive_as<test::Blob>().root()));
}

TEST_CASE("a stream of messages larger than arena_keep_bytes keeps its one arena") {
  // Each 40 MiB message reuses the pages the one before it used: replacing the arena
  // would only fault them in again.
  auto [near, far] = Channel::pair(shared_options().with_arena_keep_bytes(32 * MiB));
  Random random(19);
  for (int i = 0; i < 5; ++i) {
    near.send(blob_in_place(near, i, 40 * MiB, random));
    CHECK(blob_intact(far.receive_as<test::Blob>().root()));
  }
  CHECK(near.sender().stats().arenas_created == 1);
}

TEST_CASE("a stream whose messages in flight stay below arena_keep_bytes keeps its one "
          "arena") {
  // 16 MiB messages, the reader holding the two latest: up to 48 MiB in the arena, under
  // the default budget, so no message pays for faulting in a fresh arena.
  auto [near, far] = Channel::pair(shared_options());
  Random random(18);
  std::vector<ReceivedMessage> held;
  for (int i = 0; i < 24; ++i) {
    near.send(blob_in_place(near, i, 16 * MiB, random));
    held.push_back(far.receive());
    CHECK(blob_intact(held.back().root<test::Blob>()));
    if (held.size() > 2) held.erase(held.begin());
  }
  CHECK(near.sender().stats().shared_messages == 24);
  CHECK(near.sender().stats().arenas_created == 1);
}

TEST_CASE("a full arena holds the sender back until the reader drops messages") {
  auto [near, far] = Channel::pair(shared_options().with_arena_bytes(32 * MiB));
  Random random(5);
  std::vector<ReceivedMessage> held;
  for (int i = 0; i < 3; ++i) {  // 24 MiB held by the reader
    near.send(blob_in_place(near, i, 8 * MiB, random));
    held.push_back(far.receive());
  }
  std::thread releaser([&held] {
    std::this_thread::sleep_for(200ms);
    held.clear();
  });
  const auto started = std::chrono::steady_clock::now();
  near.send(blob_in_place(near, 3, 12 * MiB, random));  // does not fit until released
  CHECK(std::chrono::steady_clock::now() - started >= 150ms);
  releaser.join();
  CHECK(blob_intact(far.receive_as<test::Blob>().root()));
}

TEST_CASE("a full arena fails with Timeout once the send timeout passes") {
  auto [near, far] = Channel::pair(
      shared_options().with_arena_bytes(32 * MiB).with_send_timeout(200ms));
  Random random(6);
  std::vector<ReceivedMessage> held;
  for (int i = 0; i < 3; ++i) {
    near.send(blob_in_place(near, i, 8 * MiB, random));
    held.push_back(far.receive());
  }
  Error error = error_from([&] { blob_in_place(near, 3, 12 * MiB, random); });
  CHECK(error.code() == ErrorCode::Timeout);
  CHECK_THAT(error.what(), Catch::Contains("the reader still holds 3 shared-memory messages"));
  // Nothing was lost or cut: once the reader lets go, the channel carries on.
  held.clear();
  near.send(blob_in_place(near, 3, 12 * MiB, random));
  CHECK(blob_intact(far.receive_as<test::Blob>(Deadline::after(10s)).root()));
}

TEST_CASE("a sender waiting for releases sees PeerClosed when the reader closes its pipe but "
          "keeps its control link") {
  auto [near, remote] = Channel::pair_with_remote_end(
      shared_options().with_arena_keep_bytes(32 * MiB).with_send_timeout(30s));
  // The remote end says it reads shared memory (an AcceptsShared record, as
  // src/control_link.cc lays it out), then holds every message: it never releases one.
  const std::uint64_t accepts_shared[3] = {1, 0, 0};
  REQUIRE(::send(remote.control_fd.get(), accepts_shared, sizeof accepts_shared, 0) == 24);
  Random random(21);
  for (int i = 0; i < 4; ++i) near.send(blob_in_place(near, i, 4 * MiB, random));
  REQUIRE(near.sender().stats().shared_messages == 4);  // 16 MiB held: the next one waits
  remote.receive_fd.reset();  // the pipe's only reader is gone; the control link stays
  Error error = error_from([&near = near, &random] {
    near.send(blob_in_place(near, 4, 4 * MiB, random));
  });
  CHECK(error.code() == ErrorCode::PeerClosed);  // not Timeout after the 30 s
}

TEST_CASE("a message whose objects add up to more than the arena fails at once with "
          "MessageTooLarge") {
  // Three parts of 12 MiB: each under half the 32 MiB arena, so each goes there, but not
  // all three fit. Nothing is held for the reader: no release could ever make room.
  auto [near, far] = Channel::pair(shared_options().with_arena_bytes(32 * MiB));
  Random random(16);
  const auto started = std::chrono::steady_clock::now();
  Error error = error_from([&] {
    auto message = near.new_message();
    fill_blob(message.init_root<test::Blob>(), 1, 36 * MiB, random, /*parts=*/3);
  });
  CHECK(std::chrono::steady_clock::now() - started < 5s);  // not the 10 s send timeout
  CHECK(error.code() == ErrorCode::MessageTooLarge);
  CHECK_THAT(error.what(), Catch::Contains("does not fit in the shared-memory arena of 33554432 "
                                           "bytes"));
  CHECK(near.sender().stats().arena_bytes_in_use == 0);  // the unsent message gave it back
  near.send(blob_in_place(near, 2, 12 * MiB, random));   // and the arena still serves
  CHECK(blob_intact(far.receive_as<test::Blob>().root()));
}


namespace {

/// Sends small messages (and lets the receiver find nothing more to read) until no
/// arena is mapped in this process or `limit` passed; returns how many it sent.
int send_small_until_no_arena(Channel& near, Channel& far, Random& random,
                              std::chrono::milliseconds limit) {
  const auto give_up = std::chrono::steady_clock::now() + limit;
  int sent = 0;
  while (!mappings_of("capnsplice-arena").empty() && std::chrono::steady_clock::now() < give_up) {
    send_blob(near, 1, 100, random);  // on the pipe: the sender looks for an idle arena
    far.receive();
    static_cast<void>(far.try_receive());  // nothing to read: the receiver lets go of it
    ++sent;
    std::this_thread::sleep_for(5ms);
  }
  return sent;
}

}  // namespace

TEST_CASE("an arena idle past arena_idle_retire_after is dropped at both ends while only small "
          "messages follow") {
  auto [near, far] = Channel::pair(shared_options()
                                       .with_arena_keep_bytes(16 * MiB)
                                       .with_arena_idle_retire_after(50ms));
  Random random(21);
  near.send(blob_in_place(near, 0, 24 * MiB, random));
  CHECK(blob_intact(far.receive_as<test::Blob>().root()));  // and dropped
  REQUIRE(mappings_of("capnsplice-arena").size() == 2);      // sender's and receiver's
  const int small = send_small_until_no_arena(near, far, random, 5000ms);
  CHECK(mappings_of("capnsplice-arena").empty());
  CHECK(arena_descriptors() == 0);
  CHECK(small >= 8);  // not before it was idle for 50 ms
  CHECK(near.sender().stats().arenas_created == 1);
  // The next large message gets a fresh arena.
  near.send(blob_in_place(near, 2, 24 * MiB, random));
  CHECK(blob_intact(far.receive_as<test::Blob>().root()));
  CHECK(near.sender().stats().arenas_created == 2);
}

TEST_CASE("an arena is not retired while the reader holds a message in it") {
  auto [near, far] = Channel::pair(shared_options()
                                       .with_arena_keep_bytes(16 * MiB)
                                       .with_arena_idle_retire_after(20ms));
  Random random(24);
  near.send(blob_in_place(near, 0, 24 * MiB, random));
  far.receive();  // dropped: 24 MiB resident, past the 16 MiB kept
  near.send(blob_in_place(near, 1, 1 * MiB, random));
  std::optional<ReceivedMessage> held = far.receive();
  send_small_until_no_arena(near, far, random, 300ms);
  CHECK(mappings_of("capnsplice-arena").size() == 2);
  CHECK(blob_intact(held->root<test::Blob>()));
  held.reset();
  send_small_until_no_arena(near, far, random, 5000ms);
  CHECK(mappings_of("capnsplice-arena").empty());
  CHECK(near.sender().stats().arenas_created == 1);
}

TEST_CASE("a stream of shared-memory messages is released through the ring, without a "
          "record on the control link") {
  auto [near, far] = Channel::pair(shared_options());
  Random random(23);
  constexpr int kMessages = 300;  // more than the ring's slots and the messages held
  for (int i = 0; i < kMessages; ++i) {
    near.send(blob_in_place(near, i, 256 * KiB, random));
    CHECK(blob_intact(far.receive_as<test::Blob>().root()));
  }
  const SenderStats stats = near.sender().stats();
  CHECK(stats.shared_messages == kMessages);
  // Each message's release is taken in by a later allocation: all but the last.
  CHECK(stats.shared_releases_by_ring >= kMessages - 1);
  CHECK(stats.shared_releases_by_record == 0);
}

TEST_CASE("a sender waiting for the reader to release a shared message goes on once the "
          "reader drops one") {
  // The reader holds as many messages as a sender may: the next send waits for a release.
  auto [near, far] = Channel::pair(
      shared_options().with_send_path(SendPath::shared_memory).with_send_timeout(30s));
  Random random(24);
  std::vector<ReceivedMessage> held;
  for (int i = 0; i < 128; ++i) {
    near.send(blob_in_place(near, i, 64, random));
    held.push_back(far.receive());
  }
  std::atomic<bool> sent{false};
  std::thread sender([&] {
    Random more(25);
    near.send(blob_in_place(near, 128, 64, more));
    sent = true;
  });
  std::this_thread::sleep_for(100ms);
  CHECK_FALSE(sent.load());  // still waiting
  held.erase(held.begin());
  sender.join();  // a wait past the 30 s deadline would have thrown Timeout
  CHECK(sent.load());
  CHECK(far.receive_as<test::Blob>()->getSeq() == 128);
  CHECK(near.sender().stats().shared_releases_by_ring >= 1);
}

TEST_CASE("a message whose root must be copied into a full arena is refused whole: "
          "try_send says queue_full, send throws Overloaded, and it goes out once the reader "
          "lets go") {
  // The root is built in the pipe pool; describing the message copies it into the
  // arena. This copy found no room: it used to drop the message (SystemError).
  auto [near, far] = Channel::pair(
      shared_options().with_arena_bytes(32 * MiB).with_shared_memory_threshold_bytes(8));
  Random random(51);
  OutgoingMessage waiting = blob_in_place(near, 0, 1 * MiB, random);
  // Fill the arena with messages the reader holds, each size halving down to 8 bytes,
  // until even the smallest one finds no room.
  std::vector<ReceivedMessage> held;
  std::vector<OutgoingMessage> refused;  // kept: dropping one would free room again
  for (std::size_t size = 4 * MiB; size >= 8; size /= 2) {
    for (;;) {
      const std::size_t in_use = near.sender().stats().arena_bytes_in_use;
      OutgoingMessage filler = near.new_message(Deadline::immediate());
      fill_blob_in_place(filler, 1, size, random);
      // Where the arena is full, building with Deadline::immediate() takes the pipe pool;
      // where it has no room for the root, try_send refuses.
      if (near.sender().stats().arena_bytes_in_use < in_use + size ||
          near.try_send(std::move(filler)) != SendStatus::sent) {
        refused.push_back(std::move(filler));
        break;
      }
      held.push_back(far.receive(Deadline::after(10s)));
    }
  }
  REQUIRE(near.sender().stats().shared_messages >= 8);
  CHECK(near.try_send(std::move(waiting)) == SendStatus::queue_full);
  const Error error = error_from([&] { near.send(std::move(waiting), Deadline::after(50ms)); });
  CHECK(error.code() == ErrorCode::Overloaded);
  CHECK_THAT(error.what(), Catch::Contains("still yours"));
  held.clear();
  refused.clear();
  near.send(std::move(waiting));
  auto arrived = far.receive_as<test::Blob>(Deadline::after(10s));
  CHECK(arrived->getSeq() == 0);
  CHECK(blob_intact(arrived.root()));
}
