#include "capnsplice/sender.h"

#include <capnp/any.h>

#include "sender_core.h"

namespace capnsplice {

Sender::Sender(UniqueFd fd, SenderOptions options, std::string context)
    : Sender(std::move(fd), options, std::move(context), nullptr) {}

Sender::Sender(UniqueFd fd, SenderOptions options, std::string context,
               std::shared_ptr<detail::ControlLink> link)
    : core_(std::make_shared<detail::SenderCore>(std::move(fd), options, std::move(context),
                                                 std::move(link))) {
  core_->attach_pool(core_);
}

Sender::Sender(Sender&&) noexcept = default;
Sender& Sender::operator=(Sender&&) noexcept = default;
Sender::~Sender() = default;

OutgoingMessage Sender::new_message() { return core_->new_message(); }

void Sender::send(OutgoingMessage&& message) {
  send(std::move(message), Deadline::after(core_->options().send_timeout));
}

void Sender::send(OutgoingMessage&& message, Deadline deadline) {
  core_->queue(std::move(message), deadline);
  core_->flush(deadline);
}

void Sender::queue(OutgoingMessage&& message) {
  core_->queue(std::move(message), Deadline::after(core_->options().send_timeout));
}

void Sender::flush() { flush(Deadline::after(core_->options().send_timeout)); }

void Sender::flush(Deadline deadline) { core_->flush(deadline); }

bool Sender::has_queued() const noexcept { return core_->has_queued(); }

void Sender::send_copy(capnp::MessageBuilder& message) {
  send_copy(message, Deadline::after(core_->options().send_timeout));
}

void Sender::send_copy(capnp::MessageBuilder& message, Deadline deadline) {
  auto segments = message.getSegmentsForOutput();
  if (segments.size() == 0) {
    message.getRoot<capnp::AnyPointer>();  // an empty message still has a root pointer
    segments = message.getSegmentsForOutput();
  }
  core_->send_copy(segments, deadline);
}

void Sender::send_copy(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                       Deadline deadline) {
  core_->send_copy(segments, deadline);
}

void Sender::close() { core_->close(); }

int Sender::fd() const noexcept { return core_->fd(); }

SenderStats Sender::stats() const { return core_->stats(); }

}  // namespace capnsplice
