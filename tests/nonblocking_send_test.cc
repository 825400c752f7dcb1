// Sends that never block and never cut the stream: try_send, the outgoing queue and its
// bound, deadlines on every call that can wait, write readiness (watch_fd, Poller).
#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/epoll.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "blob.h"
#include "capnsplice/channel.h"
#include "capnsplice/poller.h"
#include "error_from.h"
#include "test.capnp.h"
#include "test_support.h"

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

/// Calls `call` and returns how long it took.
template <typename Call>
Clock::duration timed(Call&& call) {
  const auto started = Clock::now();
  call();
  return Clock::now() - started;
}

/// A blob message built without ever waiting for pool or arena room.
OutgoingMessage blob_message(Channel& channel, std::uint64_t seq, std::size_t size,
                             Random& random) {
  OutgoingMessage message = channel.new_message(Deadline::immediate());
  fill_blob(message.init_root<test::Blob>(), seq, size, random);
  return message;
}

/// True when `fd` polls readable now.
bool readable_now(int fd) {
  pollfd probe{fd, POLLIN, 0};
  return ::poll(&probe, 1, 0) == 1 && (probe.revents & POLLIN) != 0;
}

}  // namespace

TEST_CASE("try_send to a reader that stopped queues, then refuses with queue_full and leaves "
          "the message with the caller; nothing is lost once the reader resumes") {
  auto [near, far] = Channel::pair(ChannelOptions()
                                       .with_pipe_bytes(64 * KiB)
                                       .with_max_unsent_bytes(256 * KiB));
  Random random(1);
  std::uint64_t taken = 0;
  SendStatus status = SendStatus::sent;
  OutgoingMessage refused;
  while (status != SendStatus::queue_full) {
    OutgoingMessage message = blob_message(near, taken, 8 * KiB, random);
    status = near.try_send(std::move(message));
    if (status == SendStatus::queue_full) {
      CHECK(static_cast<bool>(message));  // not taken: still the caller's
      refused = std::move(message);
    } else {
      CHECK_FALSE(static_cast<bool>(message));
      ++taken;
    }
    REQUIRE(taken < 1000);
  }
  CHECK(near.unsent_bytes() > 128 * KiB);
  CHECK(near.unsent_bytes() <= 256 * KiB + 9 * KiB);
  CHECK(near.sender().written_messages() < taken);

  // The reader resumes; the loop flushes, then sends the refused message unchanged.
  std::vector<std::uint64_t> seen;
  bool all_intact = true;  // Catch's CHECK is for the main thread only
  std::thread reader([&far = far, &seen, &all_intact, total = taken + 1] {
    while (seen.size() < total) {
      auto blob = far.receive_as<test::Blob>(Deadline::after(20s));
      all_intact = all_intact && blob_intact(blob.root());
      seen.push_back(blob->getSeq());
    }
  });
  const auto until = Clock::now() + 20s;
  while (near.try_flush() != 0 && Clock::now() < until) std::this_thread::sleep_for(1ms);
  const SendStatus resent = near.try_send(std::move(refused));
  near.flush(Deadline::after(20s));
  reader.join();
  CHECK(resent != SendStatus::queue_full);
  CHECK(all_intact);
  REQUIRE(seen.size() == taken + 1);
  for (std::uint64_t i = 0; i < seen.size(); ++i) CHECK(seen[i] == i);
  CHECK(near.sender().written_messages() == taken + 1);
}

TEST_CASE("a non-blocking sender of 64 B to 16 MiB messages against a reader that stalls at "
          "random delivers every message once, in order, intact, and never blocks") {
  // Every path: copy (< 1 KiB), vmsplice, shared memory (>= 128 KiB) and 16 MiB ones.
  const std::size_t sizes[] = {64, 700, 4 * KiB, 60 * KiB, 200 * KiB, 1 * MiB, 16 * MiB};
  constexpr std::uint64_t kMessages = 300;
  // A small pipe and arena bound, so the reader's stalls fill both: building then falls
  // back from the arena to the pipe rather than wait.
  auto [near, far] = Channel::pair(ChannelOptions()
                                       .with_pipe_bytes(64 * KiB)
                                       .with_arena_keep_bytes(48 * MiB)
                                       .with_max_unsent_bytes(4 * MiB));
  std::atomic<bool> reader_failed{false};
  std::thread reader([&far = far, &reader_failed] {
    Random pauses(2);
    for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
      if (pauses.next() % 4 == 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(pauses.next() % 20));
      }
      auto blob = far.receive_as<test::Blob>(Deadline::after(60s));
      if (blob->getSeq() != seq || !blob_intact(blob.root())) reader_failed = true;
    }
    if (far.try_receive().has_value()) reader_failed = true;  // nothing more than sent
  });

  Random random(3);
  Clock::duration longest_call{};
  auto call = [&longest_call](auto&& action) {
    longest_call = std::max(longest_call, timed(action));
  };
  const int watch = near.watch_fd();
  std::uint64_t seq = 0;
  OutgoingMessage pending;
  std::size_t queued = 0, refused = 0;
  const auto until = Clock::now() + 120s;
  while ((seq < kMessages || near.unsent_bytes() != 0) && Clock::now() < until) {
    if (!pending && seq < kMessages) {
      pending = blob_message(near, seq, sizes[random.next() % std::size(sizes)], random);
    }
    if (pending) {
      SendStatus status = SendStatus::sent;
      call([&] { status = near.try_send(std::move(pending)); });
      if (status == SendStatus::queue_full) {
        ++refused;
      } else {
        ++seq;
        if (status == SendStatus::queued) ++queued;
        continue;
      }
    }
    // Like an event loop: sleep until the watch descriptor says the pipe has room.
    pollfd wait{watch, POLLIN, 0};
    ::poll(&wait, 1, 100);
    call([&] { near.try_flush(); });
  }
  reader.join();
  CHECK_FALSE(reader_failed);
  CHECK(seq == kMessages);
  CHECK(near.unsent_bytes() == 0);
  CHECK(near.sender().written_messages() == kMessages);
  CHECK(queued > 0);  // the reader's stalls did fill the pipe
  const SenderStats stats = near.sender().stats();
  CHECK(stats.shared_messages > 0);
  CHECK(stats.spliced_messages > 0);
  CHECK(stats.copied_messages > 0);
  // The benchmark measures the stall; here only a bound no blocking call could meet
  // (the reader stalls up to 20 ms at a time, and a blocking send would wait it out).
  CHECK(longest_call < 250ms);
  INFO("queued " << queued << ", refused " << refused);
}

