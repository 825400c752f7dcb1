// capnsplice/kj.h — a Channel on KJ's event loop (kj::UnixEventPort): receive() and
// send() as kj::Promises. Header-only; link the CMake target capnsplice::kj
// (capnsplice + CapnProto::kj-async).
//
//   kj::AsyncIoContext io = kj::setupAsyncIo();
//   capnsplice::Child child = capnsplice::spawn({.program = "./worker"});
//   capnsplice::KjChannel worker(io.unixEventPort, std::move(child.channel));
//
//   auto message = worker.channel().new_message(capnsplice::Deadline::immediate());
//   message.init_root<Task>().setId(1);
//   kj::Promise<void> sent = worker.send(std::move(message));   // never blocks
//
//   kj::Promise<void> done = worker.receive().then([](capnsplice::ReceivedMessage reply) {
//     handle(reply.root<Answer>());
//   });
//   done.wait(io.waitScope);                    // the loop runs timers, sockets, ... meanwhile
//   worker.close_sending().wait(io.waitScope);  // after every send: the worker sees end of stream
//
// How it works: the adapter watches a duplicate of Channel::watch_fd() (an epoll descriptor
// that no capnsplice call ever closes) with one kj::UnixEventPort::FdObserver. KJ's
// observers are edge-triggered, so after every wake-up the adapter does all there is to do:
// it writes what the pipe takes (try_flush), hands waiting messages over (try_queue), and
// receives (try_receive) until the channel is empty or no receive() is waiting. Sends are
// written at the end of the loop's turn (kj::evalLast), so the messages one turn sends
// leave in one write. Nothing here blocks the loop: messages are built with
// Deadline::immediate() and taken with try_queue(); a message the channel's outgoing
// queue has no room for waits in the adapter, whole, until the reader makes room.
//
// Errors come as kj::Exceptions: DISCONNECTED when the peer is gone (end of stream,
// PeerClosed, TruncatedMessage) or the adapter was destroyed, FAILED for any other
// capnsplice::Error. The description carries the capnsplice message, its code in brackets
// ("... [TruncatedMessage]").
//
// Threads: a KjChannel belongs to the thread of its event loop, like every KJ object.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <kj/async-unix.h>
#include <kj/async.h>
#include <kj/exception.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <utility>

#include "capnsplice/channel.h"
#include "capnsplice/deadline.h"
#include "capnsplice/error.h"
#include "capnsplice/received_message.h"
#include "capnsplice/unique_fd.h"

namespace capnsplice {

/// A Channel driven by a KJ event loop. Owns the channel; neither copyable nor movable
/// (the loop holds its address): keep it in a kj::Own or std::unique_ptr to pass it around.
///
/// Destroying it with promises pending rejects them (DISCONNECTED, "KjChannel destroyed"),
/// except receive promises already granted a message (see receive()), which still deliver
/// it; promises may outlive the adapter. Messages it had taken for sending go as the
/// Channel's destructor sends them: what the pipe takes without waiting (see Sender::close).
class KjChannel {
 public:
  /// Takes the channel and starts watching it on `port` (the `unixEventPort` of
  /// kj::setupAsyncIo()). Throws capnsplice::Error (SystemError) when the watch descriptor
  /// cannot be made or duplicated. From here on, send through this adapter only (see
  /// send()); the channel may have messages buffered or unsent already.
  KjChannel(kj::UnixEventPort& port, Channel channel)
      : channel_(std::move(channel)),
        watch_fd_(duplicate_watch_fd(channel_)),
        observer_(port, watch_fd_.get(), kj::UnixEventPort::FdObserver::OBSERVE_READ),
        tasks_(task_errors_) {
    task_errors_.owner = this;
    pump();  // bytes queued before: keep them moving
  }

  KjChannel(const KjChannel&) = delete;
  KjChannel& operator=(const KjChannel&) = delete;

  ~KjChannel() noexcept(false) {
    fail_everything(disconnected("capnsplice::KjChannel destroyed"));
    inbox_->owner = nullptr;  // granted receives still get their message or the error
    // Members then go in reverse order: the watch task, the observer (epoll_ctl DEL on
    // our own descriptor), the descriptor, and last the channel.
  }

