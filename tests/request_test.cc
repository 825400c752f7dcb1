// Request/response by id while other messages keep flowing in both directions.
#include "capnsplice/request.h"

#include <catch2/catch.hpp>
#include <thread>
#include <vector>

#include "support/blob.h"
#include "support/process_support.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

// The tests' id convention, on test::Blob: `seq` is the id and `checksum` the kind.
enum Kind : std::uint64_t { kEvent = 0, kRequest = 1, kResponse = 2 };

void send_kind(Channel& channel, Kind kind, std::uint64_t id) {
  channel.send_struct<test::Blob>([&](test::Blob::Builder blob) {
    blob.setSeq(id);
    blob.setChecksum(kind);
  });
}

std::optional<std::uint64_t> response_id(ReceivedMessage& message) {
  auto blob = message.root<test::Blob>();
  if (blob.getChecksum() != kResponse) return std::nullopt;
  return blob.getSeq();
}

Kind kind_of(ReceivedMessage& message) {
  return static_cast<Kind>(message.root<test::Blob>().getChecksum());
}

std::uint64_t id_of(ReceivedMessage& message) { return message.root<test::Blob>().getSeq(); }

OutgoingMessage request(Channel& channel, std::uint64_t id) {
  OutgoingMessage message = channel.new_message();
  auto blob = message.init_root<test::Blob>();
  blob.setSeq(id);
  blob.setChecksum(kRequest);
  return message;
}

}  // namespace

TEST_CASE("a call returns the response with its id and keeps other messages in arrival order") {
  auto [near, far] = Channel::pair();
  std::thread peer([&far = far] {
    ReceivedMessage asked = far.receive();
    send_kind(far, kEvent, 100);
    send_kind(far, kResponse, 999);  // answers some other request
    send_kind(far, kEvent, 101);
    send_kind(far, kResponse, id_of(asked));
  });
  RequestTracker tracker(near, response_id);
  const std::uint64_t id = tracker.next_id();
  CHECK(id != 0);
  ReceivedMessage response = tracker.call(id, request(near, id), Deadline::after(10s));
  peer.join();
  CHECK(kind_of(response) == kResponse);
  CHECK(id_of(response) == id);
  REQUIRE(tracker.queued() == 3);
  std::vector<std::uint64_t> others;
  while (auto message = tracker.try_receive()) others.push_back(id_of(*message));
  CHECK(others == std::vector<std::uint64_t>{100, 999, 101});
}

TEST_CASE("responses that arrive out of order are each matched to their request") {
  auto [near, far] = Channel::pair();
  RequestTracker tracker(near, response_id);
  std::vector<std::uint64_t> ids;
  for (int i = 0; i < 3; ++i) {
    ids.push_back(tracker.next_id());
    near.send(request(near, ids.back()));
  }
  std::thread peer([&far = far] {
    std::vector<std::uint64_t> asked;
    for (int i = 0; i < 3; ++i) {
      ReceivedMessage message = far.receive();
      asked.push_back(id_of(message));
    }
    for (std::uint64_t id : {asked[2], asked[0], asked[1]}) send_kind(far, kResponse, id);
  });
  for (std::uint64_t id : ids) {
    ReceivedMessage response = tracker.await(id, Deadline::after(10s));
    CHECK(id_of(response) == id);
  }
  peer.join();
  CHECK(tracker.queued() == 0);
}

TEST_CASE(
    "a call without a response times out naming the request, and a late response "
    "is kept") {
  auto [near, far] = Channel::pair(ChannelOptions().with_name("slow"));
  RequestTracker tracker(near, response_id);
  Error error = error_from(
      [&tracker, &near = near] { tracker.call(5, request(near, 5), Deadline::after(50ms)); });
  CHECK(error.code() == ErrorCode::Timeout);
  CHECK_THAT(error.what(), Catch::StartsWith("channel 'slow': request 5: no response"));
  send_kind(far, kResponse, 5);
  ReceivedMessage late = tracker.receive(Deadline::after(10s));
  CHECK(id_of(late) == 5);
}

TEST_CASE("while a call waits, the peer's own requests are answered and both directions flow") {
  auto [near, far] = Channel::pair();
  // The peer asks its own question first and answers ours only once it has its answer:
  // without a handler answering during the wait, both ends would wait for ever.
  std::uint64_t peer_answer_id = 0;  // checked after join: Catch2 asserts on one thread only
  std::thread peer([&far = far, &peer_answer_id] {
    RequestTracker peer_tracker(far, response_id);
    ReceivedMessage ours = far.receive();
    ReceivedMessage answer = peer_tracker.call(77, request(far, 77), Deadline::after(10s));
    peer_answer_id = id_of(answer);
    send_kind(far, kResponse, id_of(ours));
  });
  RequestTracker tracker(near, response_id);
  int answered = 0;
  const std::uint64_t id = tracker.next_id();
  ReceivedMessage response =
      tracker.call(id, request(near, id), Deadline::after(10s), [&](ReceivedMessage&& other) {
        CHECK(kind_of(other) == kRequest);
        send_kind(near, kResponse, id_of(other));
        ++answered;
      });
  peer.join();
  CHECK(peer_answer_id == 77);
  CHECK(id_of(response) == id);
  CHECK(answered == 1);
}

TEST_CASE("a call to a peer that goes away fails with the peer gone instead of waiting") {
  auto [near, far] = Channel::pair();
  RequestTracker tracker(near, response_id);
  std::thread peer([far = std::move(far)]() mutable {
    far.receive();  // takes the request, then closes without answering
  });
  Error error = error_from(
      [&tracker, &near = near] { tracker.call(1, request(near, 1), Deadline::after(10s)); });
  peer.join();
  CHECK(error.peer_gone());
}

TEST_CASE("a peer flooding other messages while a call waits makes the await fail with "
          "Overloaded, and nothing it sent is lost") {
  auto [near, far] = Channel::pair();
  constexpr std::uint64_t kEvents = 40;
  std::thread peer([&far = far] {
    ReceivedMessage asked = far.receive();
    for (std::uint64_t i = 0; i < kEvents; ++i) send_kind(far, kEvent, i);
    send_kind(far, kResponse, id_of(asked));
  });
  // An event is a 48-byte frame and costs 560 bytes queued: 10 of them pass 5,000.
  RequestTracker tracker(near, response_id, /*max_queued_bytes=*/5000);
  const std::uint64_t id = tracker.next_id();
  Error overloaded =
      error_from([&] { tracker.call(id, request(near, id), Deadline::after(10s)); });
  peer.join();
  CHECK(overloaded.code() == ErrorCode::Overloaded);
  const std::size_t held = tracker.queued();
  CHECK(held >= 8);
  CHECK(held <= 11);  // the bound, and the one message that passed it
  std::uint64_t next_event = 0;
  auto take_events = [&](std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) {
      ReceivedMessage event = tracker.receive(Deadline::after(10s));
      REQUIRE(kind_of(event) == kEvent);
      CHECK(id_of(event) == next_event++);
    }
  };
  // Taking what was queued makes room; each await then queues more, until the response.
  for (;;) {
    take_events(tracker.queued());
    try {
      ReceivedMessage response = tracker.await(id, Deadline::after(10s));
      CHECK(id_of(response) == id);
      break;
    } catch (const Error& error) {
      REQUIRE(error.code() == ErrorCode::Overloaded);
    }
  }
  take_events(tracker.queued());
  CHECK(next_event == kEvents);  // every event, in order
}
