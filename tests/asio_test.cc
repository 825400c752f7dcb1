// The Boost.Asio adapter (capnsplice/asio.h): completion tokens, an edge-triggered
// reactor, a peer that stops reading, cancellation, strands, and every order of teardown.
#include "capnsplice/asio.h"

#include <algorithm>
#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <catch2/catch.hpp>
#include <csignal>
#include <ctime>
#include <functional>
#include <future>
#include <numeric>
#include <optional>
#include <thread>
#include <vector>

#include "capnsplice/process.h"
#include "support/asio_support.h"
#include "support/blob.h"
#include "support/descriptors.h"
#include "support/error_from.h"
#include "support/mixed_stream.h"

#if CAPNSPLICE_ASIO_HAS_CANCELLATION_SLOTS
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#endif

using namespace capnsplice;
using namespace capnsplice::testing;

TEST_CASE("async_send and async_receive with callbacks carry a message each way") {
  auto [near, far] = Channel::pair();
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  Random random(1);

  Outcome sent;
  adapter.async_send(make_blob(adapter, 7, 100, random), send_into(sent));
  CHECK_FALSE(sent.done);  // never completes inside the initiating function
  io.run();                // returns: nothing waits once the message is written
  REQUIRE(sent.done);
  CHECK_FALSE(sent.error);
  auto got = far.receive_as<test::Blob>(Deadline::after(10s));
  CHECK(got->getSeq() == 7);
  CHECK(blob_intact(got.root()));

  Outcome received;
  adapter.async_receive(receive_into(received));
  io.restart();
  poll(io);  // the receive waits on the descriptor now
  CHECK_FALSE(received.done);
  send_seq(far, 8);
  io.restart();
  REQUIRE(run_until(io, [&] { return received.done; }));
  CHECK_FALSE(received.error);
  CHECK(received.message.root<test::Blob>().getSeq() == 8);
}

TEST_CASE("a use_awaitable coroutine echoes 200 messages of 64 B to 1 MiB, in order and intact") {
  auto [near, far] = Channel::pair();
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  constexpr std::uint64_t kMessages = 200;

  std::optional<std::uint64_t> echoed;
  std::exception_ptr coroutine_error;
  net::co_spawn(
      io,
      [&]() -> net::awaitable<std::uint64_t> {
        std::uint64_t count = 0;
        for (;;) {
          std::optional<ReceivedMessage> request;
          try {
            request = co_await adapter.async_receive(net::use_awaitable);
          } catch (const Error& error) {
            if (error.code() != ErrorCode::PeerClosed) throw;
          }
          if (!request) co_return count;  // the peer closed its end
          co_await adapter.async_send(echo_of(adapter, *request), net::use_awaitable);
          ++count;
        }
      },
      [&](std::exception_ptr error, std::uint64_t count) {
        coroutine_error = error;
        echoed = count;
      });

  // The peer, on its own thread: one request, one echo, with a blocking channel.
  std::atomic<std::uint64_t> intact{0};
  std::atomic<std::uint64_t> peer_failures{0};
  std::thread peer([&] {
    try {
      Random random(2);
      for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
        const std::size_t size = std::max<std::size_t>(64, mixed_size(random, 1 * MiB));
        send_blob(far, seq, size, random);
        auto echo = far.receive_as<test::Blob>(Deadline::after(10s));
        if (echo->getSeq() == seq && blob_intact(echo.root()) && blob_size(echo.root()) == size) {
          ++intact;
        }
      }
      far.close_sending();
    } catch (...) {
      ++peer_failures;
    }
  });
  io.run_for(60s);  // returns when the coroutine ends
  peer.join();
  CHECK(peer_failures == 0);
  CHECK(intact == kMessages);
  CHECK_FALSE(coroutine_error);
  CHECK(echoed == kMessages);
}

TEST_CASE("use_future works with the io_context running on another thread") {
  // The receive error crosses threads: Asio's system thread sets it in the promise and
  // drops the promise right after. Held here to the end, so that the last reference, and
  // the Error's destructor, are this thread's: the exception's reference count lives in
  // libstdc++, which ThreadSanitizer cannot see, and a destructor on the system thread
  // after a copy made here reads to it as a data race.
  std::exception_ptr end_error;
  auto [near, far] = Channel::pair();
  net::io_context io;
  Loop loop(io);
  {
    AsioChannel adapter(io.get_executor(), std::move(near));
    Random random(3);

    std::future<void> sent = adapter.async_send(make_blob(adapter, 1, 5000, random), net::use_future);
    REQUIRE(sent.wait_for(10s) == std::future_status::ready);
    sent.get();
    CHECK(far.receive_as<test::Blob>(Deadline::after(10s))->getSeq() == 1);

    std::future<ReceivedMessage> next = adapter.async_receive(net::use_future);
    std::this_thread::sleep_for(20ms);  // most likely waiting on the descriptor by now
    send_seq(far, 2);
    REQUIRE(next.wait_for(10s) == std::future_status::ready);
    CHECK(next.get().root<test::Blob>().getSeq() == 2);

    far.close_sending();
    std::future<ReceivedMessage> end = adapter.async_receive(net::use_future);
    REQUIRE(end.wait_for(10s) == std::future_status::ready);
    try {
      end.get();
    } catch (...) {
      end_error = std::current_exception();
    }
    CHECK(code_of(end_error) == ErrorCode::PeerClosed);
  }  // destroyed off the loop thread: closed on the loop
  CHECK(loop.ran_out_of_work());
}

