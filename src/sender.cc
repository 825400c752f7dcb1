#include "capnsplice/sender.h"

#include <capnp/any.h>

#include <atomic>
#include <mutex>

#include "sender_core.h"
#include "sigpipe_guard.h"

namespace capnsplice {

namespace detail {

/// What a Channel's sender core is made of, kept until the first call that needs the core.
/// Channel::pair() makes two ends per pair and most never send, or not for a while: the
/// core, its reader-progress record and their strings were most of what a pair cost to
/// make (in allocations, and in fresh pages a host that makes many pairs faults in).
struct LazySenderCore {
  LazySenderCore(UniqueFd fd, const SenderOptions& options, std::string context,
                 std::shared_ptr<ControlLink> link, const DescriptorFacts& facts)
      : fd_number(fd.get()),
        fd(std::move(fd)),
        options(options),
        context(std::move(context)),
        link(std::move(link)),
        facts(facts) {}

  std::once_flag once;
  std::atomic<bool> made{false};  // set (release) once Sender::core_ is
  const int fd_number;            // what Sender::fd() says until then
  UniqueFd fd;
  const SenderOptions options;
  std::string context;
  std::shared_ptr<ControlLink> link;
  const DescriptorFacts facts;
};

}  // namespace detail

Sender::Sender(UniqueFd fd, SenderOptions options, std::string context)
    : Sender(std::move(fd), options, std::move(context), nullptr) {}

Sender::Sender(UniqueFd fd, SenderOptions options, std::string context,
               std::shared_ptr<detail::ControlLink> link, const detail::DescriptorFacts* facts) {
  if (options.sigpipe == SigpipeSafety::process_ignores) detail::require_sigpipe_ignored(context);
  if (facts == nullptr) {
    // The descriptor is asked about now, so that one that cannot be written fails here.
    core_ = detail::SenderCore::make(std::move(fd), options, std::move(context), std::move(link),
                                     nullptr);
    return;
  }
  detail::require_access_mode(*facts, /*for_writing=*/true, context);
  lazy_ = std::make_unique<detail::LazySenderCore>(std::move(fd), options, std::move(context),
                                                   std::move(link), *facts);
}

Sender::Sender(Sender&&) noexcept = default;
Sender& Sender::operator=(Sender&&) noexcept = default;
Sender::~Sender() = default;

detail::SenderCore& Sender::core() const {
  // Every send passes here, so the made flag comes first and the making is out of line:
  // a std::call_once costs a hundred instructions even once done (a tenth of a 64 B send).
  if (lazy_ && !lazy_->made.load(std::memory_order_acquire)) make_core();
  return *core_;
}

[[gnu::noinline]] void Sender::make_core() const {
  std::call_once(lazy_->once, [this] {
    detail::LazySenderCore& lazy = *lazy_;
    // Out of memory, the call that needed the core throws, and the next one tries again
    // (the context and link are copied for that; a descriptor the failed constructor
    // had taken is closed, and that end then says it is closed for sending).
    core_ = detail::SenderCore::make(std::move(lazy.fd), lazy.options, lazy.context, lazy.link,
                                     &lazy.facts);
    lazy.link.reset();  // the core holds it where it needs it, as an eager one does
    lazy.context = std::string();
    lazy.made.store(true, std::memory_order_release);
  });
}

detail::SenderCore* Sender::made_core() const noexcept {
  if (lazy_ && !lazy_->made.load(std::memory_order_acquire)) return nullptr;
  return core_.get();
}

OutgoingMessage Sender::new_message() { return core().new_message(std::nullopt); }

OutgoingMessage Sender::new_message(Deadline deadline) { return core().new_message(deadline); }

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
  send(std::move(message), Deadline::after(core().options().send_timeout));
}

void Sender::send(OutgoingMessage&& message, Deadline deadline) {
  detail::SenderCore& sender = core();
  switch (sender.send(message, deadline)) {
    case SendStatus::sent:
      return;
    case SendStatus::queued:
      throw_kept(sender, "the message is");
    case SendStatus::queue_full:
      throw_not_taken(sender);
  }
}

SendStatus Sender::try_send(OutgoingMessage&& message) {
  try {
    return core().send(message, Deadline::immediate());
  } catch (const Error& error) {
    // The shared-memory arena had no room for the message's pool segments: not taken.
    if (error.code() == ErrorCode::Overloaded) return SendStatus::queue_full;
    throw;
  }
}

void Sender::queue(OutgoingMessage&& message) {
  queue(std::move(message), Deadline::after(core().options().send_timeout));
}

void Sender::queue(OutgoingMessage&& message, Deadline deadline) {
  detail::SenderCore& sender = core();
  if (!sender.queue(message, deadline)) throw_not_taken(sender);
  sender.sync_watch();  // a watcher learns that queued bytes wait for room
}

bool Sender::try_queue(OutgoingMessage&& message) {
  try {
    return core().queue(message, Deadline::immediate());
  } catch (const Error& error) {
    if (error.code() == ErrorCode::Overloaded) return false;  // as in try_send()
    throw;
  }
}

void Sender::flush() { flush(Deadline::after(core().options().send_timeout)); }

void Sender::flush(Deadline deadline) {
  detail::SenderCore& sender = core();
  if (!sender.flush(deadline)) throw_kept(sender, "what was queued is");
}

std::size_t Sender::try_flush() {
  detail::SenderCore& sender = core();
  sender.flush(Deadline::immediate());
  return sender.unsent_bytes();
}

std::size_t Sender::unsent_bytes() const noexcept {
  const detail::SenderCore* made = made_core();
  return made != nullptr ? made->unsent_bytes() : 0;
}

std::uint64_t Sender::written_messages() const noexcept {
  const detail::SenderCore* made = made_core();
  return made != nullptr ? made->written_messages() : 0;
}

bool Sender::has_queued() const noexcept {
  const detail::SenderCore* made = made_core();
  return made != nullptr && made->has_queued();
}

void Sender::send_copy(capnp::MessageBuilder& message) {
  send_copy(message, Deadline::after(core().options().send_timeout));
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
  detail::SenderCore& sender = core();
  if (!sender.send_copy(segments, deadline)) throw_kept(sender, "a copy of the message is");
}

void Sender::close() { close(Deadline::after(core().options().send_timeout)); }

void Sender::close(Deadline deadline) {
  detail::SenderCore& sender = core();
  if (!sender.close(deadline)) throw_kept(sender, "what was queued is");
}

void Sender::watch_with(int epoll_fd) {
  if (epoll_fd < 0) {
    // A core not made has registered nothing: nothing to take out.
    if (detail::SenderCore* made = made_core()) made->watch_with(-1);
    return;
  }
  if (lazy_ || core_) core().watch_with(epoll_fd);
}

int Sender::fd() const noexcept {
  if (const detail::SenderCore* made = made_core()) return made->fd();
  return lazy_ ? lazy_->fd_number : -1;
}

SenderStats Sender::stats() const { return core().stats(); }

}  // namespace capnsplice
