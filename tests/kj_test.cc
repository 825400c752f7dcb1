// The KJ event-loop adapter (include/capnsplice/kj.h): receive() and send() as promises on
// kj::UnixEventPort, an edge-triggered watch that never stalls, sends that never block the
// loop, and watchers that survive close, peer death and destruction in any order.
#include "capnsplice/kj.h"

#include <kj/async-io.h>
#include <kj/timer.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "capnsplice/process.h"
#include "support/blob.h"
#include "support/error_from.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

/// One KJ event loop for the test (one per thread at a time): declare it before the
/// adapters so they go first.
struct Loop {
  kj::AsyncIoContext io = kj::setupAsyncIo();

  kj::WaitScope& scope() { return io.waitScope; }
  kj::UnixEventPort& port() { return io.unixEventPort; }
  kj::Timer& timer() { return io.provider->getTimer(); }

  /// The promise's value; fails (OVERLOADED "timed out") after `limit` instead of hanging.
  template <typename T>
  T wait(kj::Promise<T> promise, kj::Duration limit = 60 * kj::SECONDS) {
    return timer().timeoutAfter(limit, kj::mv(promise)).wait(io.waitScope);
  }

  /// The exception the promise rejects with; fails the test when it resolves instead.
  template <typename T>
  kj::Exception rejection(kj::Promise<T> promise, kj::Duration limit = 60 * kj::SECONDS) {
    try {
      wait(kj::mv(promise), limit);
    } catch (const kj::Exception& exception) {
      return exception;
    }
    FAIL("the promise resolved; a rejection was expected");
    throw std::logic_error("unreachable");
  }

  /// Runs the loop (timers, descriptors, continuations) for `duration`.
  void run_for(kj::Duration duration) { timer().afterDelay(duration).wait(io.waitScope); }
};

/// A blob of `size` checksummed bytes, built without ever waiting.
OutgoingMessage blob_message(Channel& channel, std::uint64_t seq, std::size_t size) {
  Random random(seq + 1);
  OutgoingMessage message = channel.new_message(Deadline::immediate());
  if (size >= 64 * KiB) {
    fill_blob_in_place(message, seq, size, random);
  } else {
    fill_blob(message.init_root<test::Blob>(), seq, size, random);
  }
  return message;
}

void check_blob(ReceivedMessage& message, std::uint64_t seq, std::size_t size) {
  auto blob = message.root<test::Blob>();
  CHECK(blob.getSeq() == seq);
  CHECK(blob_size(blob) == size);
  CHECK(blob_intact(blob));
}

std::uint64_t seq_of(ReceivedMessage& message) { return message.root<test::Blob>().getSeq(); }

/// Mixed sizes, 64 B to 4 MiB: copy, vmsplice and shared-memory paths in one stream.
std::size_t mixed_size(std::uint64_t seq) {
  constexpr std::array<std::size_t, 8> sizes = {64,        1000,     4 * KiB, 64 * KiB,
                                                300 * KiB, 4 * MiB,  100,     20000};
  return sizes[seq % sizes.size()];
}

bool mentions(const kj::Exception& exception, const char* text) {
  return std::string(exception.getDescription().cStr()).find(text) != std::string::npos;
}

/// Does `port` still work: a fresh pair of adapters exchanges a message on it.
void check_loop_still_serves_channels(Loop& loop) {
  auto [near, far] = Channel::pair(ChannelOptions().with_name("after"));
  KjChannel a(loop.port(), std::move(near));
  KjChannel b(loop.port(), std::move(far));
  loop.wait(a.send(blob_message(a.channel(), 77, 500)));
  ReceivedMessage got = loop.wait(b.receive());
  check_blob(got, 77, 500);
}

}  // namespace