TEST_CASE("an async_receive completes for each of 1000 messages sent in one burst, edge-triggered") {
  auto [near, far] = Channel::pair();
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  constexpr std::uint64_t kMessages = 1000;
  std::vector<std::uint64_t> seqs;
  std::vector<std::exception_ptr> errors;
  std::uint64_t started = 0;

  // Ten receives wait side by side; each completion starts the next one, until 1000 were
  // started. Receives complete in order, so the k-th completion carries the k-th message.
  std::function<void()> receive_next = [&] {
    ++started;
    adapter.async_receive([&](std::exception_ptr error, ReceivedMessage message) {
      if (error) return errors.push_back(error);
      seqs.push_back(message.root<test::Blob>().getSeq());
      if (started < kMessages) receive_next();
    });
  };

  SECTION("all sent before the first receive: one read brings them all") {
    for (std::uint64_t seq = 0; seq < kMessages; ++seq) send_seq(far, seq);
    for (int chain = 0; chain < 10; ++chain) receive_next();
    CHECK(run_until(io, [&] { return seqs.size() == kMessages; }));
  }
  SECTION("sent in batches of 100, one write each, while ten receives wait") {
    for (int chain = 0; chain < 10; ++chain) receive_next();
    poll(io);  // all ten wait on the descriptor
    std::thread peer([&far] {
      try {
        for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
          OutgoingMessage message = far.new_message();
          message.init_root<test::Blob>().setSeq(seq);
          far.queue(std::move(message));
          if (seq % 100 == 99) far.flush();
        }
      } catch (const Error&) {  // then not all arrive: checked below
      }
    });
    const bool all = run_until(io, [&] { return seqs.size() == kMessages; });
    peer.join();
    CHECK(all);
  }
  CHECK(errors.empty());
  CHECK(seqs == iota(kMessages));
}

TEST_CASE("one wake-up serves every receive waiting: ten receives, ten messages in one write") {
  auto [near, far] = Channel::pair();
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  std::vector<Outcome> outcomes(10);
  for (Outcome& outcome : outcomes) adapter.async_receive(receive_into(outcome));
  poll(io);  // all ten wait on the descriptor
  for (std::uint64_t seq = 0; seq < 10; ++seq) {
    OutgoingMessage message = far.new_message();
    message.init_root<test::Blob>().setSeq(seq);
    far.queue(std::move(message));
  }
  far.flush();  // one write: one edge
  CHECK(run_until(io, [&] { return outcomes.back().done; }, 5s));
  for (std::uint64_t seq = 0; seq < 10; ++seq) {
    CHECK(outcomes[seq].done);
    CHECK_FALSE(outcomes[seq].error);
    if (outcomes[seq].done && !outcomes[seq].error) {
      CHECK(outcomes[seq].message.root<test::Blob>().getSeq() == seq);
    }
  }
}

TEST_CASE("messages left buffered when no receive waited complete the next async_receive at once") {
  auto [near, far] = Channel::pair();
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  for (std::uint64_t seq = 0; seq < 5; ++seq) send_seq(far, seq);
  Outcome first;
  adapter.async_receive(receive_into(first));
  io.run();  // one read took all five into the receiver; the pipe is empty now
  REQUIRE(first.done);
  CHECK(first.message.root<test::Blob>().getSeq() == 0);
  CHECK(adapter.channel().has_buffered_message());

  // The descriptor will not become readable for these: the adapter must look first. Each
  // is started from a handler on the loop, and must not complete inside async_receive.
  for (std::uint64_t seq = 1; seq < 5; ++seq) {
    Outcome next;
    bool completed_inside = true;
    net::post(io, [&] {
      adapter.async_receive(receive_into(next));
      completed_inside = next.done;
    });
    io.restart();
    io.run_for(5s);  // returns at once unless the receive waits for a wake-up
    REQUIRE(next.done);
    CHECK_FALSE(completed_inside);
    CHECK_FALSE(next.error);
    CHECK(next.message.root<test::Blob>().getSeq() == seq);
  }
}