  /// The channel, for what the adapter does not wrap: new_message(), at_end(), options,
  /// statistics. Do not send or receive through it directly while promises of this
  /// adapter are pending (see send() and receive()). channel().close_sending() blocks
  /// while messages are unsent (up to the channel's send timeout): prefer close_sending()
  /// below.
  Channel& channel() noexcept { return channel_; }
  const Channel& channel() const noexcept { return channel_; }

  /// The next message. Resolves at once when one is buffered already, else when one
  /// arrives; several receive() promises may wait at once.
  ///
  /// A message is taken out of the channel only when the promise's continuation runs (or
  /// wait() returns it), so a receive promise dropped before that — cancelled, the loser
  /// of an exclusiveJoin() or a timeoutAfter(), or simply never waited on — loses no
  /// message: the next receive() gets it. Messages are handed out in the order they
  /// arrived, to the promises in the order their continuations run. (A promise passed
  /// to eagerlyEvaluate() or a kj::TaskSet runs its continuation as soon as it can, so
  /// it has the message by then.) A promise granted its message before the adapter was
  /// destroyed still delivers it.
  ///
  /// Rejects with DISCONNECTED once the peer closed its end and every message it sent
  /// was handed out ("peer closed the channel (end of stream)"), or when the stream ended
  /// inside a message (TruncatedMessage: the peer died mid-send); with FAILED for any
  /// other capnsplice::Error (MalformedFrame, MessageTooLarge, ...). These are final:
  /// every later receive() rejects the same way.
  kj::Promise<ReceivedMessage> receive() {
    auto pending = kj::newPromiseAndFulfiller<void>();
    auto grant = kj::heap<Grant>(inbox_);
    receivers_.push_back(Receiver{kj::mv(pending.fulfiller), grant.get()});
    pump();
    return pending.promise.then(
        [grant = kj::mv(grant)]() mutable -> ReceivedMessage { return grant->take(); });
  }

  /// receive() with the root opened as `Root`.
  template <typename Root>
  kj::Promise<Received<Root>> receive_as() {
    return receive().then(
        [](ReceivedMessage message) { return Received<Root>(std::move(message)); });
  }

  /// Sends `message` (built with channel().new_message(Deadline::immediate()), which never
  /// waits); resolves once it is written whole into the pipe. Never blocks: the message is
  /// handed to the channel with try_queue() and written at the end of this turn of the
  /// loop, with the turn's other sends; when the channel's outgoing queue is full
  /// (max_unsent_bytes) the adapter keeps it, whole, and retries when the reader makes
  /// room. Several sends may be pending; they go out and resolve in the order of the
  /// send() calls. Keep the number of pending sends bounded by waiting for them: they
  /// are the back-pressure.
  ///
  /// Dropping the promise does not recall a message the channel has taken: it is sent
  /// all the same. A message still waiting in the adapter for queue room when its promise
  /// is dropped is discarded, never written (as KJ cancels I/O).
  ///
  /// A send resolves when Sender::written_messages() reaches the count of messages taken
  /// up to it. Messages sent through channel() directly while sends of this adapter are
  /// pending are counted too, and make those promises resolve early.
  ///
  /// Rejects with DISCONNECTED when the peer is gone (PeerClosed: the channel dropped
  /// its queue, so this send and every pending one fail, and every later one at once),
  /// FAILED for MessageTooLarge and InvalidArgument (this message only: an empty message,
  /// a send after close) and for any other capnsplice::Error (StreamCut, SystemError:
  /// final, as for PeerClosed).
  kj::Promise<void> send(OutgoingMessage&& message) {
    KJ_IF_MAYBE(error, send_error_) { return kj::cp(*error); }
    auto pending = kj::newPromiseAndFulfiller<void>();
    outgoing_.push_back(Outgoing{Outgoing::Kind::message, std::move(message), false, true, 0,
                                 kj::mv(pending.fulfiller)});
    pump_at_end_of_turn();
    return kj::mv(pending.promise);
  }

