#include "capnsplice/request.h"

#include <algorithm>
#include <string>
#include <utility>

#include "capnsplice/error.h"

namespace capnsplice {

namespace {
/// What a queued message costs besides its frame (its state, reader and queue entry, about
/// 450 bytes here): a flood of tiny messages is bounded too.
constexpr std::size_t kQueuedMessageOverhead = 512;

std::size_t queued_cost(const ReceivedMessage& message) noexcept {
  return message.frame_bytes() + kQueuedMessageOverhead;
}
}  // namespace

RequestTracker::RequestTracker(Channel& channel, ResponseId response_id,
                               std::size_t max_queued_bytes)
    : channel_(channel), response_id_(std::move(response_id)), max_queued_bytes_(max_queued_bytes) {}

std::optional<ReceivedMessage> RequestTracker::take_queued(std::optional<std::uint64_t> id) {
  auto found = id ? std::find_if(queue_.begin(), queue_.end(),
                                 [id](const Queued& queued) { return queued.response_to == id; })
                  : queue_.begin();
  if (found == queue_.end()) return std::nullopt;
  ReceivedMessage message = std::move(found->message);
  queue_.erase(found);
  queued_bytes_ -= queued_cost(message);
  return message;
}

ReceivedMessage RequestTracker::call(std::uint64_t id, OutgoingMessage&& request, Deadline deadline,
                                     const OtherMessageHandler& on_other) {
  channel_.send(std::move(request), deadline);
  return await(id, deadline, on_other);
}

ReceivedMessage RequestTracker::await(std::uint64_t id, Deadline deadline,
                                      const OtherMessageHandler& on_other) {
  if (auto queued = take_queued(id)) return std::move(*queued);
  for (;;) {
    if (queued_bytes_ > max_queued_bytes_) {
      throw Error(ErrorCode::Overloaded,
                  "channel '" + channel_.name() + "': request " + std::to_string(id),
                  std::to_string(queue_.size()) + " other messages (" +
                      std::to_string(queued_bytes_) + " bytes) are queued, more than the " +
                      std::to_string(max_queued_bytes_) +
                      " bytes a tracker keeps while a call waits: take them, then await again");
    }
    ReceivedMessage message;
    try {
      message = channel_.receive(deadline);
    } catch (const Error& error) {
      if (error.code() != ErrorCode::Timeout) throw;
      throw Error(ErrorCode::Timeout,
                  "channel '" + channel_.name() + "': request " + std::to_string(id),
                  "no response arrived before the deadline");
    }
    const std::optional<std::uint64_t> answers = response_id_(message);
    if (answers == id) return message;
    if (on_other && !answers) {
      on_other(std::move(message));
    } else {
      queued_bytes_ += queued_cost(message);
      queue_.push_back({answers, std::move(message)});
    }
  }
}

ReceivedMessage RequestTracker::receive(Deadline deadline) {
  if (auto queued = take_queued(std::nullopt)) return std::move(*queued);
  return channel_.receive(deadline);
}

std::optional<ReceivedMessage> RequestTracker::try_receive() {
  if (auto queued = take_queued(std::nullopt)) return queued;
  return channel_.try_receive();
}

}  // namespace capnsplice