TEST_CASE(
    "async_sends to a peer that stops reading never block the loop, and once it reads again "
    "every message of 64 B to 4 MiB arrives once, in order, intact, the sends completing in "
    "order") {
  constexpr std::uint64_t kMessages = 150;
  Random random(5);
  std::vector<std::size_t> sizes;
  for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
    sizes.push_back(std::max<std::size_t>(64, mixed_size(random, 4 * MiB)));
  }
  // Every path: copy, vmsplice, and the shared-memory arena from 128 KiB.
  sizes[0] = 64;
  sizes[1] = 4 * MiB;
  sizes[2] = 8 * KiB;
  sizes[3] = 200 * KiB;
  sizes[4] = 4 * MiB;
  const std::uint64_t total = std::accumulate(sizes.begin(), sizes.end(), std::uint64_t{0});

  // The child stops reading for 800 ms, then reads with pauses of 50 to 200 ms at random.
  // A 64 KiB pipe and an outgoing queue of 256 KiB: the channel refuses messages
  // (queue_full) again and again, and the adapter must keep them and offer them again.
  const auto options =
      ChannelOptions().with_pipe_bytes(64 * KiB).with_max_unsent_bytes(256 * KiB);
  Child child = fork_with_channel([](Channel& parent) {
    Random pause(99);
    std::this_thread::sleep_for(800ms);
    StreamTally tally;
    for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
      if (pause.below(15) == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50 + pause.below(150)));
      auto blob = parent.receive_as<test::Blob>(Deadline::after(30s));
      tally.add(blob.root());
    }
    parent.send_struct<test::Report>([&](test::Report::Builder report) { tally.write_to(report); });
    parent.close_sending();
    return 0;
  }, options);

  net::io_context io;
  AsioChannel adapter(io, std::move(child.channel));
  std::vector<std::uint64_t> completed;
  std::vector<std::exception_ptr> errors;
  for (std::uint64_t seq = 0; seq < kMessages; ++seq) {  // all outstanding at once
    adapter.async_send(make_blob(adapter, seq, sizes[seq], random), [&, seq](std::exception_ptr error) {
      if (error) errors.push_back(error);
      completed.push_back(seq);
    });
  }

  // A timer on the same loop: it must keep firing while the sends wait for the reader.
  net::steady_timer ticker(io);
  std::uint64_t ticks_while_sending = 0;
  auto last_tick = std::chrono::steady_clock::now();
  std::chrono::steady_clock::duration longest_gap{};
  bool ticking = true;
  std::function<void()> tick = [&] {
    ticker.expires_after(5ms);
    ticker.async_wait([&](boost::system::error_code) {
      const auto now = std::chrono::steady_clock::now();
      longest_gap = std::max(longest_gap, now - last_tick);
      last_tick = now;
      if (completed.size() < kMessages) ++ticks_while_sending;
      if (ticking) tick();
    });
  };
  tick();

  CHECK(run_until(io, [&] { return completed.size() == kMessages; }, 60s));
  ticking = false;
  for (const auto& error : errors) {
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      UNSCOPED_INFO(e.what());
    }
  }
  CHECK(errors.empty());
  CHECK(completed == iota(kMessages));
  // 800 ms of stall at one tick per 5 ms: about 160 ticks; a loop blocked in a send gets none.
  CHECK(ticks_while_sending >= 20);
  CHECK(longest_gap < std::chrono::seconds(2));

  Outcome report;
  adapter.async_receive(receive_into(report));
  REQUIRE(run_until(io, [&] { return report.done; }, 30s));
  REQUIRE_FALSE(report.error);
  const StreamTally tally = StreamTally::read_from(report.message.root<test::Report>());
  CHECK(tally.messages == kMessages);
  CHECK(tally.bytes == total);
  CHECK(tally.mismatches == 0);
  CHECK(tally.out_of_order == 0);
  const SenderStats stats = adapter.channel().sender().stats();
  if (stats.shared_memory_available) CHECK(stats.shared_messages > 0);
  CHECK(stats.spliced_messages + stats.copied_messages + stats.shared_messages >= kMessages);
  CHECK(child.process.wait().exit_code() == 0);
}

TEST_CASE(
    "an async_send completes only once its message is in the pipe, also after messages sent "
    "through channel() directly") {
  auto [near, far] = small_pair();
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  Random random(18);
  // Three direct sends leave the pipe too full for a fourth message of their size.
  for (std::uint64_t seq = 0; seq < 3; ++seq) send_blob(adapter.channel(), seq, 16 * KiB, random);
  constexpr std::uint64_t kMessages = 20;
  std::vector<Outcome> outcomes(kMessages);
  for (std::uint64_t seq = 3; seq < kMessages; ++seq) {
    adapter.async_send(make_blob(adapter, seq, 16 * KiB, random), send_into(outcomes[seq]));
  }
  poll(io);  // the pipe fills up; nobody reads
  std::uint64_t completed = 3;
  while (completed < kMessages && outcomes[completed].done) {
    CHECK_FALSE(outcomes[completed].error);
    ++completed;
  }
  REQUIRE(completed < kMessages);
  CHECK_FALSE(outcomes[completed].done);  // in order
  // With the loop stopped, every message whose send completed is in the pipe already.
  for (std::uint64_t seq = 0; seq < completed; ++seq) {
    auto blob = far.receive_as<test::Blob>(Deadline::after(2s));
    CHECK(blob->getSeq() == seq);
  }
  // And the rest arrive once the loop runs again.
  std::optional<Loop> loop(std::in_place, io, 1, /*keep_alive=*/false);
  for (std::uint64_t seq = completed; seq < kMessages; ++seq) {
    CHECK(far.receive_as<test::Blob>(Deadline::after(10s))->getSeq() == seq);
  }
  CHECK(loop->ran_out_of_work());
  loop.reset();
  for (std::uint64_t seq = 3; seq < kMessages; ++seq) {
    CHECK(outcomes[seq].done);
    CHECK_FALSE(outcomes[seq].error);
  }
}