TEST_CASE("a message sent with a KJ promise is received with one, and the reply comes back") {
  Loop loop;
  auto [near, far] = Channel::pair(ChannelOptions().with_name("kj"));
  KjChannel a(loop.port(), std::move(near));
  KjChannel b(loop.port(), std::move(far));

  // Each size takes another path: copy, vmsplice, the shared-memory arena.
  for (std::size_t size : {std::size_t{100}, 5 * KiB, 1 * MiB}) {
    kj::Promise<ReceivedMessage> request = b.receive();
    loop.wait(a.send(blob_message(a.channel(), size, size)));
    ReceivedMessage got = loop.wait(kj::mv(request));
    check_blob(got, size, size);

    loop.wait(b.send(blob_message(b.channel(), size + 1, size)));
    Received<test::Blob> reply = loop.wait(a.receive_as<test::Blob>());
    CHECK(reply->getSeq() == size + 1);
    CHECK(blob_intact(reply.root()));
  }
  CHECK(a.pending_sends() == 0);
  CHECK(b.pending_sends() == 0);
}

TEST_CASE("the messages sent in one turn of the loop leave together, in one write, at its end") {
  Loop loop;
  auto [near, far] = Channel::pair(ChannelOptions().with_name("kj").with_send_path(SendPath::copy));
  KjChannel a(loop.port(), std::move(near));
  kj::Vector<kj::Promise<void>> sends;
  for (std::uint64_t seq = 0; seq < 8; ++seq) sends.add(a.send(blob_message(a.channel(), seq, 100)));
  CHECK_FALSE(far.try_receive().has_value());  // nothing written while this turn runs
  loop.wait(kj::joinPromises(sends.releaseAsArray()));
  CHECK(a.channel().sender().stats().writes == 1);
  for (std::uint64_t seq = 0; seq < 8; ++seq) {
    ReceivedMessage got = far.receive_for(5s);
    check_blob(got, seq, 100);
  }
}

TEST_CASE("a burst of 1000 messages is all received although the watch is edge-triggered") {
  // After one wake-up, the rest of the burst sits in the channel with nothing more to
  // arrive: an adapter that waited for the descriptor before reading again would stall.
  constexpr std::uint64_t kBurst = 1000;
  Loop loop;
  auto [near, far] = Channel::pair(ChannelOptions().with_name("burst"));
  KjChannel a(loop.port(), std::move(near));
  KjChannel b(loop.port(), std::move(far));

  auto send_burst = [&a = a] {
    auto sends = kj::heapArrayBuilder<kj::Promise<void>>(kBurst);
    for (std::uint64_t seq = 0; seq < kBurst; ++seq) {
      sends.add(a.send(blob_message(a.channel(), seq, 8 + seq % 3000)));
    }
    return kj::joinPromises(sends.finish());
  };

  SECTION("sent whole before the first receive") {
    loop.wait(send_burst());
    for (std::uint64_t seq = 0; seq < kBurst; ++seq) {
      ReceivedMessage got = loop.wait(b.receive(), 10 * kj::SECONDS);
      check_blob(got, seq, 8 + seq % 3000);
    }
  }
  SECTION("with 16 receives waiting when it comes") {
    std::vector<kj::Promise<ReceivedMessage>> waiting;
    for (int i = 0; i < 16; ++i) waiting.push_back(b.receive());
    CHECK_FALSE(waiting.front().poll(loop.scope()));
    kj::Promise<void> sent = send_burst();
    for (std::uint64_t seq = 0; seq < kBurst; ++seq) {
      ReceivedMessage got = seq < waiting.size() ? loop.wait(kj::mv(waiting[seq]), 10 * kj::SECONDS)
                                                 : loop.wait(b.receive(), 10 * kj::SECONDS);
      check_blob(got, seq, 8 + seq % 3000);
    }
    loop.wait(kj::mv(sent));
  }
  SECTION("received by a chain of continuations while it is being sent") {
    std::uint64_t next = 0;
    std::uint64_t wrong = 0;
    kj::Function<kj::Promise<void>()> receive_rest = [&]() -> kj::Promise<void> {
      if (next == kBurst) return kj::READY_NOW;
      return b.receive().then([&](ReceivedMessage message) {
        wrong += seq_of(message) == next ? 0 : 1;
        wrong += blob_intact(message.root<test::Blob>()) ? 0 : 1;
        ++next;
        return receive_rest();
      });
    };
    auto both = kj::heapArrayBuilder<kj::Promise<void>>(2);
    both.add(receive_rest());
    both.add(send_burst());
    loop.wait(kj::joinPromises(both.finish()), 10 * kj::SECONDS);
    CHECK(next == kBurst);
    CHECK(wrong == 0);
  }
  // Nothing left over, nothing duplicated.
  CHECK_FALSE(b.receive().poll(loop.scope()));
}

