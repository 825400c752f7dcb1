// The error contract of error.h: every failure is a capnsplice::Error whose code's advice
// holds where it is thrown. (Per-code behaviour of the channel: error_test.cc.)
#include <catch2/catch.hpp>

#include <capnp/message.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "capnsplice.capnp.h"
#include "capnsplice/handshake.h"
#include "capnsplice/process.h"
#include "support/blob.h"
#include "support/error_from.h"
#include "support/process_support.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

}  // namespace

TEST_CASE("an error's text carries its context, its detail and its code's name") {
  const Error error(ErrorCode::ProtocolViolation, "channel 'x': receive", "what happened");
  CHECK(error.code() == ErrorCode::ProtocolViolation);
  CHECK(error.detail() == "what happened");
  CHECK(error.sys_errno() == 0);
  CHECK(std::string(error.what()) == "channel 'x': receive: what happened [ProtocolViolation]");
  CHECK_FALSE(error.peer_gone());
  CHECK(to_string(ErrorCode::StreamCut) == "StreamCut");
  CHECK(to_string(ErrorCode::InvalidArgument) == "InvalidArgument");
  CHECK(Error(ErrorCode::PeerClosed, "", "").peer_gone());
  CHECK(Error(ErrorCode::TruncatedMessage, "", "").peer_gone());
}

TEST_CASE("after a send fails with PeerClosed, every message the peer sent before it went is "
          "still received") {
  constexpr std::uint64_t kSent = 20;
  Child child = fork_with_channel([](Channel& parent) {
    Random random(1);
    for (std::uint64_t seq = 0; seq < kSent; ++seq) send_blob(parent, seq, 3000, random);
    return 0;  // exits: its receiving end closes with the rest
  });
  REQUIRE(child.process.wait().success());
  Random random(2);
  Error failed = error_from([&] { send_blob(child.channel, 0, 100, random); });
  CHECK(failed.code() == ErrorCode::PeerClosed);
  // What the docs tell the caller to do: keep receiving until receive fails.
  for (std::uint64_t seq = 0; seq < kSent; ++seq) {
    auto blob = child.channel.receive_as<test::Blob>(Deadline::after(10s));
    CHECK(blob->getSeq() == seq);
    CHECK(blob_intact(blob.root()));
  }
  CHECK(error_from([&] { child.channel.receive(Deadline::after(10s)); }).code() ==
        ErrorCode::PeerClosed);
}

TEST_CASE("a sent or moved-from message is InvalidArgument, never std::logic_error") {
  auto [near, far] = Channel::pair(ChannelOptions().with_name("misuse"));
  OutgoingMessage message = near.new_message();
  message.init_root<test::Blob>().setSeq(1);
  near.send(std::move(message));
  Error sending_again = error_from([&near = near, &message] { near.send(std::move(message)); });
  CHECK(sending_again.code() == ErrorCode::InvalidArgument);
  CHECK_THAT(sending_again.what(), Catch::StartsWith("channel 'misuse': send"));
  CHECK(error_from([&message] { message.builder(); }).code() == ErrorCode::InvalidArgument);

  ReceivedMessage received = far.receive(Deadline::after(10s));
  ReceivedMessage taken = std::move(received);
  CHECK(taken.root<test::Blob>().getSeq() == 1);
  CHECK(error_from([&received] { received.reader(); }).code() == ErrorCode::InvalidArgument);
}

TEST_CASE("a caller cannot send a frame with an empty first segment, the mark of capnsplice's "
          "own control frames") {
  auto [near, far] = Channel::pair();
  const capnp::word root{};  // a null root pointer
  const kj::ArrayPtr<const capnp::word> marked[] = {nullptr, kj::arrayPtr(&root, 1)};
  Error error = error_from([&near = near, &marked] {
    near.sender().send_copy(marked, Deadline::after(1s));
  });
  CHECK(error.code() == ErrorCode::InvalidArgument);
  CHECK(error_from([&near = near] {
          near.sender().send_copy(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>>(),
                                  Deadline::after(1s));
        }).code() == ErrorCode::InvalidArgument);
  // Nothing was written: the channel carries the next message as usual.
  Random random(3);
  send_blob(near, 5, 10, random);
  CHECK(far.receive_as<test::Blob>(Deadline::after(10s))->getSeq() == 5);
}