TEST_CASE("a cancelled async_receive loses no message: 300 receives cancelled at random points") {
  auto [near, far] = Channel::pair();
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  Random random(6);
  constexpr std::uint64_t kMessages = 300;
  std::vector<std::uint64_t> seqs;
  std::uint64_t aborted = 0;
  std::vector<std::exception_ptr> errors;
  auto record = [&](Outcome& outcome) {
    if (is_operation_aborted(outcome.error)) {
      ++aborted;
    } else if (outcome.error) {
      errors.push_back(outcome.error);
    } else {
      seqs.push_back(outcome.message.root<test::Blob>().getSeq());
    }
  };

  for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
    Outcome outcome;
    switch (random.below(4)) {
      case 0:  // the message is there before the receive; cancelled right away
        send_seq(far, seq);
        adapter.async_receive(receive_into(outcome));
        adapter.cancel();
        break;
      case 1:  // cancelled while waiting on the descriptor, the message comes after
        adapter.async_receive(receive_into(outcome));
        poll(io);
        adapter.cancel();
        send_seq(far, seq);
        break;
      case 2:  // the message arrives while the receive waits; cancelled before the loop sees it
        adapter.async_receive(receive_into(outcome));
        poll(io);
        send_seq(far, seq);
        adapter.cancel();
        break;
      default:  // not cancelled
        send_seq(far, seq);
        adapter.async_receive(receive_into(outcome));
        break;
    }
    REQUIRE(run_until(io, [&] { return outcome.done; }));
    record(outcome);
  }
  while (seqs.size() < kMessages && errors.empty()) {  // what the aborted ones left
    Outcome outcome;
    adapter.async_receive(receive_into(outcome));
    REQUIRE(run_until(io, [&] { return outcome.done; }));
    record(outcome);
  }
  CHECK(errors.empty());
  CHECK(aborted > 0);
  CHECK(seqs == iota(kMessages));
}

TEST_CASE(
    "cancel() aborts pending async_sends: messages the channel took still arrive whole, the "
    "others are dropped, and the channel keeps working") {
  auto [near, far] = small_pair();
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  Random random(7);
  constexpr std::uint64_t kMessages = 20;
  std::vector<Outcome> outcomes(kMessages);
  for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
    adapter.async_send(make_blob(adapter, seq, 16 * KiB, random), send_into(outcomes[seq]));
  }
  poll(io);  // the pipe (64 KiB) and the outgoing queue (64 KiB) fill up; nobody reads
  const auto written_whole = static_cast<std::uint64_t>(std::count_if(
      outcomes.begin(), outcomes.end(), [](const Outcome& o) { return o.done && !o.error; }));
  REQUIRE(written_whole < kMessages);
  REQUIRE(adapter.channel().unsent_bytes() > 0);  // some taken, not yet written

  adapter.cancel();
  poll(io);
  for (std::uint64_t seq = written_whole; seq < kMessages; ++seq) {
    CHECK(outcomes[seq].done);
    CHECK(is_operation_aborted(outcomes[seq].error));
  }

  // The peer reads: the loop keeps flushing what was taken, then has nothing to wait for.
  std::optional<Loop> loop(std::in_place, io, 1, /*keep_alive=*/false);
  std::vector<std::uint64_t> seqs;
  std::uint64_t broken = 0;
  for (;;) {
    try {
      auto blob = far.receive_as<test::Blob>(Deadline::after(1s));
      seqs.push_back(blob->getSeq());
      broken += blob_intact(blob.root()) ? 0 : 1;
    } catch (const Error& error) {
      CHECK(error.code() == ErrorCode::Timeout);  // never a cut frame
      break;
    }
  }
  CHECK(loop->ran_out_of_work());  // nothing was left unsent
  loop.reset();
  CHECK(adapter.channel().unsent_bytes() == 0);
  CHECK(broken == 0);
  CHECK(seqs == iota(seqs.size()));
  CHECK(seqs.size() > written_whole);  // the taken ones went out
  CHECK(seqs.size() < kMessages);       // the untaken ones did not

  Outcome after;
  adapter.async_send(make_blob(adapter, 100, 16 * KiB, random), send_into(after));
  io.restart();
  REQUIRE(run_until(io, [&] { return after.done; }));
  CHECK_FALSE(after.error);
  auto next = far.receive_as<test::Blob>(Deadline::after(10s));
  CHECK(next->getSeq() == 100);
  CHECK(blob_intact(next.root()));
}

