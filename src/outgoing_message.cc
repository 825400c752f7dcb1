#include "capnsplice/outgoing_message.h"

#include <fcntl.h>

#include <string>
#include <utility>

#include "capnsplice/error.h"
#include "capnsplice/options.h"
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

void OutgoingMessage::attach(UniqueFd fd) {
  static_cast<void>(pooled());  // InvalidArgument on an empty message
  if (!fd) throw Error(ErrorCode::InvalidArgument, "OutgoingMessage", "attach: no descriptor");
  if (attached() >= kMaxDescriptorsPerMessage) {
    throw Error(ErrorCode::InvalidArgument, "OutgoingMessage",
                "attach: a message carries at most " +
                    std::to_string(kMaxDescriptorsPerMessage) + " descriptors");
  }
  descriptors_.push_back(std::move(fd));
}

void OutgoingMessage::attach_copy(int fd) {
  static_cast<void>(pooled());
  UniqueFd copy(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!copy) throw_system_error("OutgoingMessage", "attach_copy: fcntl(F_DUPFD_CLOEXEC)");
  attach(std::move(copy));
}

OutgoingMessage::DataBuffer OutgoingMessage::allocate_data(std::size_t size) {
  DataBuffer buffer;
  buffer.orphan = pooled().allocate_data(size, buffer.bytes);
  return buffer;
}

}  // namespace capnsplice
