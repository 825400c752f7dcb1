#include "capnsplice/sender.h"

#include <capnp/any.h>

#include "sender_core.h"

namespace capnsplice {

Sender::Sender(UniqueFd fd, SenderOptions options, std::string context)
    : Sender(std::move(fd), options, std::move(context), nullptr) {}

Sender::Sender(UniqueFd fd, SenderOptions options, std::string context,
               std::shared_ptr<detail::ControlLink> link, const detail::DescriptorFacts* facts)
    : core_(std::make_shared<detail::SenderCore>(std::move(fd), options, std::move(context),
                                                 std::move(link), facts)) {}

Sender::Sender(Sender&&) noexcept = default;
Sender& Sender::operator=(Sender&&) noexcept = default;
Sender::~Sender() = default;

OutgoingMessage Sender::new_message() { return core_->new_message(std::nullopt); }

OutgoingMessage Sender::new_message(Deadline deadline) { return core_->new_message(deadline); }

namespace {

[[noreturn]] void throw_not_taken(const detail::SenderCore& core) {
  throw Error(ErrorCode::Overloaded, core.context(),
              "the outgoing queue holds " + std::to_string(core.unsent_bytes()) +
                  " bytes (limit max_unsent_bytes = " +
                  std::to_string(core.options().max_unsent_bytes) +
                  ") and the reader made no room before the deadline: the message was not "
                  "taken and is still yours");
}

[[noreturn]] void throw_kept(const detail::SenderCore& core, const char* what) {
  throw Error(ErrorCode::Timeout, core.context(),
              std::string("the reader did not make room in the pipe before the deadline; ") +
                  what + " kept whole in the outgoing queue (" +
                  std::to_string(core.unsent_bytes()) +
                  " bytes unsent) and goes out first with the next send, flush or close");
}

}  // namespace

void Sender::send(OutgoingMessage&& message) {
  send(std::move(message), Deadline::after(core_->options().send_timeout));
}

void Sender::send(OutgoingMessage&& message, Deadline deadline) {
  if (!core_->queue(message, deadline)) throw_not_taken(*core_);
  if (!core_->flush(deadline)) throw_kept(*core_, "the message is");
}

SendStatus Sender::try_send(OutgoingMessage&& message) {
  if (!core_->queue(message, Deadline::immediate())) return SendStatus::queue_full;
  return core_->flush(Deadline::immediate()) ? SendStatus::sent : SendStatus::queued;
}

void Sender::queue(OutgoingMessage&& message) {
  queue(std::move(message), Deadline::after(core_->options().send_timeout));
}

void Sender::queue(OutgoingMessage&& message, Deadline deadline) {
  if (!core_->queue(message, deadline)) throw_not_taken(*core_);
  core_->sync_watch();  // a watcher learns that queued bytes wait for room
}

bool Sender::try_queue(OutgoingMessage&& message) {
  return core_->queue(message, Deadline::immediate());
}

void Sender::flush() { flush(Deadline::after(core_->options().send_timeout)); }

void Sender::flush(Deadline deadline) {
  if (!core_->flush(deadline)) throw_kept(*core_, "what was queued is");
}

std::size_t Sender::try_flush() {
  core_->flush(Deadline::immediate());
  return core_->unsent_bytes();
}

std::size_t Sender::unsent_bytes() const noexcept { return core_ ? core_->unsent_bytes() : 0; }

std::uint64_t Sender::written_messages() const noexcept {
  return core_ ? core_->written_messages() : 0;
}

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
  send_copy(segments, deadline);
}

void Sender::send_copy(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                       Deadline deadline) {
  if (!core_->send_copy(segments, deadline)) throw_kept(*core_, "a copy of the message is");
}

void Sender::close() { close(Deadline::after(core_->options().send_timeout)); }

void Sender::close(Deadline deadline) {
  if (!core_->close(deadline)) throw_kept(*core_, "what was queued is");
}

void Sender::watch_with(int epoll_fd) {
  if (core_) core_->watch_with(epoll_fd);
}

int Sender::fd() const noexcept { return core_->fd(); }

SenderStats Sender::stats() const { return core_->stats(); }

}  // namespace capnsplice