  /// Closes the sending direction once every message sent before is written: the peer
  /// receives them, then end of stream. Resolves when the end is closed; receiving goes
  /// on. Never blocks (unlike channel().close_sending(), which waits for the reader).
  /// Later send() calls reject with FAILED (InvalidArgument). Dropping the promise before
  /// it resolved cancels the close.
  kj::Promise<void> close_sending() {
    KJ_IF_MAYBE(error, send_error_) { return kj::cp(*error); }
    auto pending = kj::newPromiseAndFulfiller<void>();
    outgoing_.push_back(
        Outgoing{Outgoing::Kind::close, OutgoingMessage(), false, true, 0, kj::mv(pending.fulfiller)});
    pump();
    return kj::mv(pending.promise);
  }

  /// send() and close_sending() promises not settled yet: messages waiting for queue room,
  /// or taken and not yet written whole.
  std::size_t pending_sends() const noexcept { return outgoing_.size(); }

 private:
  // What receives share with the adapter: messages received and not handed out yet, and
  // the final receive error. Granted receive promises keep it, so they still get their
  // message (or the error) after the adapter is gone.
  struct Inbox {
    KjChannel* owner;                     // null once the adapter is destroyed
    std::deque<ReceivedMessage> messages;
    std::size_t granted = 0;              // granted receives whose continuation has not run
    kj::Maybe<kj::Exception> error;       // final: end of stream, a receive error, destroyed
  };

  // A receive() promise's part: granted when a message (or the final error) is there for
  // it; takes the message only when its continuation runs.
  struct Grant {
    explicit Grant(std::shared_ptr<Inbox> inbox) : inbox(std::move(inbox)) {}
    Grant(const Grant&) = delete;
    Grant& operator=(const Grant&) = delete;

    // The oldest message handed out to nobody yet, or the final error when none is left.
    ReceivedMessage take() {
      consumed = true;
      --inbox->granted;
      if (!inbox->messages.empty()) {
        ReceivedMessage message = std::move(inbox->messages.front());
        inbox->messages.pop_front();
        return message;
      }
      KJ_IF_MAYBE(error, inbox->error) { kj::throwFatalException(kj::cp(*error)); }
      kj::throwFatalException(failed("capnsplice::KjChannel: a receive was granted nothing"));
    }

    // A granted receive dropped before its continuation ran leaves its message to the
    // next one.
    ~Grant() noexcept(false) {
      if (!granted || consumed) return;
      --inbox->granted;
      if (inbox->owner != nullptr) inbox->owner->grant_from_inbox();
    }

    std::shared_ptr<Inbox> inbox;
    bool granted = false;
    bool consumed = false;
  };

  struct Receiver {
    kj::Own<kj::PromiseFulfiller<void>> fulfiller;
    Grant* grant;  // valid while fulfiller->isWaiting()
  };

  struct Outgoing {
    enum class Kind { message, close };
    Kind kind;
    OutgoingMessage message;  // until the channel takes it
    bool taken;
    bool exact;               // ticket counts every message before it (see take_messages)
    std::uint64_t ticket;     // written_messages() at which it is written whole
    kj::Own<kj::PromiseFulfiller<void>> fulfiller;
  };