TEST_CASE("sends to a peer that stops reading never block the loop, and once it reads again "
          "they resolve in order and every message arrives once, in order, intact") {
  constexpr std::uint64_t kMessages = 120;  // about 66 MiB, 64 B to 4 MiB
  // Small bounds, so that what the channel can hold without the reader (pipe, outgoing
  // queue, arena) is far less than the stream: sends must wait, some in the adapter.
  auto options = ChannelOptions()
                     .with_name("stalled")
                     .with_max_unsent_bytes(2 * MiB)
                     .with_arena_keep_bytes(8 * MiB);
  int resume[2];
  REQUIRE(::pipe2(resume, O_CLOEXEC) == 0);
  Child child = fork_with_channel(
      [resume](Channel& parent) {
        ::close(resume[1]);
        char byte = 0;
        if (::read(resume[0], &byte, 1) != 1) return 2;  // stalled until told
        std::uint64_t messages = 0, bytes = 0, mismatches = 0, out_of_order = 0;
        for (;;) {
          try {
            auto blob = parent.receive_as<test::Blob>(Deadline::after(60s));
            out_of_order += blob->getSeq() == messages ? 0 : 1;
            mismatches += blob_intact(blob.root()) &&
                                  blob_size(blob.root()) == mixed_size(blob->getSeq())
                              ? 0
                              : 1;
            bytes += blob_size(blob.root());
            ++messages;
          } catch (const Error& error) {
            if (error.code() != ErrorCode::PeerClosed) return 3;
            break;
          }
        }
        parent.send_struct<test::Report>([&](test::Report::Builder report) {
          report.setMessages(messages);
          report.setBytes(bytes);
          report.setMismatches(mismatches);
          report.setOutOfOrder(out_of_order);
        });
        return 0;
      },
      options);
  ::close(resume[0]);

  Loop loop;
  KjChannel channel(loop.port(), std::move(child.channel));
  std::vector<std::uint64_t> resolved;
  std::uint64_t resolved_early = 0;  // resolved before the channel had written them whole
  std::uint64_t total_bytes = 0;
  auto longest_call = std::chrono::nanoseconds::zero();
  auto sends = kj::heapArrayBuilder<kj::Promise<void>>(kMessages);
  for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
    OutgoingMessage message = blob_message(channel.channel(), seq, mixed_size(seq));
    total_bytes += mixed_size(seq);
    const auto start = std::chrono::steady_clock::now();
    kj::Promise<void> sent = channel.send(std::move(message));
    longest_call = std::max(longest_call, std::chrono::steady_clock::now() - start);
    // Eager: each continuation runs when its send resolves (a join alone would run them
    // all at its end, in array order).
    sends.add(sent.then([&, seq] {
                    resolved.push_back(seq);
                    resolved_early +=
                        channel.channel().sender().written_messages() >= seq + 1 ? 0 : 1;
                  })
                  .eagerlyEvaluate(nullptr));
  }
  kj::Promise<void> closed = channel.close_sending();  // after every send, in order
  kj::Promise<void> all_sent = kj::joinPromises(sends.finish());

  // The reader is stalled: the loop still runs timers, sends wait.
  loop.run_for(200 * kj::MILLISECONDS);
  CHECK(resolved.size() < kMessages);
  CHECK(channel.pending_sends() > 0);
  CHECK_FALSE(closed.poll(loop.scope()));
  // A send() call never waits for the reader (a blocking one would wait the 10 s send
  // timeout here); generous bound for slow machines.
  CHECK(longest_call < 5s);

  REQUIRE(::write(resume[1], "g", 1) == 1);
  ::close(resume[1]);
  loop.wait(kj::mv(all_sent));
  loop.wait(kj::mv(closed));
  CHECK(resolved.size() == kMessages);
  CHECK(std::is_sorted(resolved.begin(), resolved.end()));
  CHECK(resolved_early == 0);
  CHECK(channel.pending_sends() == 0);

  Received<test::Report> report = loop.wait(channel.receive_as<test::Report>());
  CHECK(report->getMessages() == kMessages);
  CHECK(report->getBytes() == total_bytes);
  CHECK(report->getMismatches() == 0);
  CHECK(report->getOutOfOrder() == 0);
  auto status = child.process.wait_for(10s);
  REQUIRE(status.has_value());
  CHECK(status->success());
  // After the report, end of stream.
  kj::Exception end = loop.rejection(channel.receive());
  CHECK(end.getType() == kj::Exception::Type::DISCONNECTED);
}