TEST_CASE("a hung peer never holds queue(), building, flush or close past their deadlines") {
  auto [near, far] = Channel::pair(ChannelOptions()
                                       .with_pipe_bytes(64 * KiB)
                                       .with_pool_bytes(256 * KiB)
                                       .with_max_unsent_bytes(1 * MiB)
                                       .with_send_timeout(100ms));
  Random random(4);
  // queue() with Deadline::immediate() never waits: it takes messages until the bound,
  // then refuses (Overloaded).
  Error overloaded = error_from([&near = near, &random] {
    for (std::uint64_t seq = 0; seq < 10'000; ++seq) {
      OutgoingMessage message = blob_message(near, seq, 30 * KiB, random);
      const auto took = timed([&] { near.queue(std::move(message), Deadline::immediate()); });
      REQUIRE(took < 2s);
    }
  });
  CHECK(overloaded.code() == ErrorCode::Overloaded);
  CHECK_THAT(overloaded.what(), Catch::Contains("not taken"));
  // Without a deadline of its own, queue() waits for room until the send timeout.
  const auto queue_timeout = timed([&near = near, &random] {
    CHECK(error_from([&] { near.queue(blob_message(near, 0, 30 * KiB, random)); }).code() ==
          ErrorCode::Overloaded);
  });
  CHECK(queue_timeout >= 100ms);
  CHECK(queue_timeout < 5s);
  // Building never waits with Deadline::immediate(), even with the pool full of queued
  // and unread frames: it takes fresh memory.
  const auto building = timed([&near = near, &random] {
    for (int i = 0; i < 16; ++i) blob_message(near, 0, 60 * KiB, random);
  });
  CHECK(building < 2s);
  // Building with a deadline waits for the pool until then, and no longer.
  const auto build_deadline = timed([&near = near, &random] {
    try {
      for (int i = 0; i < 64; ++i) {
        OutgoingMessage message = near.new_message(Deadline::after(100ms));
        fill_blob(message.init_root<test::Blob>(), 0, 60 * KiB, random);
        static_cast<void>(near.try_send(std::move(message)));
      }
    } catch (const Error& error) {
      CHECK(error.code() == ErrorCode::Timeout);
    }
  });
  CHECK(build_deadline < 64 * 100ms + 5s);
  // flush and close give up at their deadlines, keeping everything queued.
  const std::size_t unsent = near.unsent_bytes();
  CHECK(unsent > 0);
  const auto flushing = timed([&near = near] {
    CHECK(error_from([&near] { near.flush(Deadline::after(100ms)); }).code() ==
          ErrorCode::Timeout);
  });
  CHECK(flushing >= 100ms);
  CHECK(flushing < 5s);
  const auto closing = timed([&near = near] {
    CHECK(error_from([&near] { near.close_sending(Deadline::after(100ms)); }).code() ==
          ErrorCode::Timeout);
  });
  CHECK(closing < 5s);
  CHECK(near.unsent_bytes() == unsent);
  CHECK(near.sender().fd() >= 0);  // still open: close can be called again
  // A blocking send to the hung peer ends at its deadline too; by default at 10 s.
  CHECK(SenderOptions().send_timeout == std::chrono::nanoseconds(10s));
  static_cast<void>(far);
}

