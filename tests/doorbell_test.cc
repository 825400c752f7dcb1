// The doorbell (ChannelOptions::with_doorbell): a receiver that spins watches a counter
// the peer's sender bumps after each write, and makes no system call while nothing rang;
// what the doorbell does not announce (another writer, the end of the stream, an
// interrupt) is still seen, and try_receive() never trusts it.
#include <catch2/catch.hpp>

#include <capnp/serialize.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "capnsplice/channel.h"
#include "support/blob.h"
#include "support/error_from.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

/// Busy-polls `channel` until a message comes (at most 10 s); counts the empty looks.
std::optional<ReceivedMessage> busy_poll(Channel& channel, std::uint64_t* looks = nullptr) {
  const auto give_up = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < give_up) {
    if (auto message = channel.try_receive_spinning()) return message;
    if (looks != nullptr) ++*looks;
  }
  return std::nullopt;
}

/// A pair whose `far` end watches `near`'s doorbell, after one message from near to far.
std::pair<Channel, Channel> pair_with_doorbell_rung(
    ChannelOptions options = ChannelOptions().with_doorbell()) {
  auto [near, far] = Channel::pair(options);
  Random random(1);
  send_blob(near, 0, 64, random);
  REQUIRE(busy_poll(far));
  // The receiver looks for the doorbell at most once a millisecond while it finds nothing.
  const auto give_up = std::chrono::steady_clock::now() + 10s;
  while (!far.receiver().stats().doorbell && std::chrono::steady_clock::now() < give_up) {
    REQUIRE_FALSE(far.try_receive());
  }
  REQUIRE(far.receiver().stats().doorbell);
  REQUIRE(near.sender().stats().doorbell);
  return {std::move(near), std::move(far)};
}

/// Writes a Blob frame straight into `near`'s pipe, past its sender: nothing rings.
void write_past_the_sender(Channel& near, std::uint64_t seq) {
  capnp::MallocMessageBuilder message;
  Random random(seq);
  fill_blob(message.initRoot<test::Blob>(), seq, 64, random);
  const auto words = capnp::messageToFlatArray(message);
  const auto bytes = words.asBytes();
  REQUIRE(::write(near.sender().fd(), bytes.begin(), bytes.size()) ==
          static_cast<ssize_t>(bytes.size()));
}

TEST_CASE("a busy poll on a quiet doorbell makes no system call per look") {
  auto [near, far] = pair_with_doorbell_rung();
  const ReceiverStats before = far.receiver().stats();
  constexpr int kLooks = 100'000;
  for (int i = 0; i < kLooks; ++i) REQUIRE_FALSE(far.try_receive_spinning());
  const ReceiverStats after = far.receiver().stats();
  // One real read every 1024 looks, for writers that do not ring and the end of stream.
  CHECK(after.empty_reads - before.empty_reads <= kLooks / 1024 + 2);
  CHECK(after.doorbell_looks - before.doorbell_looks >= kLooks - kLooks / 1024 - 2);
  // And a message sent now is the next thing it sees.
  Random random(2);
  send_blob(near, 1, 64, random);
  auto message = busy_poll(far);
  REQUIRE(message);
  CHECK(message->root<test::Blob>().getSeq() == 1);
}

TEST_CASE("try_receive reads the pipe every time, doorbell or not: an event loop may sleep "
          "after an empty answer") {
  auto [near, far] = pair_with_doorbell_rung();
  const ReceiverStats before = far.receiver().stats();
  for (int i = 0; i < 100; ++i) REQUIRE_FALSE(far.try_receive());
  CHECK(far.receiver().stats().empty_reads - before.empty_reads == 100);
}

TEST_CASE("a receive waiting for a reply spins on the doorbell, not on the pipe") {
  auto [near, far] = pair_with_doorbell_rung(
      ChannelOptions().with_doorbell().with_spin_before_block(std::chrono::milliseconds(10)));
  constexpr int kRounds = 1000;
  const ReceiverStats before = far.receiver().stats();  // before the answerer uses `far`
  std::thread answerer([&far = far] {
    Random random(3);
    for (int i = 0; i < kRounds; ++i) {
      auto request = far.receive_for(10s);
      send_blob(far, request.root<test::Blob>().getSeq(), 64, random);
    }
  });
  Random random(4);
  for (int i = 0; i < kRounds; ++i) {
    send_blob(near, 100 + i, 64, random);
    auto reply = near.receive_for(10s);
    REQUIRE(reply.root<test::Blob>().getSeq() == static_cast<std::uint64_t>(100 + i));
    REQUIRE(blob_intact(reply.root<test::Blob>()));
  }
  answerer.join();
  const ReceiverStats after = far.receiver().stats();
  CHECK(after.messages - before.messages == kRounds);
  // Each wait ended when the doorbell showed a write (without it: polls of the pipe);
  // the read then overlaps the write, so it may still find the pipe empty once.
  CHECK(after.doorbell_looks - before.doorbell_looks > kRounds / 2);
  CHECK(after.empty_reads - before.empty_reads < 3 * kRounds);
}