TEST_CASE("bytes the channel held unsent before it was wrapped go out first, and a send "
          "behind them resolves only once they are all written") {
  Loop loop;
  auto [near, far] = Channel::pair(
      ChannelOptions().with_name("prequeued").with_send_path(SendPath::copy));
  // Fill the pipe, then the channel's queue with twice a pipeful: nobody reads yet.
  std::uint64_t sent = 0;
  while (near.unsent_bytes() < 2 * MiB) {
    REQUIRE(near.try_send(blob_message(near, sent, 1000)) != SendStatus::queue_full);
    ++sent;
    REQUIRE(sent < 10000);  // 1 MiB of pipe and 2 MiB of queue take about 3000
  }
  KjChannel a(loop.port(), std::move(near));
  std::optional<std::uint64_t> written_when_resolved;
  kj::Promise<void> behind = a.send(blob_message(a.channel(), sent, 1000))
                                 .then([&] {
                                   written_when_resolved = a.channel().sender().written_messages();
                                 })
                                 .eagerlyEvaluate(nullptr);
  ++sent;
  loop.run_for(20 * kj::MILLISECONDS);
  CHECK_FALSE(written_when_resolved.has_value());

  // The reader drains the pipe bit by bit; the loop refills it from the queue.
  std::uint64_t received = 0;
  const auto give_up = std::chrono::steady_clock::now() + 10s;
  while (received < sent && std::chrono::steady_clock::now() < give_up) {
    while (auto message = far.try_receive()) {
      check_blob(*message, received, 1000);
      ++received;
    }
    loop.run_for(1 * kj::MILLISECONDS);
  }
  CHECK(received == sent);
  loop.wait(kj::mv(behind));
  REQUIRE(written_when_resolved.has_value());
  CHECK(*written_when_resolved == sent);  // every message before it, and itself
}

TEST_CASE("a receive promise dropped before or after its message arrived loses no message") {
  Loop loop;
  auto [near, far] = Channel::pair(ChannelOptions().with_name("dropped"));
  KjChannel a(loop.port(), std::move(near));
  KjChannel b(loop.port(), std::move(far));
  std::uint64_t next_seq = 0;
  auto send_next = [&] { loop.wait(a.send(blob_message(a.channel(), next_seq, 300))); ++next_seq; };

  {  // dropped while nothing had come
    kj::Promise<ReceivedMessage> dropped = b.receive();
    CHECK_FALSE(dropped.poll(loop.scope()));
  }
  {  // the loser of a timeout, with nothing come
    kj::Promise<ReceivedMessage> timed_out =
        loop.timer().timeoutAfter(5 * kj::MILLISECONDS, b.receive());
    CHECK(loop.rejection(kj::mv(timed_out)).getType() == kj::Exception::Type::OVERLOADED);
  }
  send_next();  // 0
  {  // dropped after its message came, before anyone waited on it
    kj::Promise<ReceivedMessage> dropped = b.receive();
    send_next();  // 1
    loop.run_for(10 * kj::MILLISECONDS);
    CHECK(dropped.poll(loop.scope()));
  }
  send_next();  // 2
  {  // several waiting, one message, all dropped
    std::vector<kj::Promise<ReceivedMessage>> dropped;
    for (int i = 0; i < 5; ++i) dropped.push_back(b.receive());
    send_next();  // 3
    loop.run_for(10 * kj::MILLISECONDS);
  }
  for (int round = 0; round < 50; ++round) {  // many of each, interleaved
    kj::Promise<ReceivedMessage> before = b.receive();
    send_next();
    kj::Promise<ReceivedMessage> after = b.receive();
    CHECK(before.poll(loop.scope()));
  }

  for (std::uint64_t seq = 0; seq < next_seq; ++seq) {
    ReceivedMessage got = loop.wait(b.receive(), 10 * kj::SECONDS);
    check_blob(got, seq, 300);
  }
  kj::Promise<ReceivedMessage> nothing_more = b.receive();
  loop.run_for(10 * kj::MILLISECONDS);
  CHECK_FALSE(nothing_more.poll(loop.scope()));
}

