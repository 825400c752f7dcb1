#include "capnsplice/outgoing_message.h"

#include <fcntl.h>

#include <string>
#include <utility>

#include "capnsplice/error.h"
#include "capnsplice/options.h"
#include "control_link.h"
#include "pooled_message_builder.h"

namespace capnsplice {

OutgoingMessage::OutgoingMessage() noexcept = default;
OutgoingMessage::OutgoingMessage(OutgoingMessage&& other) noexcept
    : builder_(std::move(other.builder_)),
      descriptors_(std::move(other.descriptors_)),
      descriptor_sequence_(std::exchange(other.descriptor_sequence_, 0)),
      descriptors_sent_(std::exchange(other.descriptors_sent_, 0)),
      descriptor_link_(std::move(other.descriptor_link_)) {}

OutgoingMessage& OutgoingMessage::operator=(OutgoingMessage&& other) noexcept {
  if (this != &other) {
    cancel_sent_descriptors();
    builder_ = std::move(other.builder_);
    descriptors_ = std::move(other.descriptors_);
    descriptor_sequence_ = std::exchange(other.descriptor_sequence_, 0);
    descriptors_sent_ = std::exchange(other.descriptors_sent_, 0);
    descriptor_link_ = std::move(other.descriptor_link_);
  }
  return *this;
}

OutgoingMessage::~OutgoingMessage() { cancel_sent_descriptors(); }

void OutgoingMessage::cancel_sent_descriptors() noexcept {
  if (descriptors_sent_ == 0) return;
  if (auto link = descriptor_link_.lock()) {
    link->cancel_descriptors(descriptor_sequence_, descriptors_sent_);
  }
  descriptors_sent_ = 0;
  descriptor_link_.reset();
}

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
  if (descriptors_sent_ != 0) {
    throw Error(ErrorCode::InvalidArgument, "OutgoingMessage",
                "attach: the message's descriptors went ahead when a send found the queue "
                "full; send it again as it is");
  }
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