TEST_CASE("bytes from a writer that does not ring arrive, in a busy poll and in a receive, "
          "and a few such misses stop the watch") {
  auto [near, far] = pair_with_doorbell_rung();
  REQUIRE_FALSE(far.try_receive_spinning());  // the pipe is empty and the doorbell quiet
  write_past_the_sender(near, 7);
  std::uint64_t looks = 0;
  auto polled = busy_poll(far, &looks);
  REQUIRE(polled);
  CHECK(polled->root<test::Blob>().getSeq() == 7);
  CHECK(looks <= 2 * 1024);

  write_past_the_sender(near, 8);
  auto received = far.receive_for(10s);  // spins on the doorbell, then polls the pipe
  CHECK(received.root<test::Blob>().getSeq() == 8);
  CHECK(blob_intact(received.root<test::Blob>()));

  for (std::uint64_t seq = 9; far.receiver().stats().doorbell && seq < 100; ++seq) {
    write_past_the_sender(near, seq);
    CHECK(far.receive_for(10s).root<test::Blob>().getSeq() == seq);
  }
  CHECK_FALSE(far.receiver().stats().doorbell);  // it watches the pipe again
  Random random(6);
  send_blob(near, 100, 64, random);
  CHECK(far.receive_for(10s).root<test::Blob>().getSeq() == 100);
}

TEST_CASE("the end of the stream reaches a receiver on a quiet doorbell") {
  SECTION("busy polling") {
    auto [near, far] = pair_with_doorbell_rung();
    REQUIRE_FALSE(far.try_receive_spinning());
    { Channel gone = std::move(near); }
    const auto give_up = std::chrono::steady_clock::now() + 10s;
    while (!far.at_end() && std::chrono::steady_clock::now() < give_up) {
      REQUIRE_FALSE(far.try_receive_spinning());
    }
    CHECK(far.at_end());
  }
  SECTION("blocking") {
    auto [near, far] = pair_with_doorbell_rung();
    REQUIRE_FALSE(far.try_receive());
    std::thread closer([near = std::move(near)]() mutable {
      std::this_thread::sleep_for(20ms);
      Channel gone = std::move(near);
    });
    const Error error = error_from([&far = far] { far.receive_for(10s); });
    closer.join();
    CHECK(error.code() == ErrorCode::PeerClosed);
  }
}

TEST_CASE("an interrupt ends a receive spinning on the doorbell at once, not at the spin's end") {
  auto [near, far] = pair_with_doorbell_rung(
      ChannelOptions().with_doorbell().with_spin_before_block(std::chrono::seconds(30)));
  REQUIRE_FALSE(far.try_receive());
  std::thread interrupter([&far = far] {
    std::this_thread::sleep_for(20ms);
    far.interrupt_receive();
  });
  const auto start = std::chrono::steady_clock::now();
  const Error error = error_from([&far = far] { far.receive_for(60s); });
  const auto waited = std::chrono::steady_clock::now() - start;
  interrupter.join();
  CHECK(error.code() == ErrorCode::Interrupted);
  CHECK(waited < 10s);  // the spin alone would last 30 s
}

TEST_CASE("without the option no doorbell is made or watched") {
  auto [near, far] = Channel::pair();
  Random random(5);
  send_blob(near, 0, 64, random);
  REQUIRE(busy_poll(far));
  for (int i = 0; i < 100; ++i) REQUIRE_FALSE(far.try_receive());
  CHECK_FALSE(near.sender().stats().doorbell);
  CHECK_FALSE(far.receiver().stats().doorbell);
  CHECK(far.receiver().stats().doorbell_looks == 0);
  CHECK(far.receiver().stats().empty_reads >= 100);
}

}  // namespace

namespace {

TEST_CASE("busy polling round trips between two processes keep the doorbell: a sender "
          "between its write and its ring is not taken for a writer that does not ring") {
  auto [near, far] = pair_with_doorbell_rung();
  constexpr int kRounds = 100'000;
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    { Channel gone = std::move(near); }
    Random random(7);
    for (int i = 0; i < kRounds; ++i) {
      auto request = busy_poll(far);
      if (!request) ::_exit(2);
      send_blob(far, request->root<test::Blob>().getSeq(), 64, random);
    }
    ::_exit(far.receiver().stats().doorbell ? 0 : 1);
  }
  { Channel gone = std::move(far); }
  Random random(8);
  for (int i = 0; i < kRounds; ++i) {
    send_blob(near, i, 64, random);
    auto reply = busy_poll(near);
    REQUIRE(reply);
    REQUIRE(reply->root<test::Blob>().getSeq() == static_cast<std::uint64_t>(i));
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);  // the child's receiver still watches the doorbell
  CHECK(near.receiver().stats().doorbell);
}

}  // namespace