TEST_CASE("after the peer closes, receives get every message it sent, then DISCONNECTED") {
  Loop loop;
  auto [near, far] = Channel::pair(ChannelOptions().with_name("ending"));
  KjChannel a(loop.port(), std::move(near));
  KjChannel b(loop.port(), std::move(far));
  kj::Promise<ReceivedMessage> first = b.receive();  // waiting before anything happens
  for (std::uint64_t seq = 0; seq < 3; ++seq) {
    a.send(blob_message(a.channel(), seq, 2000)).detach([](kj::Exception&&) {});
  }
  loop.wait(a.close_sending());
  ReceivedMessage got = loop.wait(kj::mv(first));
  check_blob(got, 0, 2000);
  for (std::uint64_t seq = 1; seq < 3; ++seq) {
    got = loop.wait(b.receive());
    check_blob(got, seq, 2000);
  }
  for (int again = 0; again < 2; ++again) {
    kj::Exception end = loop.rejection(b.receive());
    CHECK(end.getType() == kj::Exception::Type::DISCONNECTED);
    CHECK(mentions(end, "closed"));
  }
  // The closed side cannot send any more; that send alone fails.
  kj::Exception refused = loop.rejection(a.send(blob_message(a.channel(), 9, 10)));
  CHECK(refused.getType() == kj::Exception::Type::FAILED);
  CHECK(mentions(refused, "InvalidArgument"));
}

TEST_CASE("an empty message rejects that send alone with FAILED, and the sends around it go out") {
  Loop loop;
  auto [near, far] = Channel::pair(ChannelOptions().with_name("empty"));
  KjChannel a(loop.port(), std::move(near));
  KjChannel b(loop.port(), std::move(far));
  kj::Promise<void> before = a.send(blob_message(a.channel(), 0, 100));
  kj::Exception refused = loop.rejection(a.send(OutgoingMessage()));
  kj::Promise<void> after = a.send(blob_message(a.channel(), 1, 100));
  CHECK(refused.getType() == kj::Exception::Type::FAILED);
  CHECK(mentions(refused, "InvalidArgument"));
  loop.wait(kj::mv(before));
  loop.wait(kj::mv(after));
  for (std::uint64_t seq = 0; seq < 2; ++seq) {
    ReceivedMessage got = loop.wait(b.receive());
    check_blob(got, seq, 100);
  }
}

TEST_CASE("close_sending() on the channel with a receive pending leaves the receive working") {
  Loop loop;
  auto [near, far] = Channel::pair(ChannelOptions().with_name("half-closed"));
  KjChannel a(loop.port(), std::move(near));
  kj::Promise<ReceivedMessage> pending = a.receive();
  CHECK_FALSE(pending.poll(loop.scope()));

  a.channel().close_sending();  // the write end closes; the watch descriptor stays
  loop.run_for(10 * kj::MILLISECONDS);
  CHECK_FALSE(pending.poll(loop.scope()));

  Error ended = error_from([&far = far] { far.receive(Deadline::after(10s)); });
  CHECK(ended.code() == ErrorCode::PeerClosed);
  Random random(5);
  send_blob(far, 5, 700, random);
  ReceivedMessage got = loop.wait(kj::mv(pending));
  CHECK(seq_of(got) == 5);
  CHECK(blob_intact(got.root<test::Blob>()));

  kj::Exception refused = loop.rejection(a.send(blob_message(a.channel(), 6, 10)));
  CHECK(refused.getType() == kj::Exception::Type::FAILED);

  kj::Promise<ReceivedMessage> last = a.receive();
  far.close_sending();
  CHECK(loop.rejection(kj::mv(last)).getType() == kj::Exception::Type::DISCONNECTED);
}

