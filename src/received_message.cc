#include "capnsplice/received_message.h"

#include "capnsplice/error.h"
#include "received_message_state.h"

#include <utility>

namespace capnsplice {

ReceivedMessage::ReceivedMessage() noexcept = default;
ReceivedMessage::ReceivedMessage(ReceivedMessage&&) noexcept = default;
ReceivedMessage& ReceivedMessage::operator=(ReceivedMessage&&) noexcept = default;
ReceivedMessage::~ReceivedMessage() = default;

ReceivedMessage::ReceivedMessage(std::unique_ptr<detail::ReceivedMessageState> state) noexcept
    : state_(std::move(state)) {}

capnp::MessageReader& ReceivedMessage::reader() {
  if (!state_) throw Error(ErrorCode::InvalidArgument, "ReceivedMessage", "empty (moved from)");
  return *state_->reader;
}

kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> ReceivedMessage::segments() const {
  return state_ ? state_->segments : nullptr;
}

std::size_t ReceivedMessage::frame_bytes() const noexcept {
  return state_ ? state_->frame_bytes : 0;
}

std::size_t ReceivedMessage::descriptor_count() const noexcept {
  return state_ ? state_->descriptors.size() : 0;
}

std::vector<UniqueFd> ReceivedMessage::take_descriptors() noexcept {
  return state_ ? std::exchange(state_->descriptors, {}) : std::vector<UniqueFd>();
}

}  // namespace capnsplice
