// queue() collects messages; flush() writes them in order, in as few system calls as
// the write methods allow.
#include <catch2/catch.hpp>

#include <thread>

#include "capnsplice/channel.h"
#include "support/blob.h"
#include "support/error_from.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;

void queue_blob(Channel& channel, std::uint64_t seq, std::size_t size, Random& random) {
  auto message = channel.new_message();
  fill_blob(message.init_root<test::Blob>(), seq, size, random);
  channel.queue(std::move(message));
}

}  // namespace

TEST_CASE("queued messages are not written before flush") {
  auto [near, far] = Channel::pair();
  Random random(1);
  for (int i = 0; i < 3; ++i) queue_blob(near, i, 100, random);
  CHECK(near.sender().has_queued());
  CHECK_FALSE(far.try_receive().has_value());
  near.flush();
  CHECK_FALSE(near.sender().has_queued());
  for (int i = 0; i < 3; ++i) CHECK(far.receive_as<test::Blob>()->getSeq() == i);
}

TEST_CASE("a flushed batch of small messages reaches the reader in one read") {
  auto [near, far] = Channel::pair();
  Random random(2);
  for (int i = 0; i < 100; ++i) queue_blob(near, i, 40, random);
  near.flush();
  for (int i = 0; i < 100; ++i) CHECK(far.receive_as<test::Blob>()->getSeq() == i);
  CHECK(far.receiver().stats().reads == 1);
  CHECK(near.sender().stats().messages == 100);
}

TEST_CASE("send writes the queued messages first, in order") {
  auto [near, far] = Channel::pair();
  Random random(3);
  queue_blob(near, 0, 10, random);
  queue_blob(near, 1, 100000, random);  // spliced, between two copies
  queue_blob(near, 2, 10, random);
  send_blob(near, 3, 10, random);
  for (int i = 0; i < 4; ++i) {
    auto blob = far.receive_as<test::Blob>();
    CHECK(blob->getSeq() == i);
    CHECK(blob_intact(blob.root()));
  }
  CHECK(near.sender().stats().spliced_messages == 1);
  CHECK(near.sender().stats().copied_messages == 3);
}

TEST_CASE("a batch reaching 256 messages is written without an explicit flush") {
  auto [near, far] = Channel::pair();
  Random random(4);
  for (int i = 0; i < 256; ++i) queue_blob(near, i, 8, random);
  CHECK_FALSE(near.sender().has_queued());
  CHECK(far.receive_as<test::Blob>()->getSeq() == 0);
}

TEST_CASE("a pool full of queued messages writes them instead of taking new memory") {
  auto [near, far] = Channel::pair(ChannelOptions()
                                       .with_pool_bytes(256 * KiB)
                                       .with_send_path(SendPath::vmsplice));
  constexpr int kCount = 200;
  std::thread reader([&far = far] {
    for (int i = 0; i < kCount; ++i) {
      auto blob = far.receive_as<test::Blob>();
      if (blob->getSeq() != static_cast<std::uint64_t>(i) || !blob_intact(blob.root())) return;
    }
  });
  Random random(5);
  for (int i = 0; i < kCount; ++i) queue_blob(near, i, 20000, random);  // 4 MB through 256 KiB
  near.flush();
  reader.join();
  CHECK(near.sender().stats().messages == kCount);
  CHECK(near.sender().stats().dedicated_allocations == 0);
}

TEST_CASE("messages queued when the peer is gone are reported as not written") {
  auto [near, far] = Channel::pair();
  { Channel gone = std::move(far); }
  Random random(6);
  queue_blob(near, 0, 10, random);
  queue_blob(near, 1, 10, random);
  try {
    near.flush();
    FAIL("flush succeeded without a reader");
  } catch (const Error& error) {
    CHECK(error.code() == ErrorCode::PeerClosed);
    CHECK_THAT(error.what(), Catch::Contains("0 of 2 queued messages were written"));
  }
  CHECK_FALSE(near.sender().has_queued());
}

TEST_CASE("a batch stopped by a deadline keeps the part-written frame's pages until the "
          "reader read them, and finishes the frame later") {
  // A 64 KiB pipe takes the first 40 KB frame whole and the second only in part; the
  // third is not written. The part-written frame's pool pages are in the pipe and in the
  // queue, so they must not go back to the pool (which zeroes them) before the reader has
  // read them: the reader then sees every frame's real bytes, never zeroed ones.
  auto [near, far] = Channel::pair(ChannelOptions()
                                       .with_pipe_bytes(64 * KiB)
                                       .with_send_path(SendPath::vmsplice)
                                       .with_send_timeout(std::chrono::milliseconds(50)));
  Random random(7);
  for (int i = 0; i < 3; ++i) queue_blob(near, i, 40000, random);
  const Error stopped = error_from([&near = near] { near.flush(); });
  CHECK(stopped.code() == ErrorCode::Timeout);
  CHECK(near.unsent_bytes() > 40000);
  CHECK(near.unsent_bytes() < 80000);
  // Memory the sender takes now must come from elsewhere than the queued frames' pages.
  for (int i = 0; i < 8; ++i) {
    auto scribble = near.new_message();
    fill_blob(scribble.init_root<test::Blob>(), 99, 40000, random);
  }
  auto first = far.receive_as<test::Blob>();
  CHECK(first->getSeq() == 0);
  CHECK(blob_intact(first.root()));
  near.flush(Deadline::after(std::chrono::seconds(10)));  // the reader made room
  for (int seq = 1; seq < 3; ++seq) {
    auto blob = far.receive_as<test::Blob>(Deadline::after(std::chrono::seconds(10)));
    CHECK(blob->getSeq() == static_cast<std::uint64_t>(seq));
    CHECK(blob_intact(blob.root()));
  }
}
