#include "capnsplice/outgoing_message.h"

#include "capnsplice/error.h"
#include "pooled_message_builder.h"

namespace capnsplice {

OutgoingMessage::OutgoingMessage() noexcept = default;
OutgoingMessage::OutgoingMessage(OutgoingMessage&&) noexcept = default;
OutgoingMessage& OutgoingMessage::operator=(OutgoingMessage&&) noexcept = default;
OutgoingMessage::~OutgoingMessage() = default;

OutgoingMessage::OutgoingMessage(std::unique_ptr<detail::PooledMessageBuilder> builder) noexcept
    : builder_(std::move(builder)) {}

detail::PooledMessageBuilder& OutgoingMessage::pooled() {
  if (!builder_) {
    throw Error(ErrorCode::InvalidArgument, "OutgoingMessage",
                "used after it was sent or moved from");
  }
  return *builder_;
}

capnp::MessageBuilder& OutgoingMessage::builder() { return pooled(); }

OutgoingMessage::DataBuffer OutgoingMessage::allocate_data(std::size_t size) {
  DataBuffer buffer;
  buffer.orphan = pooled().allocate_data(size, buffer.bytes);
  return buffer;
}

}  // namespace capnsplice