TEST_CASE("watchers survive close_sending(), the peer going and the adapter's destruction, in "
          "every order") {
  enum class Step { close, peer_gone, destroy };
  std::array<Step, 3> steps = {Step::close, Step::peer_gone, Step::destroy};
  const int permutation = GENERATE(range(0, 6));
  for (int i = 0; i < permutation; ++i) std::next_permutation(steps.begin(), steps.end());
  const bool forked_peer = GENERATE(false, true);
  CAPTURE(permutation, forked_peer);

  // The peer: the other end in this process, or a forked child that waits to be killed.
  std::optional<Channel> far;
  std::optional<Child> child;
  Channel near = [&] {
    if (forked_peer) {
      child = fork_with_channel([](Channel&) {
        ::pause();
        return 0;
      });
      return std::move(child->channel);
    }
    auto [first, second] = Channel::pair(ChannelOptions().with_name("orders"));
    far = std::move(second);
    return std::move(first);
  }();

  Loop loop;
  auto adapter = std::make_unique<KjChannel>(loop.port(), std::move(near));
  kj::Promise<ReceivedMessage> receiving = adapter->receive();
  loop.wait(adapter->send(blob_message(adapter->channel(), 1, 100)));
  bool closed = false, peer_gone = false, destroyed = false, closed_first = false;

  for (Step step : steps) {
    switch (step) {
      case Step::close:
        if (!destroyed) {
          try {
            adapter->channel().close_sending();
          } catch (const Error& error) {
            CHECK(error.peer_gone());  // the peer went first: nothing to close towards
          }
        }
        closed = true;
        break;
      case Step::peer_gone:
        if (forked_peer) {
          child->process.kill(SIGKILL);
          CHECK(child->process.wait().killed());
        } else {
          far.reset();
        }
        peer_gone = true;
        break;
      case Step::destroy:
        adapter.reset();
        destroyed = true;
        break;
    }
    if (step == Step::close && !peer_gone) closed_first = true;
    loop.run_for(20 * kj::MILLISECONDS);
    if (!destroyed) {
      // What the adapter says now follows from what happened.
      CHECK(receiving.poll(loop.scope()) == peer_gone);
      if (closed || peer_gone) {
        kj::Exception refused =
            loop.rejection(adapter->send(blob_message(adapter->channel(), 2, 100)));
        // A send after close is the caller's mistake; to a peer that is gone, DISCONNECTED.
        CHECK(refused.getType() == (closed_first ? kj::Exception::Type::FAILED
                                                 : kj::Exception::Type::DISCONNECTED));
      }
    }
  }
  // The pending receive was rejected: by end of stream if the peer went first, else by
  // the destruction.
  kj::Exception rejected = loop.rejection(kj::mv(receiving));
  CHECK(rejected.getType() == kj::Exception::Type::DISCONNECTED);
  const bool peer_before_destroy =
      std::find(steps.begin(), steps.end(), Step::peer_gone) <
      std::find(steps.begin(), steps.end(), Step::destroy);
  CHECK(mentions(rejected, peer_before_destroy ? "closed" : "KjChannel destroyed"));
  check_loop_still_serves_channels(loop);
}

TEST_CASE("a forked child killed mid-stream rejects the pending receives and sends with "
          "DISCONNECTED, and the loop runs on") {
  // The child streams messages of an odd size and never reads; the parent's sends pile up.
  auto options = ChannelOptions().with_name("killed").with_max_unsent_bytes(256 * KiB);
  Child child = fork_with_channel(
      [](Channel& parent) {
        for (std::uint64_t seq = 0;; ++seq) {
          Random random(seq + 1);
          send_blob(parent, seq, 100003, random);
        }
        return 0;
      },
      options);
  Loop loop;
  KjChannel channel(loop.port(), std::move(child.channel));
  for (std::uint64_t seq = 0; seq < 20; ++seq) {
    ReceivedMessage got = loop.wait(channel.receive());
    check_blob(got, seq, 100003);
  }
  std::vector<kj::Promise<void>> sends;
  for (std::uint64_t seq = 0; seq < 64; ++seq) {
    sends.push_back(channel.send(blob_message(channel.channel(), seq, 20000)));
  }
  loop.run_for(20 * kj::MILLISECONDS);
  REQUIRE(channel.pending_sends() > 0);

  child.process.kill(SIGKILL);
  CHECK(child.process.wait().killed());
  std::uint64_t received = 20;
  for (;;) {
    try {
      ReceivedMessage got = loop.wait(channel.receive(), 10 * kj::SECONDS);
      check_blob(got, received, 100003);
      ++received;
    } catch (const kj::Exception& exception) {
      CHECK(exception.getType() == kj::Exception::Type::DISCONNECTED);
      break;
    }
  }
  std::size_t rejected = 0;
  for (auto& send : sends) {
    try {
      loop.wait(kj::mv(send), 10 * kj::SECONDS);
    } catch (const kj::Exception& exception) {
      CHECK(exception.getType() == kj::Exception::Type::DISCONNECTED);
      ++rejected;
    }
  }
  CHECK(rejected > 0);
  CHECK(channel.pending_sends() == 0);
  check_loop_still_serves_channels(loop);
}