TEST_CASE("a send refused with Overloaded leaves the message with the caller to send again") {
  auto [near, far] = Channel::pair(ChannelOptions()
                                       .with_pipe_bytes(64 * KiB)
                                       .with_max_unsent_bytes(64 * KiB));
  Random random(5);
  std::uint64_t next = 0;  // the next blob's sequence number
  while (near.try_send(blob_message(near, next, 16 * KiB, random)) != SendStatus::queued) {
    REQUIRE(++next < 100);
  }
  ++next;
  // Fill the queue to its bound, then a blocking send gives up at its deadline.
  while (near.unsent_bytes() + 17 * KiB <= 64 * KiB) {
    REQUIRE(near.try_send(blob_message(near, next, 16 * KiB, random)) == SendStatus::queued);
    ++next;
  }
  OutgoingMessage message = blob_message(near, next, 16 * KiB, random);
  const Error error =
      error_from([&] { near.send(std::move(message), Deadline::after(50ms)); });
  CHECK(error.code() == ErrorCode::Overloaded);
  REQUIRE(static_cast<bool>(message));
  bool in_order = true;  // Catch's CHECK is for the main thread only
  std::thread reader([&far = far, &in_order, last = next] {
    for (std::uint64_t expected = 0; expected <= last; ++expected) {
      auto blob = far.receive_as<test::Blob>(Deadline::after(20s));
      in_order = in_order && blob->getSeq() == expected && blob_intact(blob.root());
    }
  });
  near.send(std::move(message), Deadline::after(20s));
  reader.join();
  CHECK(in_order);
}

TEST_CASE("a send on an end closed for sending throws and leaves the message with the "
          "caller") {
  auto [near, far] = Channel::pair();
  Random random(6);
  near.close_sending();
  OutgoingMessage message = blob_message(near, 0, 64, random);
  CHECK(error_from([&] { near.send(std::move(message)); }).code() == ErrorCode::InvalidArgument);
  CHECK(static_cast<bool>(message));
  CHECK(error_from([&] { static_cast<void>(near.try_send(std::move(message))); }).code() ==
        ErrorCode::InvalidArgument);
  CHECK(static_cast<bool>(message));
}

TEST_CASE("watch_fd is readable when bytes arrive and when the pipe has room for unsent "
          "bytes, and stays open through close_sending and the peer's end") {
  auto [near, far] = Channel::pair(ChannelOptions().with_pipe_bytes(64 * KiB));
  Random random(6);
  const int watch = near.watch_fd();
  CHECK(watch == near.watch_fd());  // made once
  int outer = ::epoll_create1(EPOLL_CLOEXEC);
  REQUIRE(outer >= 0);
  epoll_event event{};
  event.events = EPOLLIN | EPOLLET;  // as KJ and Asio watch descriptors
  REQUIRE(::epoll_ctl(outer, EPOLL_CTL_ADD, watch, &event) == 0);
  CHECK_FALSE(readable_now(watch));  // nothing to receive, nothing unsent

  send_blob(far, 0, 100, random);
  CHECK(::epoll_wait(outer, &event, 1, 5000) == 1);
  CHECK(near.try_receive().has_value());
  CHECK_FALSE(readable_now(watch));

  // Fill the pipe: with unsent bytes and no room the watch stays quiet; once the reader
  // takes some, it wakes.
  std::uint64_t seq = 0;
  while (near.try_send(blob_message(near, seq, 8 * KiB, random)) == SendStatus::sent) ++seq;
  ++seq;
  REQUIRE(near.unsent_bytes() > 0);
  CHECK_FALSE(readable_now(watch));
  CHECK(far.try_receive().has_value());
  CHECK(::epoll_wait(outer, &event, 1, 5000) == 1);
  while (near.unsent_bytes() != 0) {
    near.try_flush();
    while (far.try_receive()) {
    }
  }
  CHECK_FALSE(readable_now(watch));  // nothing unsent: the pipe's room wakes nobody

  near.close_sending();
  far = Channel::pair().first;  // the peer's end is gone
  CHECK(::epoll_wait(outer, &event, 1, 5000) == 1);  // end of stream
  CHECK(near.try_receive() == std::nullopt);
  CHECK(near.at_end());
  // The watcher can still take its descriptor out: it was never closed under it.
  CHECK(::epoll_ctl(outer, EPOLL_CTL_DEL, watch, nullptr) == 0);
  ::close(outer);
}

TEST_CASE("a Poller reports writable for a channel holding unsent bytes once its reader "
          "makes room, and stops watching once nothing is unsent") {
  auto [near, far] = Channel::pair(ChannelOptions().with_pipe_bytes(64 * KiB));
  Random random(7);
  Poller poller;
  poller.add(near, 1);
  std::uint64_t seq = 0;
  while (near.try_send(blob_message(near, seq, 8 * KiB, random)) == SendStatus::sent) ++seq;
  const std::uint64_t total = seq + 1;
  CHECK(poller.wait(Deadline::after(50ms)).empty());  // no room yet
  std::uint64_t received = 0;
  while (far.try_receive()) ++received;
  bool writable = false;
  for (const PollEvent& event : poller.wait(Deadline::after(5s))) {
    writable = writable || (event.key == 1 && event.writable);
  }
  CHECK(writable);
  while (near.try_flush() != 0) {
    while (far.try_receive()) ++received;
  }
  while (received < total) {
    far.receive(Deadline::after(5s));
    ++received;
  }
  CHECK(received == total);
  // Nothing unsent, nothing to read: the poller has nothing to report.
  CHECK(poller.wait(Deadline::after(50ms)).empty());
}