TEST_CASE("wait-forever durations saturate to no deadline instead of expiring at once") {
  CHECK(Deadline::after(std::chrono::nanoseconds::max()).is_never());
  CHECK(Deadline::after(std::chrono::seconds::max()).is_never());
  CHECK(Deadline::after(std::chrono::hours::max()).is_never());
  CHECK_FALSE(Deadline::after(std::chrono::hours(24 * 365)).is_never());
  CHECK(Deadline::after(std::chrono::nanoseconds::min()).expired());
  CHECK(Deadline::after(std::chrono::seconds::min()).expired());
  // Unsigned durations are neither wrapped nor taken for negative ones.
  CHECK_FALSE(Deadline::after(std::chrono::duration<unsigned, std::milli>(100000)).expired());
  CHECK_FALSE(Deadline::after(std::chrono::duration<double>(100.0)).expired());
  CHECK(Deadline::after(std::chrono::duration<double>(1e300)).is_never());
  // receive_for(max) waits: here until another thread interrupts it, not Timeout at once.
  auto [near, far] = Channel::pair();
  std::thread interrupter([&far = far] {
    std::this_thread::sleep_for(50ms);
    far.interrupt_receive();
  });
  Error error = error_from([&far = far] { far.receive_for(std::chrono::nanoseconds::max()); });
  interrupter.join();
  CHECK(error.code() == ErrorCode::Interrupted);
}

TEST_CASE("close_sending that times out leaves the end open with its queue, so it can be "
          "called again and nothing is lost") {
  Random random(4);
  auto [near, far, filled] = full_copy_pipe(50ms, random);
  const auto [sent, full] = filled;
  REQUIRE(full.code() == ErrorCode::Timeout);  // blob `sent` is kept queued
  auto waiting = near.new_message();           // waits in the queue behind it
  fill_blob(waiting.init_root<test::Blob>(), sent + 1, 1000, random);
  near.queue(std::move(waiting));
  CHECK(error_from([&near = near] { near.close_sending(); }).code() == ErrorCode::Timeout);
  CHECK(near.sender().fd() >= 0);
  for (std::uint64_t seq = 0; seq < sent; ++seq) {
    REQUIRE(far.receive_as<test::Blob>(Deadline::after(10s))->getSeq() == seq);
  }
  near.close_sending();  // the reader made room: this time it writes the queue and closes
  CHECK(near.sender().fd() < 0);
  CHECK(far.receive_as<test::Blob>(Deadline::after(10s))->getSeq() == sent);
  CHECK(far.receive_as<test::Blob>(Deadline::after(10s))->getSeq() == sent + 1);
  CHECK(error_from([&far = far] { far.receive(Deadline::after(10s)); }).code() ==
        ErrorCode::PeerClosed);
}

TEST_CASE("a hello whose text pointer leaves its segment is IncompatiblePeer, not a "
          "kj::Exception") {
  auto [near, far] = Channel::pair(ChannelOptions().with_name("hello"));
  capnp::MallocMessageBuilder hello;
  auto root = hello.initRoot<wire::Hello>();
  root.setMagic(wire::Hello::EXPECTED_MAGIC);
  root.setProtocolVersion(kProtocolVersion);
  root.setApplication("app");
  const auto segment = hello.getSegmentsForOutput()[0];
  std::vector<capnp::word> words(segment.begin(), segment.end());
  // Root pointer, 4 data words, then the application's list pointer: aim it 2^28 words on.
  const std::uint64_t far_list = (std::uint64_t{4} << 35) | (std::uint64_t{2} << 32) |
                                 (std::uint64_t{0x0FFFFFFF} << 2) | 1;
  std::memcpy(&words[5], &far_list, sizeof far_list);
  const kj::ArrayPtr<const capnp::word> segments[] = {kj::arrayPtr(words.data(), words.size())};
  far.sender().send_copy(segments, Deadline::after(1s));
  Error error = error_from([&near = near] { exchange_hello(near); });
  CHECK(error.code() == ErrorCode::IncompatiblePeer);
}

TEST_CASE("destroying a channel while another thread blocks in its receive wakes that thread "
          "with InvalidArgument instead of leaving it in freed memory") {
  auto [near, far] = Channel::pair();
  auto doomed = std::make_unique<Channel>(std::move(far));
  Channel* receiving = doomed.get();
  std::atomic<bool> entering{false};
  std::optional<ErrorCode> outcome;
  std::thread receiver([&] {
    entering = true;
    try {
      receiving->receive();
    } catch (const Error& error) {
      outcome = error.code();
    }
  });
  while (!entering) std::this_thread::yield();
  std::this_thread::sleep_for(200ms);  // from the flag into the blocking wait
  doomed.reset();  // without the wake-up: blocked for ever, then a use after free
  receiver.join();
  CHECK(outcome == ErrorCode::InvalidArgument);
}