TEST_CASE("a peer that dies inside a message rejects the receive with DISCONNECTED naming "
          "TruncatedMessage") {
  Child child = fork_with_channel([](Channel& parent) {
    Random random(1);
    send_blob(parent, 0, 100, random);
    // The start of a frame of one 1000-word segment, then death.
    const std::uint32_t header[2] = {0, 1000};
    const char words[800] = {};
    if (::write(parent.sender().fd(), header, sizeof header) != sizeof header) return 2;
    if (::write(parent.sender().fd(), words, sizeof words) != sizeof words) return 2;
    ::raise(SIGKILL);
    return 0;
  });
  Loop loop;
  KjChannel channel(loop.port(), std::move(child.channel));
  ReceivedMessage got = loop.wait(channel.receive());
  check_blob(got, 0, 100);
  kj::Exception cut = loop.rejection(channel.receive());
  CHECK(cut.getType() == kj::Exception::Type::DISCONNECTED);
  CHECK(mentions(cut, "TruncatedMessage"));
  CHECK(child.process.wait().killed());
}

TEST_CASE("destroying the adapter with receives and sends pending rejects them, and the peer "
          "gets whole messages only") {
  Loop loop;
  auto [near, far] = Channel::pair(
      ChannelOptions().with_name("destroyed").with_max_unsent_bytes(256 * KiB));
  auto adapter = std::make_unique<KjChannel>(loop.port(), std::move(near));
  kj::Promise<ReceivedMessage> receiving = adapter->receive();
  std::vector<kj::Promise<void>> sends;
  for (std::uint64_t seq = 0; seq < 200; ++seq) {
    sends.push_back(adapter->send(blob_message(adapter->channel(), seq, 20000)));
  }
  loop.run_for(20 * kj::MILLISECONDS);
  REQUIRE(adapter->pending_sends() > 0);
  std::uint64_t resolved_before = 0;
  for (auto& send : sends) resolved_before += send.poll(loop.scope()) ? 1 : 0;
  CHECK(resolved_before == 200 - adapter->pending_sends());

  adapter.reset();
  kj::Exception receive_rejected = loop.rejection(kj::mv(receiving));
  CHECK(receive_rejected.getType() == kj::Exception::Type::DISCONNECTED);
  CHECK(mentions(receive_rejected, "KjChannel destroyed"));
  std::size_t rejected = 0;
  for (auto& send : sends) {
    try {
      loop.wait(kj::mv(send));
    } catch (const kj::Exception& exception) {
      CHECK(exception.getType() == kj::Exception::Type::DISCONNECTED);
      ++rejected;
    }
  }
  CHECK(rejected == 200 - resolved_before);
  loop.run_for(10 * kj::MILLISECONDS);

  // The peer reads whole, intact messages in order, then the end (clean or cut).
  std::uint64_t seq = 0;
  for (;; ++seq) {
    try {
      auto blob = far.receive_as<test::Blob>(Deadline::after(10s));
      CHECK(blob->getSeq() == seq);
      CHECK(blob_intact(blob.root()));
    } catch (const Error& error) {
      CHECK(error.peer_gone());
      break;
    }
  }
  CHECK(seq >= resolved_before);
  check_loop_still_serves_channels(loop);
}