#if CAPNSPLICE_ASIO_HAS_CANCELLATION_SLOTS
TEST_CASE("a cancellation slot cancels one receive, or one send not yet taken, and nothing else") {
  constexpr std::uint64_t kMessages = 12;
  net::cancellation_signal cancel_receive;  // signals outlive the operations using them
  std::vector<net::cancellation_signal> signals(kMessages);
  auto [near, far] = small_pair();
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  Random random(8);

  Outcome receive_a;
  Outcome receive_b;
  adapter.async_receive(net::bind_cancellation_slot(cancel_receive.slot(), receive_into(receive_a)));
  adapter.async_receive(receive_into(receive_b));
  poll(io);
  cancel_receive.emit(net::cancellation_type::terminal);
  poll(io);
  CHECK(receive_a.done);
  CHECK(is_operation_aborted(receive_a.error));
  CHECK_FALSE(receive_b.done);
  send_seq(far, 1);
  REQUIRE(run_until(io, [&] { return receive_b.done; }));
  CHECK(receive_b.message.root<test::Blob>().getSeq() == 1);

  // Fill the pipe and the queue, then cancel the last send (not taken) with total
  // cancellation: only it is aborted, and its message never arrives.
  std::vector<Outcome> outcomes(kMessages);
  for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
    adapter.async_send(make_blob(adapter, seq, 16 * KiB, random),
                       net::bind_cancellation_slot(signals[seq].slot(), send_into(outcomes[seq])));
  }
  poll(io);
  REQUIRE_FALSE(outcomes.back().done);
  signals.back().emit(net::cancellation_type::total);
  // The first send still waiting was taken (part of it may be in the pipe): total
  // cancellation, which promises no side effects, cannot apply to it.
  const auto first_waiting = static_cast<std::size_t>(
      std::find_if(outcomes.begin(), outcomes.end(), [](const Outcome& o) { return !o.done; }) -
      outcomes.begin());
  REQUIRE(first_waiting + 1 < kMessages);
  signals[first_waiting].emit(net::cancellation_type::total);
  poll(io);
  CHECK(is_operation_aborted(outcomes.back().error));
  CHECK_FALSE(outcomes[first_waiting].done);
  std::optional<Loop> loop(std::in_place, io, 1, /*keep_alive=*/false);
  std::vector<std::uint64_t> seqs;
  while (seqs.size() < kMessages - 1) {
    seqs.push_back(far.receive_as<test::Blob>(Deadline::after(10s))->getSeq());
  }
  CHECK(loop->ran_out_of_work());
  loop.reset();
  CHECK(seqs == iota(kMessages - 1));
  for (std::uint64_t seq = 0; seq + 1 < kMessages; ++seq) CHECK_FALSE(outcomes[seq].error);
  CHECK(error_from([&] { far.receive(Deadline::after(100ms)); }).code() == ErrorCode::Timeout);
}
#endif

TEST_CASE("with a strand and two threads running the io_context, 2000 messages echo back in order") {
  auto [near, far] = Channel::pair();
  net::io_context io;
  auto strand = net::make_strand(io);
  AsioChannel adapter(strand, std::move(near));
  std::atomic<std::uint64_t> off_strand{0};
  std::atomic<std::uint64_t> failures{0};
  std::atomic<std::uint64_t> echoed{0};
  std::atomic<bool> ended{false};

  std::function<void()> receive_next = [&] {
    adapter.async_receive([&](std::exception_ptr error, ReceivedMessage request) {
      off_strand += strand.running_in_this_thread() ? 0 : 1;
      if (error) {
        failures += code_of(error) == ErrorCode::PeerClosed ? 0 : 1;
        ended = true;
        return;
      }
      adapter.async_send(echo_of(adapter, request), [&](std::exception_ptr error) {
        off_strand += strand.running_in_this_thread() ? 0 : 1;
        failures += error ? 1 : 0;
        ++echoed;
      });
      receive_next();
    });
  };
  receive_next();  // from this thread, which does not run the loop

  Loop loop(io, 2);
  constexpr std::uint64_t kMessages = 2000;
  std::vector<std::uint64_t> seqs;
  Random random(9);
  for (std::uint64_t seq = 0; seq < kMessages; seq += 50) {  // windows of 50 in flight
    for (std::uint64_t i = seq; i < seq + 50; ++i) send_blob(far, i, 64 + random.below(4000), random);
    for (std::uint64_t i = seq; i < seq + 50; ++i) {
      auto echo = far.receive_as<test::Blob>(Deadline::after(10s));
      seqs.push_back(blob_intact(echo.root()) ? echo->getSeq() : ~std::uint64_t{0});
    }
  }
  far.close_sending();  // the receive chain ends with PeerClosed; then nothing waits
  CHECK(loop.ran_out_of_work());
  CHECK(ended);
  CHECK(seqs == iota(kMessages));
  CHECK(echoed == kMessages);
  CHECK(failures == 0);
  CHECK(off_strand == 0);
}

TEST_CASE(
    "a send waiting for a reader that left unread messages, or closed its end, does not spin "
    "the loop, and completes once the reader reads") {
  auto [near, far] = small_pair();
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  // Either keeps the descriptor readable while no receive waits to take it.
  SECTION("unread messages") {
    for (std::uint64_t seq = 0; seq < 10; ++seq) send_seq(far, seq);
  }
  SECTION("end of stream") { far.close_sending(); }
  Random random(17);
  constexpr std::uint64_t kMessages = 20;
  std::vector<Outcome> outcomes(kMessages);
  for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
    adapter.async_send(make_blob(adapter, seq, 16 * KiB, random), send_into(outcomes[seq]));
  }
  io.run_for(100ms);  // not poll(): a spinning adapter would keep it busy for ever
  REQUIRE_FALSE(outcomes.back().done);

  timespec start{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &start);
  io.restart();
  io.run_for(1s);
  timespec end{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &end);
  const double cpu_ms = (end.tv_sec - start.tv_sec) * 1e3 + (end.tv_nsec - start.tv_nsec) / 1e6;
  CHECK(cpu_ms < 300);  // a loop spinning on the readable descriptor burns the whole second
  CHECK_FALSE(outcomes.back().done);

  std::thread reader([&far] {
    try {
      for (std::uint64_t seq = 0; seq < kMessages; ++seq) far.receive(Deadline::after(10s));
    } catch (const Error&) {  // the sends then fail to complete: checked below
    }
  });
  const bool all = run_until(io, [&] { return outcomes.back().done; });
  reader.join();
  CHECK(all);
  for (const Outcome& outcome : outcomes) CHECK_FALSE(outcome.error);
}

