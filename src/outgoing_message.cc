#include "capnsplice/outgoing_message.h"

#include "capnsplice/error.h"
#include "pooled_message_builder.h"

namespace capnsplice {

OutgoingMessage::OutgoingMessage() noexcept = default;
OutgoingMessage::OutgoingMessage(OutgoingMessage&&) noexcept = default;
OutgoingMessage& OutgoingMessage::operator=(OutgoingMessage&&) noexcept = default;
OutgoingMessage::~OutgoingMessage() = default;

OutgoingMessage::OutgoingMessage(std::unique_ptr<capnp::MessageBuilder> builder) noexcept
    : builder_(std::move(builder)) {}

capnp::MessageBuilder& OutgoingMessage::builder() {
  if (!builder_) {
    throw Error(ErrorCode::InvalidArgument, "OutgoingMessage",
                "used after it was sent or moved from");
  }
  return *builder_;
}

OutgoingMessage::DataBuffer OutgoingMessage::allocate_data(std::size_t size) {
  auto& pooled = static_cast<detail::PooledMessageBuilder&>(builder());
  DataBuffer buffer;
  buffer.orphan = pooled.allocate_data(size, buffer.bytes);
  return buffer;
}

}  // namespace capnsplice
