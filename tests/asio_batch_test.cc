// The Boost.Asio adapter serving many messages per turn of the loop: the sends one turn
// makes leave in one write, and async_receive_batch hands over every message there is
// in one completion (issue 12: a host's throughput and its peers' wake-ups).
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <catch2/catch.hpp>
#include <algorithm>
#include <functional>
#include <optional>
#include <thread>
#include <vector>

#include "capnsplice/asio.h"
#include "support/asio_support.h"
#include "support/error_from.h"

using namespace capnsplice;
using namespace capnsplice::testing;

namespace {

/// What one async_receive_batch delivered.
struct BatchOutcome {
  bool done = false;
  std::exception_ptr error;
  std::vector<ReceivedMessage> messages;
};

auto batch_into(BatchOutcome& outcome) {
  return [&outcome](std::exception_ptr error, std::vector<ReceivedMessage> messages) {
    outcome = {true, error, std::move(messages)};
  };
}

/// Starts an async_receive_batch and runs `io` until it completed (5 s at most).
BatchOutcome receive_batch(net::io_context& io, AsioChannel& adapter, std::size_t max_messages) {
  BatchOutcome outcome;
  adapter.async_receive_batch(max_messages, batch_into(outcome));
  run_until(io, [&] { return outcome.done; }, 5s);
  return outcome;
}

std::vector<std::uint64_t> seqs_of(std::vector<ReceivedMessage>& messages) {
  std::vector<std::uint64_t> seqs;
  for (ReceivedMessage& message : messages) {
    seqs.push_back(message.root<test::Blob>().getSeq());
  }
  return seqs;
}

}  // namespace

TEST_CASE("the async_sends one handler makes are written together, in one write, after it returns") {
  auto [near, far] = Channel::pair(ChannelOptions().with_send_path(SendPath::copy));
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  constexpr std::uint64_t kSends = 8;
  std::vector<Outcome> sent(kSends);
  std::size_t unsent_inside_handler = 0;
  net::post(io, [&] {
    for (std::uint64_t seq = 0; seq < kSends; ++seq) {
      OutgoingMessage message = adapter.new_message();
      message.init_root<test::Blob>().setSeq(seq);
      adapter.async_send(std::move(message), send_into(sent[seq]));
    }
    unsent_inside_handler = adapter.channel().unsent_bytes();
  });
  io.run();

  CHECK(unsent_inside_handler > 0);  // taken, not written while the handler ran
  for (const Outcome& outcome : sent) {
    CHECK(outcome.done);
    CHECK_FALSE(outcome.error);
  }
  CHECK(adapter.channel().sender().stats().writes == 1);
  for (std::uint64_t seq = 0; seq < kSends; ++seq) {
    CHECK(far.receive_for(5s).root<test::Blob>().getSeq() == seq);
  }
}

TEST_CASE("async_receive_batch hands over every message there is in one completion, in order, up to its limit") {
  auto [near, far] = Channel::pair();
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  for (std::uint64_t seq = 0; seq < 5; ++seq) {
    OutgoingMessage message = far.new_message();
    message.init_root<test::Blob>().setSeq(seq);
    far.queue(std::move(message));
  }
  far.flush();  // one write: all five are there when the first receive looks

  BatchOutcome first = receive_batch(io, adapter, 3);
  CHECK(first.done);
  CHECK_FALSE(first.error);
  CHECK(seqs_of(first.messages) == std::vector<std::uint64_t>{0, 1, 2});

  BatchOutcome rest = receive_batch(io, adapter, 64);
  CHECK(rest.done);
  CHECK_FALSE(rest.error);
  CHECK(seqs_of(rest.messages) == std::vector<std::uint64_t>{3, 4});
}

TEST_CASE("a peer that closes after its last messages: the batch gets them all, the next batch PeerClosed") {
  auto [near, far] = Channel::pair();
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  for (std::uint64_t seq = 0; seq < 3; ++seq) send_seq(far, seq);
  far.close_sending();

  BatchOutcome messages = receive_batch(io, adapter, 64);
  CHECK(messages.done);
  CHECK_FALSE(messages.error);  // the end of stream waits for the next receive
  CHECK(seqs_of(messages.messages) == std::vector<std::uint64_t>{0, 1, 2});

  BatchOutcome end = receive_batch(io, adapter, 64);
  CHECK(end.done);
  CHECK(code_of(end.error) == ErrorCode::PeerClosed);
  CHECK(end.messages.empty());
}

TEST_CASE("async_receive_batch waits for the first message, and a cancelled one loses none") {
  auto [near, far] = Channel::pair();
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  BatchOutcome cancelled;
  adapter.async_receive_batch(64, batch_into(cancelled));
  poll(io);
  CHECK_FALSE(cancelled.done);  // nothing there: it waits
  adapter.cancel();
  CHECK(run_until(io, [&] { return cancelled.done; }, 5s));
  CHECK(is_operation_aborted(cancelled.error));
  CHECK(cancelled.messages.empty());

  BatchOutcome waiting;
  adapter.async_receive_batch(64, batch_into(waiting));
  poll(io);
  CHECK_FALSE(waiting.done);
  send_seq(far, 7);
  CHECK(run_until(io, [&] { return waiting.done; }, 5s));
  CHECK_FALSE(waiting.error);
  CHECK(seqs_of(waiting.messages) == std::vector<std::uint64_t>{7});
}

TEST_CASE("bursts that arrive after a receive left the pipe empty still wake the next one: "
          "2000 messages in random bursts, single and batch receives mixed, all in order") {
  // The adapter skips the read that would find an emptied pipe empty, until the next
  // wake-up: a message that comes after that read must still make one.
  auto [near, far] = Channel::pair();
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  constexpr std::uint64_t kMessages = 2000;
  std::thread sender([&far = far] {
    Random random(21);
    for (std::uint64_t seq = 0; seq < kMessages;) {
      const std::uint64_t burst = std::min<std::uint64_t>(1 + random.below(5), kMessages - seq);
      for (std::uint64_t i = 0; i < burst; ++i, ++seq) {
        OutgoingMessage message = far.new_message();
        message.init_root<test::Blob>().setSeq(seq);
        far.queue(std::move(message));
      }
      far.flush();
      if (random.below(4) == 0) std::this_thread::sleep_for(std::chrono::microseconds(random.below(300)));
    }
  });
  std::vector<std::uint64_t> seen;
  Random choice(22);
  bool failed = false;
  std::function<void()> next = [&] {
    if (seen.size() >= kMessages || failed) return;
    if (choice.below(2) == 0) {
      adapter.async_receive([&](std::exception_ptr error, ReceivedMessage message) {
        if (error) failed = true;
        if (!error) seen.push_back(message.root<test::Blob>().getSeq());
        next();
      });
    } else {
      adapter.async_receive_batch(1 + choice.below(4), [&](std::exception_ptr error,
                                                           std::vector<ReceivedMessage> batch) {
        if (error) failed = true;
        for (ReceivedMessage& message : batch) seen.push_back(message.root<test::Blob>().getSeq());
        next();
      });
    }
  };
  next();
  const bool done = run_until(io, [&] { return seen.size() >= kMessages || failed; }, 60s);
  sender.join();
  CHECK(done);
  CHECK_FALSE(failed);
  CHECK(seen == iota(kMessages));
}