TEST_CASE(
    "async_send and async_receive called from threads that do not run the loop, while two "
    "threads run it on a strand, carry 500 messages each way in order") {
  auto [near, far] = Channel::pair();
  net::io_context io;
  AsioChannel adapter(net::make_strand(io), std::move(near));
  constexpr std::uint64_t kMessages = 500;
  std::vector<std::uint64_t> received;  // appended on the strand only
  std::atomic<std::uint64_t> receives_done{0};
  std::atomic<std::uint64_t> sends_done{0};
  std::atomic<std::uint64_t> failures{0};
  std::optional<Loop> loop(std::in_place, io, 2);

  std::thread sender([&] {
    Random random(19);
    for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
      adapter.async_send(make_blob(adapter, seq, 64 + random.below(2000), random),
                         [&](std::exception_ptr error) {
                           failures += error ? 1 : 0;
                           ++sends_done;
                         });
    }
  });
  std::thread receiver([&] {
    for (std::uint64_t i = 0; i < kMessages; ++i) {
      adapter.async_receive([&](std::exception_ptr error, ReceivedMessage message) {
        if (error) {
          ++failures;
        } else {
          received.push_back(message.root<test::Blob>().getSeq());
        }
        ++receives_done;
      });
    }
  });
  std::vector<std::uint64_t> echoed;
  try {
    for (std::uint64_t seq = 0; seq < kMessages; ++seq) send_seq(far, seq);
    for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
      echoed.push_back(far.receive_as<test::Blob>(Deadline::after(10s))->getSeq());
    }
  } catch (const Error& error) {
    FAIL_CHECK(error.what());
  }
  sender.join();
  receiver.join();
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while ((receives_done < kMessages || sends_done < kMessages) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  loop.reset();
  CHECK(failures == 0);
  CHECK(sends_done == kMessages);
  CHECK(receives_done == kMessages);
  CHECK(echoed == iota(kMessages));
  CHECK(received == iota(kMessages));
}

TEST_CASE(
    "close_sending() with a receive waiting leaves the watcher working: the peer sees end of "
    "stream, its messages still arrive, later sends fail with InvalidArgument") {
  auto [near, far] = Channel::pair();
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  Outcome received;
  adapter.async_receive(receive_into(received));
  poll(io);  // waiting on the descriptor
  adapter.channel().close_sending();
  CHECK(error_from([&] { far.receive(Deadline::after(10s)); }).code() == ErrorCode::PeerClosed);

  send_seq(far, 5);
  REQUIRE(run_until(io, [&] { return received.done; }));
  CHECK_FALSE(received.error);
  CHECK(received.message.root<test::Blob>().getSeq() == 5);

  Random random(10);
  Outcome sent;
  adapter.async_send(make_blob(adapter, 6, 100, random), send_into(sent));
  REQUIRE(run_until(io, [&] { return sent.done; }));
  CHECK(code_of(sent.error) == ErrorCode::InvalidArgument);

  far.close_sending();
  for (int i = 0; i < 2; ++i) {  // and so on for every receive after the end
    Outcome end;
    adapter.async_receive(receive_into(end));
    REQUIRE(run_until(io, [&] { return end.done; }));
    CHECK(code_of(end.error) == ErrorCode::PeerClosed);
  }
}

TEST_CASE(
    "close_sending(Deadline::immediate()) while sends wait for the reader keeps them, and they "
    "complete once it reads") {
  auto [near, far] = small_pair();
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  Random random(11);
  constexpr std::uint64_t kMessages = 10;  // 160 KiB: more than the pipe and the queue hold
  std::vector<Outcome> outcomes(kMessages);
  for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
    adapter.async_send(make_blob(adapter, seq, 16 * KiB, random), send_into(outcomes[seq]));
  }
  poll(io);
  REQUIRE_FALSE(outcomes.back().done);
  CHECK(error_from([&] { adapter.channel().close_sending(Deadline::immediate()); }).code() ==
        ErrorCode::Timeout);

  std::optional<Loop> loop(std::in_place, io, 1, /*keep_alive=*/false);
  for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
    auto blob = far.receive_as<test::Blob>(Deadline::after(10s));
    CHECK(blob->getSeq() == seq);
    CHECK(blob_intact(blob.root()));
  }
  CHECK(loop->ran_out_of_work());  // every send completed
  loop.reset();
  for (const Outcome& outcome : outcomes) {
    CHECK(outcome.done);
    CHECK_FALSE(outcome.error);
  }
  adapter.channel().close_sending(Deadline::immediate());
  CHECK(error_from([&] { far.receive(Deadline::after(10s)); }).code() == ErrorCode::PeerClosed);
}