  struct TaskErrors final : kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&& exception) override {
      owner->fail_everything(kj::mv(exception));
    }
    KjChannel* owner = nullptr;
  };

  static UniqueFd duplicate_watch_fd(Channel& channel) {
    const int fd = ::fcntl(channel.watch_fd(), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) throw_system_error("capnsplice::KjChannel", "fcntl(F_DUPFD_CLOEXEC)");
    return UniqueFd(fd);
  }

  static kj::Exception disconnected(kj::StringPtr what) {
    return kj::Exception(kj::Exception::Type::DISCONNECTED, __FILE__, __LINE__, kj::str(what));
  }
  static kj::Exception failed(kj::StringPtr what) {
    return kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__, kj::str(what));
  }
  static kj::Exception to_kj(const Error& error) {
    return error.peer_gone() ? disconnected(error.what()) : failed(error.what());
  }

  // Errors that concern one message only; anything else ends the sending side.
  static bool message_error(const Error& error) {
    return error.code() == ErrorCode::MessageTooLarge ||
           error.code() == ErrorCode::InvalidArgument || error.code() == ErrorCode::Overloaded ||
           error.code() == ErrorCode::Timeout;
  }

  // Does everything the channel allows now, then watches for more when something waits.
  void pump() {
    pump_sends();
    pump_receives();
    if (wants_wake()) arm();
  }

  // Sends are written once per turn of the loop (kj::evalLast: after every event already
  // queued), so that the answers a turn produces leave in one write and wake the peer
  // once, not once per message.
  void pump_at_end_of_turn() {
    if (pump_scheduled_) return;
    pump_scheduled_ = true;
    tasks_.add(kj::evalLast([this]() {
      pump_scheduled_ = false;
      pump();
    }));
  }

  void arm() {
    if (armed_) return;
    armed_ = true;
    tasks_.add(observer_.whenBecomesReadable().then([this]() {
      armed_ = false;
      pump();
    }));
  }

  bool wants_wake() {
    for (auto& receiver : receivers_) {
      if (receiver.fulfiller->isWaiting()) return true;
    }
    if (send_error_ != nullptr) return false;
    return !outgoing_.empty() || channel_.unsent_bytes() > 0;
  }

  // --- Receiving ---------------------------------------------------------------------

  // Grants waiting receives a message each (or the final error), reading the channel
  // until it is empty or nobody waits. Stops reading with messages left in the channel
  // when nobody waits: receive() reads them first.
  void pump_receives() {
    for (;;) {
      grant_from_inbox();
      if (receivers_.empty()) return;
      if (inbox_->error != nullptr) {
        grant_front();
        continue;
      }
      try {
        std::optional<ReceivedMessage> message = channel_.try_receive();
        if (message) {
          inbox_->messages.push_back(std::move(*message));
        } else if (channel_.at_end()) {
          inbox_->error = disconnected("capnsplice: peer closed the channel (end of stream)");
        } else {
          return;  // empty: the watch descriptor tells when more comes
        }
      } catch (const Error& error) {
        inbox_->error = to_kj(error);
      }
    }
  }

  // Gives each message received and not yet promised to anyone to a waiting receive.
  void grant_from_inbox() {
    while (!receivers_.empty() && inbox_->messages.size() > inbox_->granted) grant_front();
    while (!receivers_.empty() && !receivers_.front().fulfiller->isWaiting()) {
      receivers_.pop_front();  // dropped before its turn
    }
  }

  // Grants the first receive still waiting, if any.
  void grant_front() {
    while (!receivers_.empty()) {
      Receiver receiver = kj::mv(receivers_.front());
      receivers_.pop_front();
      if (!receiver.fulfiller->isWaiting()) continue;
      receiver.grant->granted = true;
      ++inbox_->granted;
      receiver.fulfiller->fulfill();
      return;
    }
  }

  // --- Sending -----------------------------------------------------------------------

  // Writes what the pipe takes, settles what is written, and hands the channel the
  // messages it has room for, again until nothing changes: what it took in one round is
  // written by the next round's try_flush, together.
  void pump_sends() {
    do {
      if (send_error_ != nullptr) return;
      try {
        if (channel_.unsent_bytes() > 0) channel_.try_flush();
      } catch (const Error& error) {
        fail_sends(to_kj(error));
        return;
      }
      settle_taken();  // can let a close_sending() waiting behind the last sends go
    } while (take_messages());
  }

  // Hands the adapter's waiting messages to the channel's outgoing batch (try_queue: not
  // written yet), in order, while it has room, and closes when a close_sending() comes
  // next with everything before it written. Returns whether anything changed.
  bool take_messages() {
    bool changed = false;
    std::size_t next = 0;
    while (next < outgoing_.size() && outgoing_[next].taken) ++next;
    while (next < outgoing_.size() && send_error_ == nullptr) {
      Outgoing& entry = outgoing_[next];
      if (!entry.fulfiller->isWaiting()) {  // dropped before the channel took it: cancelled
        outgoing_.erase(outgoing_.begin() + static_cast<std::ptrdiff_t>(next));
        changed = true;
        continue;
      }
      if (entry.kind == Outgoing::Kind::close) {
        // After everything before it is written (settle_taken() pops those).
        if (next > 0 || channel_.unsent_bytes() > 0) return changed;
        changed = true;
        try {
          channel_.close_sending(Deadline::immediate());
        } catch (const Error& error) {
          if (error.code() == ErrorCode::Timeout) return false;  // again at the next wake-up
          entry.fulfiller->reject(to_kj(error));
          outgoing_.pop_front();
          if (!message_error(error)) fail_sends(to_kj(error));
          continue;
        }
        entry.fulfiller->fulfill();
        outgoing_.pop_front();
        continue;
      }
      if (next == 0) {
        // Nothing of ours in flight: count from here. With bytes unsent that are not
        // ours (queued before, or sent directly), the count is unknown until they go.
        exact_ = channel_.unsent_bytes() == 0;
        if (exact_) taken_ = channel_.sender().written_messages();
      }
      bool queued = false;
      try {
        queued = channel_.try_queue(std::move(entry.message));
      } catch (const Error& error) {
        if (!message_error(error)) {
          fail_sends(to_kj(error));
          return false;
        }
        entry.fulfiller->reject(to_kj(error));
        outgoing_.erase(outgoing_.begin() + static_cast<std::ptrdiff_t>(next));
        changed = true;
        continue;
      }
      if (!queued) return changed;  // the queue is full: kept whole; retried with room
      entry.taken = true;
      entry.ticket = ++taken_;
      entry.exact = exact_;
      ++next;
      changed = true;
    }
    return changed;
  }

  // Resolves the sends written whole, in order.
  void settle_taken() {
    const std::uint64_t written = channel_.sender().written_messages();
    const std::size_t unsent = channel_.unsent_bytes();
    while (!outgoing_.empty() && outgoing_.front().taken) {
      Outgoing& entry = outgoing_.front();
      const bool done = entry.exact ? written >= entry.ticket : unsent == 0;
      if (done) {
        entry.fulfiller->fulfill();
      } else if (unsent == 0) {
        // Nothing left to write, yet not written: the channel dropped its queue.
        entry.fulfiller->reject(
            disconnected("capnsplice: the channel dropped the message (sending ended)"));
      } else {
        return;
      }
      outgoing_.pop_front();
    }
  }

  void fail_sends(kj::Exception error) {
    for (auto& entry : outgoing_) entry.fulfiller->reject(kj::cp(error));
    outgoing_.clear();
    send_error_ = kj::mv(error);
  }

  void fail_everything(kj::Exception error) {
    if (send_error_ == nullptr) fail_sends(kj::cp(error));
    for (auto& receiver : receivers_) receiver.fulfiller->reject(kj::cp(error));
    receivers_.clear();
    if (inbox_->error == nullptr) inbox_->error = kj::mv(error);
  }

  // Declaration order is destruction order, reversed: see ~KjChannel().
  Channel channel_;
  UniqueFd watch_fd_;                        // our dup of channel_.watch_fd()
  kj::UnixEventPort::FdObserver observer_;   // on watch_fd_: destroyed before it closes
  std::shared_ptr<Inbox> inbox_ = std::make_shared<Inbox>(Inbox{this, {}, 0, nullptr});
  std::deque<Receiver> receivers_;           // receive() promises not granted yet
  std::deque<Outgoing> outgoing_;            // sends not resolved: taken first, then waiting
  std::uint64_t taken_ = 0;                  // messages taken, while exact_
  bool exact_ = true;
  kj::Maybe<kj::Exception> send_error_;      // final: the sending side failed
  bool armed_ = false;                       // a whenBecomesReadable() is pending
  bool pump_scheduled_ = false;              // a pump at the end of this turn is queued
  TaskErrors task_errors_;
  kj::TaskSet tasks_;                        // the watch; destroyed first
};

}  // namespace capnsplice
