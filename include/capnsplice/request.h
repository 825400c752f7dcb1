// capnsplice/request.h — send a request and wait for its response, by id.
//
// The id convention is the application's own: its request messages carry an id and its
// responses carry the id of the request they answer, in whatever fields its schema has.
// A RequestTracker is told how to read that id from a received message, and matches:
//
//   capnsplice::RequestTracker requests(channel, [](capnsplice::ReceivedMessage& m)
//       -> std::optional<std::uint64_t> {
//     auto reply = m.root<Message>();
//     if (!reply.isResult()) return std::nullopt;   // not a response
//     return reply.getResult().getRequestId();
//   });
//
//   std::uint64_t id = requests.next_id();
//   auto request = channel.new_message();
//   request.init_root<Message>().initJob().setRequestId(id);
//   capnsplice::ReceivedMessage response =
//       requests.call(id, std::move(request), capnsplice::Deadline::after(2s));
//
// While a call waits, everything else that arrives — events, the peer's own requests,
// responses to other ids — is kept in arrival order for receive()/try_receive() (or
// passed to a handler, to answer the peer's requests during the wait), and the channel
// can still send from other threads: nothing is lost and neither direction stalls.
// Queued messages hold their space in the receive buffer until they are taken, and the
// queue is bounded (max_queued_bytes): a peer that floods other messages while a call
// waits makes the await throw Overloaded, with everything it sent still queued.
//
// With a Poller: the poller sees the channel, not the tracker's queue. After an await,
// drain the tracker (try_receive() until empty) before waiting on the poller again, or
// messages queued during the await wait for the next one that arrives.
//
// Threads: one thread receives through the tracker (and not through the channel
// directly while the tracker holds queued messages).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>

#include "capnsplice/channel.h"
#include "capnsplice/deadline.h"
#include "capnsplice/outgoing_message.h"
#include "capnsplice/received_message.h"

namespace capnsplice {

/// Reads the id of the request a message answers; empty when it is not a response.
using ResponseId = std::function<std::optional<std::uint64_t>(ReceivedMessage&)>;

/// Receives the messages that are not the awaited response, when given to await().
using OtherMessageHandler = std::function<void(ReceivedMessage&&)>;

class RequestTracker {
 public:
  /// What the queue of other messages may hold by default while a call waits.
  static constexpr std::size_t kDefaultMaxQueuedBytes = std::size_t{64} << 20;

  /// Matches responses on `channel` (which must outlive the tracker) by `response_id`.
  /// Queued messages may add up to `max_queued_bytes` (frame bytes, and 512 bytes each for
  /// what holds them); one more may pass it.
  RequestTracker(Channel& channel, ResponseId response_id,
                 std::size_t max_queued_bytes = kDefaultMaxQueuedBytes);

  /// A fresh id: 1, 2, 3, ... (never 0, so schemas can keep 0 for "no id").
  std::uint64_t next_id() noexcept { return ++last_id_; }

  /// Sends `request` (which carries `id`) and waits for the response with that id, as
  /// await() does.
  ReceivedMessage call(std::uint64_t id, OutgoingMessage&& request, Deadline deadline,
                       const OtherMessageHandler& on_other = nullptr);

  /// Waits for the response to `id`, which may already be queued. Responses to other ids
  /// are queued; other messages are queued too, or given to `on_other` when it is set. Throws
  /// Timeout naming the id when the deadline passes (a response arriving later is queued like any
  /// other message), Overloaded once the queue holds more than max_queued_bytes (take queued
  /// messages with receive(), then await again), and the channel's errors (PeerClosed ...
  /// the peer is gone).
  ReceivedMessage await(std::uint64_t id, Deadline deadline,
                        const OtherMessageHandler& on_other = nullptr);

  /// The oldest message not claimed by an await(): queued first, then from the channel.
  ReceivedMessage receive(Deadline deadline = Deadline::never());
  std::optional<ReceivedMessage> try_receive();

  /// Messages queued during awaits and not taken yet.
  std::size_t queued() const noexcept { return queue_.size(); }

  Channel& channel() noexcept { return channel_; }

 private:
  struct Queued {
    std::optional<std::uint64_t> response_to;
    ReceivedMessage message;
  };
  /// Removes and returns the first queued message answering `id` (any message when
  /// `id` is empty).
  std::optional<ReceivedMessage> take_queued(std::optional<std::uint64_t> id);

  Channel& channel_;
  ResponseId response_id_;
  const std::size_t max_queued_bytes_;
  std::size_t queued_bytes_ = 0;
  std::deque<Queued> queue_;
  std::uint64_t last_id_ = 0;
};

}  // namespace capnsplice