TEST_CASE("the peer end destroyed while a receive and sends wait fails them all with PeerClosed") {
  auto [near, far] = small_pair();
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  Random random(12);
  Outcome received;
  adapter.async_receive(receive_into(received));
  constexpr std::uint64_t kMessages = 20;
  std::vector<Outcome> outcomes(kMessages);
  for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
    adapter.async_send(make_blob(adapter, seq, 16 * KiB, random), send_into(outcomes[seq]));
  }
  poll(io);
  REQUIRE_FALSE(outcomes.back().done);
  { Channel gone = std::move(far); }

  REQUIRE(run_until(io, [&] {
    return received.done && std::all_of(outcomes.begin(), outcomes.end(),
                                        [](const Outcome& o) { return o.done; });
  }));
  CHECK(code_of(received.error) == ErrorCode::PeerClosed);
  std::uint64_t failed = 0;
  for (const Outcome& outcome : outcomes) {
    if (!outcome.error) continue;
    CHECK(code_of(outcome.error) == ErrorCode::PeerClosed);
    ++failed;
  }
  CHECK(failed > 0);
  // Later operations fail at once too.
  Outcome again;
  adapter.async_receive(receive_into(again));
  Outcome late;
  adapter.async_send(make_blob(adapter, 99, 100, random), send_into(late));
  REQUIRE(run_until(io, [&] { return again.done && late.done; }));
  CHECK(code_of(again.error) == ErrorCode::PeerClosed);
  CHECK(code_of(late.error) == ErrorCode::PeerClosed);
}

TEST_CASE("a forked child that dies with SIGKILL in the middle of a message fails receives with TruncatedMessage") {
  Child child = fork_with_channel([](Channel& parent) {
    send_seq(parent, 1);
    // A frame header announcing one segment of 1000 words, then 16 bytes of it.
    const std::uint32_t header[2] = {0, 1000};
    const char body[16] = {};
    if (::write(parent.sender().fd(), header, sizeof header) != sizeof header) return 1;
    if (::write(parent.sender().fd(), body, sizeof body) != sizeof body) return 1;
    ::raise(SIGKILL);
    return 2;
  });
  net::io_context io;
  AsioChannel adapter(io, std::move(child.channel));
  Outcome first;
  adapter.async_receive(receive_into(first));
  REQUIRE(run_until(io, [&] { return first.done; }));
  CHECK(first.message.root<test::Blob>().getSeq() == 1);
  for (int i = 0; i < 2; ++i) {  // the same for every receive after
    Outcome next;
    adapter.async_receive(receive_into(next));
    REQUIRE(run_until(io, [&] { return next.done; }));
    CHECK(code_of(next.error) == ErrorCode::TruncatedMessage);
  }
  CHECK(child.process.wait().signal() == SIGKILL);
}

TEST_CASE("a forked child killed with SIGKILL mid-stream fails the waiting receive and later sends, without a hang") {
  const auto options = ChannelOptions().with_send_path(SendPath::copy).without_send_timeout();
  Child child = fork_with_channel(
      [](Channel& parent) {
        Random random(13);
        for (std::uint64_t seq = 0;; ++seq) send_blob(parent, seq, 4 * MiB, random);
        return 0;
      },
      options);
  net::io_context io;
  AsioChannel adapter(io, std::move(child.channel));
  for (std::uint64_t seq = 0; seq < 3; ++seq) {
    Outcome outcome;
    adapter.async_receive(receive_into(outcome));
    REQUIRE(run_until(io, [&] { return outcome.done; }));
    REQUIRE_FALSE(outcome.error);
    auto blob = outcome.message.root<test::Blob>();
    CHECK(blob.getSeq() == seq);
    CHECK(blob_intact(blob));
  }
  // The child is blocked in the middle of its next 4 MiB frame: kill it there.
  Outcome pending;
  adapter.async_receive(receive_into(pending));
  poll(io);
  child.process.kill(SIGKILL);
  CHECK(child.process.wait().signal() == SIGKILL);
  // What was in the pipe may still complete receives; then the end shows.
  std::exception_ptr end = pending.error;
  REQUIRE(run_until(io, [&] { return pending.done; }));
  end = pending.error;
  while (!end) {
    Outcome next;
    adapter.async_receive(receive_into(next));
    REQUIRE(run_until(io, [&] { return next.done; }));
    end = next.error;
  }
  CHECK(peer_gone(end));
  Random random(14);
  Outcome sent;
  adapter.async_send(make_blob(adapter, 0, 100, random), send_into(sent));
  REQUIRE(run_until(io, [&] { return sent.done; }));
  CHECK(code_of(sent.error) == ErrorCode::PeerClosed);
}

TEST_CASE(
    "an AsioChannel destroyed with a receive and sends waiting completes them with "
    "operation_aborted, and its peer sees the end") {
  auto [near, far] = small_pair();
  net::io_context io;
  std::optional<AsioChannel> adapter(std::in_place, io, std::move(near));
  Random random(15);
  bool destroy_in_handler = false;
  std::vector<Outcome> receives(2);
  for (Outcome& outcome : receives) {
    adapter->async_receive([&](std::exception_ptr error, ReceivedMessage message) {
      outcome = {true, error, std::move(message)};
      if (destroy_in_handler) adapter.reset();
    });
  }
  constexpr std::uint64_t kMessages = 20;
  std::vector<Outcome> sends(kMessages);
  for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
    adapter->async_send(make_blob(*adapter, seq, 16 * KiB, random), send_into(sends[seq]));
  }
  poll(io);
  const auto written = static_cast<std::uint64_t>(std::count_if(
      sends.begin(), sends.end(), [](const Outcome& o) { return o.done && !o.error; }));
  REQUIRE(written < kMessages);

  std::size_t first_aborted_receive = 0;
  SECTION("from outside its handlers") { adapter.reset(); }
  SECTION("from the handler of its first receive") {
    destroy_in_handler = true;
    send_seq(far, 1);
    first_aborted_receive = 1;
  }
  io.restart();
  io.run_for(10s);  // returns once nothing is left
  CHECK_FALSE(adapter.has_value());
  if (first_aborted_receive == 1) {
    CHECK(receives[0].done);
    CHECK_FALSE(receives[0].error);
  }
  for (std::size_t i = first_aborted_receive; i < receives.size(); ++i) {
    CHECK(receives[i].done);
    CHECK(is_operation_aborted(receives[i].error));
  }
  for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
    CHECK(sends[seq].done);
    if (seq < written) CHECK_FALSE(sends[seq].error);
    if (seq >= written) CHECK(is_operation_aborted(sends[seq].error));
  }
  // The peer gets whole messages in order, then the end (a frame cut by the destruction
  // shows as TruncatedMessage), never a hang.
  std::exception_ptr end;
  std::uint64_t received = 0;
  while (!end) {
    try {
      auto blob = far.receive_as<test::Blob>(Deadline::after(10s));
      CHECK(blob->getSeq() == received++);
      CHECK(blob_intact(blob.root()));
    } catch (...) {
      end = std::current_exception();
    }
  }
  CHECK(received >= written);
  CHECK(peer_gone(end));
}

TEST_CASE(
    "an io_context destroyed first destroys the waiting handlers uncalled, and the "
    "AsioChannel and its channel still work and close cleanly after") {
  auto [near, far] = small_pair();
  auto io = std::make_unique<net::io_context>();
  std::optional<AsioChannel> adapter(std::in_place, *io, std::move(near));
  Random random(16);
  auto alive = std::make_shared<int>(0);  // held by every pending handler
  int calls = 0;
  adapter->async_receive([&calls, alive](std::exception_ptr, ReceivedMessage) { ++calls; });
  constexpr std::uint64_t kMessages = 20;
  for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
    adapter->async_send(make_blob(*adapter, seq, 16 * KiB, random),
                        [&calls, alive](std::exception_ptr) { ++calls; });
  }
  bool resumed = false;
  net::co_spawn(
      *io,
      [&]() -> net::awaitable<void> {
        co_await adapter->async_receive(net::use_awaitable);
        resumed = true;
      },
      net::detached);
  poll(*io);
  const int calls_before = calls;  // the sends the pipe took
  REQUIRE(calls_before < static_cast<int>(kMessages));
  REQUIRE(alive.use_count() > 1);

  SECTION("the AsioChannel outlives it, its channel usable without a loop") {
    io.reset();
    CHECK(calls == calls_before);
    CHECK_FALSE(resumed);
    CHECK(alive.use_count() == 1);
    send_seq(far, 77);
    CHECK(adapter->channel().receive_as<test::Blob>(Deadline::after(10s))->getSeq() == 77);
    adapter.reset();
  }
  SECTION("the AsioChannel is destroyed first, the loop never runs again") {
    adapter.reset();
    io.reset();
    CHECK(calls == calls_before);
    CHECK_FALSE(resumed);
    CHECK(alive.use_count() == 1);
  }
  // Either way the peer reads whole blobs in order, then the end.
  std::exception_ptr end;
  std::uint64_t received = 0;
  while (!end) {
    try {
      auto blob = far.receive_as<test::Blob>(Deadline::after(10s));
      CHECK(blob->getSeq() == received++);
    } catch (...) {
      end = std::current_exception();
    }
  }
  CHECK(received >= static_cast<std::uint64_t>(calls_before));
  CHECK(peer_gone(end));
}

TEST_CASE("descriptors attached to a message cross the adapter both ways") {
  auto [near, far] = Channel::pair();
  net::io_context io;
  AsioChannel adapter(io, std::move(near));
  Random random(2);

  OutgoingMessage message = make_blob(adapter, 1, 100, random);
  message.attach(memfd_with("to far"));
  Outcome sent;
  adapter.async_send(std::move(message), send_into(sent));
  io.run();
  REQUIRE(sent.done);
  CHECK_FALSE(sent.error);
  ReceivedMessage got = far.receive(Deadline::after(10s));
  std::vector<UniqueFd> fds = got.take_descriptors();
  REQUIRE(fds.size() == 1);
  CHECK(first_bytes(fds[0].get()) == "to far");

  OutgoingMessage back = far.new_message();
  back.init_root<test::Blob>().setSeq(2);
  back.attach(memfd_with("to near"));
  far.send(std::move(back), Deadline::after(10s));
  Outcome received;
  adapter.async_receive(receive_into(received));
  io.restart();
  REQUIRE(run_until(io, [&] { return received.done; }));
  CHECK_FALSE(received.error);
  fds = received.message.take_descriptors();
  REQUIRE(fds.size() == 1);
  CHECK(first_bytes(fds[0].get()) == "to near");
}
