// capnsplice/asio/detail.h — the machinery behind AsioChannel (capnsplice/asio.h): the
// state the pending operations (asio/pending.h) share, and the service that outlives an
// io_context's destruction. Not an API: include capnsplice/asio.h.
#pragma once

#include <fcntl.h>

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/version.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "capnsplice/asio/pending.h"
#include "capnsplice/channel.h"
#include "capnsplice/error.h"
#include "capnsplice/unique_fd.h"

namespace capnsplice {
namespace asio_detail {

class State;

/// Knows every adapter of an execution context, so that destroying the context first
/// closes their Asio objects while the context's services still exist.
class Registry final : public boost::asio::execution_context::service {
 public:
  inline static boost::asio::execution_context::id id;
  explicit Registry(boost::asio::execution_context& context) : service(context) {}
  void add(std::weak_ptr<State> state) {
    std::lock_guard lock(mutex_);
    std::erase_if(states_, [](const std::weak_ptr<State>& s) { return s.expired(); });
    states_.push_back(std::move(state));
  }

 private:
  void shutdown() override;
  std::mutex mutex_;
  std::vector<std::weak_ptr<State>> states_;
};

/// What an AsioChannel shares with its pending handlers. Everything but `mutex_`/`gone_`
/// is used on the adapter's executor only.
class State : public std::enable_shared_from_this<State> {
 public:
  State(Executor executor, Channel channel)
      : executor_(std::move(executor)), channel_(std::move(channel)) {
    UniqueFd watched(::fcntl(channel_->watch_fd(), F_DUPFD_CLOEXEC, 0));
    if (!watched) throw_system_error(context("watch"), "fcntl(F_DUPFD_CLOEXEC)");
    watcher_.emplace(executor_, watched.get());
    watched.release();  // the stream_descriptor owns and closes it now
    timer_.emplace(executor_);
    taken_ = channel_->sender().written_messages();
  }

  /// Made only through create(): the registry must know it.
  static std::shared_ptr<State> create(Executor executor, Channel channel) {
    auto state = std::make_shared<State>(executor, std::move(channel));
    // After the descriptor and timer services exist, so that ours shuts down first.
    boost::asio::use_service<Registry>(boost::asio::query(
        executor, boost::asio::execution::context_as_t<boost::asio::execution_context&>()))
        .add(state);
    return state;
  }

  const Executor& executor() const noexcept { return executor_; }
  const HandlersInFlight& handlers_in_flight() const noexcept { return in_flight_; }
  Channel& channel() { return *channel_; }
  std::uint64_t next_id() noexcept { return next_id_.fetch_add(1, std::memory_order_relaxed); }

  void start_receive(Receive receive) {
    if (!channel_) return receive.fail(aborted_error());
    receives_.push_back(std::move(receive));
    pump(false);
  }

  void start_send(std::unique_ptr<SendOp> op, OutgoingMessage message) {
    if (!channel_) return op->complete(aborted_error());
    sends_.push_back(Send{std::move(op), std::move(message), false, 0, nullptr});
    take_sends();
    schedule_flush();
  }

  /// Completes every pending operation with operation_aborted.
  void cancel_all() {
    auto receives = std::exchange(receives_, {});
    auto sends = std::exchange(sends_, {});
    for (auto& receive : receives) receive.fail(aborted_error());
    for (auto& send : sends) send.op->complete(aborted_error());
  }

  /// Completes operation `id` with operation_aborted, if it still waits. A send whose
  /// message was taken is cancelled only when `taken_too` (its message still goes out).
  void cancel_one(std::uint64_t id, bool taken_too) {
    for (auto it = receives_.begin(); it != receives_.end(); ++it) {
      if (it->id() != id) continue;
      Receive receive = std::move(*it);
      receives_.erase(it);
      return receive.fail(aborted_error());
    }
    for (auto it = sends_.begin(); it != sends_.end(); ++it) {
      if (it->op->id != id || (it->taken && !taken_too)) continue;
      auto op = std::move(it->op);
      sends_.erase(it);  // an untaken message goes with it
      return op->complete(aborted_error());
    }
  }

  /// The AsioChannel is being destroyed: abort what waits, close everything.
  void shutdown() {
    if (!channel_) return;
    watcher_.reset();  // closes our dup; a pending wait completes with operation_aborted
    timer_.reset();
    cancel_all();
    channel_.reset();
  }

  /// Called by ~AsioChannel from any thread.
  static void close(std::shared_ptr<State> state) {
    {
      std::lock_guard lock(state->mutex_);
      if (state->gone_) {  // no loop left: close here
        state->channel_.reset();
        return;
      }
    }
    const Executor executor = state->executor_;
    boost::asio::dispatch(executor, [state = std::move(state)] { state->shutdown(); });
  }

  /// The execution context is being destroyed (Registry::shutdown): Asio objects go now,
  /// pending handlers are destroyed without being called. The Channel stays.
  void context_gone() {
    {
      std::lock_guard lock(mutex_);
      gone_ = true;
    }
    watcher_.reset();
    timer_.reset();
    // Destroyed outside the lock: a handler may own (and so destroy) the AsioChannel.
    auto receives = std::exchange(receives_, {});
    auto sends = std::exchange(sends_, {});
  }

 private:
  /// A send waiting to be taken by the channel, or, once taken, to be written whole:
  /// then it completes when written_messages() reaches `ticket`.
  struct Send {
    std::unique_ptr<SendOp> op;
    OutgoingMessage message;
    bool taken = false;
    std::uint64_t ticket = 0;
    std::exception_ptr error;  // failed; completes in its turn
  };

  // A flush waits behind the handlers in flight at most this many times: with handlers
  // of another executor it would otherwise keep going round this one's queue.
  static constexpr int kMaxFlushDelays = 64;
  // Quiet wake-ups (nothing received, written or read) in a row before the adapter polls
  // on a timer instead: the descriptor can stay readable with nothing for us to do, e.g.
  // bytes or end of stream waiting for a receive while only a send waits.
  static constexpr int kQuietWakeupsBeforeBackoff = 2;
  static constexpr std::chrono::milliseconds kMaxBackoff{16};

  std::string context(const char* operation) const {
    return "channel '" + channel_->name() + "': " + operation;
  }

  /// Receives all the channel allows now; woken by the descriptor or the timer, also
  /// writes what the pipe takes. Then waits if something still waits.
  void pump(bool woken) {
    const std::uint64_t reads = channel_->receiver().stats().reads;
    bool progress = pump_receives();
    progress |= channel_->receiver().stats().reads != reads;  // part of a message came
    if (woken) progress |= write_sends();
    note_progress(progress, woken);
    wait();
  }

  void note_progress(bool progress, bool woken) {
    if (progress) {
      quiet_wakeups_ = 0;
      backoff_ = std::chrono::milliseconds(1);
    } else if (woken) {
      ++quiet_wakeups_;
    }
  }

  /// Sends are written once per turn of the loop, after the handlers already posted: a
  /// handler that answers each message it receives then adds its answer to the same
  /// batch, and the peer is woken once for all of them, not once per message.
  void schedule_flush() {
    if (flush_posted_) return;
    flush_posted_ = true;
    boost::asio::post(executor_, [self = shared_from_this()] { self->flush_turn(); });
  }

  void flush_turn() {
    flush_posted_ = false;
    if (!channel_) return;
    if (in_flight_->load(std::memory_order_relaxed) > 0 && flush_delays_ < kMaxFlushDelays) {
      ++flush_delays_;
      return schedule_flush();  // behind them: what they send joins this batch
    }
    flush_delays_ = 0;
    note_progress(write_sends(), false);
    wait();
  }

  bool pump_receives() {
    bool progress = false;
    while (!receives_.empty()) {
      // The pipe was empty at the last read and no wake-up came since: reading again
      // would only find it empty (a system call for nothing).
      if (drained_ && !channel_->has_buffered_message()) break;
      Receive& front = receives_.front();
      std::vector<ReceivedMessage> batch;
      std::optional<ReceivedMessage> message;
      std::exception_ptr error;
      do {
        message = try_receive(error);
        if (message && front.batch) batch.push_back(std::move(*message));
      } while (message && front.batch && batch.size() < front.max_messages &&
               !nothing_more_now());
      if (!batch.empty()) error = nullptr;  // the channel reports it again next time
      if (!message && batch.empty() && !error) break;  // nothing now: wait
      Receive receive = std::move(front);
      receives_.pop_front();
      nothing_more_now();  // the next receive then waits without an empty read
      if (receive.one) {
        receive.one->complete(error, message ? std::move(*message) : ReceivedMessage());
      } else {
        receive.batch->complete(error, std::move(batch));
      }
      progress = true;
    }
    return progress;
  }

  /// True when a read since the last wake-up left the pipe empty and no whole message is
  /// buffered: another try_receive() would only find the pipe empty. Remembered in
  /// drained_ until the next wake-up (whatever arrives after that read makes one).
  bool nothing_more_now() {
    if (!drained_ && channel_->receiver().stats().reads != reads_at_wake_ &&
        channel_->receiver().emptied_pipe() && !channel_->has_buffered_message()) {
      drained_ = true;
    }
    return drained_;
  }

  /// The next message if one is there; else nothing, with `error` set when none will
  /// come (the channel throws the same again for later receives).
  std::optional<ReceivedMessage> try_receive(std::exception_ptr& error) {
    try {
      std::optional<ReceivedMessage> message = channel_->try_receive();
      if (!message) drained_ = true;  // it read, after the last wake-up, and found nothing
      if (!message && channel_->at_end()) {
        error = std::make_exception_ptr(
            Error(ErrorCode::PeerClosed, context("receive"), "peer closed its end"));
      }
      return message;
    } catch (...) {
      error = std::current_exception();
      return std::nullopt;
    }
  }

  /// Offers the channel every send it has not taken yet, in order, without writing
  /// (but for the channel's own batch limit). True when it took or failed any.
  bool take_sends() {
    Sender& sender = channel_->sender();
    bool progress = false;
    for (Send& send : sends_) {
      if (send.taken || send.error) continue;
      // With nothing unsent, every message taken so far is written: resynchronise.
      if (sender.unsent_bytes() == 0) taken_ = sender.written_messages();
      try {
        if (!sender.try_queue(std::move(send.message))) break;  // still ours; retry later
        send.taken = true;
        send.ticket = ++taken_;
      } catch (...) {
        send.error = send_error_ = std::current_exception();
      }
      progress = true;
    }
    return progress;
  }

  /// Writes what the pipe takes (taking the sends it then has room for) and completes
  /// the sends that are done. True on any progress.
  bool write_sends() {
    Sender& sender = channel_->sender();
    const std::size_t unsent_before = sender.unsent_bytes();
    bool progress = false;
    for (;;) {  // until no send is left that the flushed queue now has room for
      try {
        if (sender.unsent_bytes() > 0) sender.try_flush();
      } catch (...) {
        send_error_ = std::current_exception();
      }
      if (!take_sends()) break;
      progress = true;
    }
    // Complete in order: written, failed, or taken but dropped by the channel (nothing is
    // unsent, yet it was not written: the reader went away).
    const std::uint64_t written = sender.written_messages();
    const bool nothing_unsent = sender.unsent_bytes() == 0;
    while (!sends_.empty()) {
      Send& front = sends_.front();
      std::exception_ptr result = front.error;
      if (!result && !(front.taken && (written >= front.ticket || nothing_unsent))) break;
      if (!result && written < front.ticket) {
        result = send_error_ ? send_error_
                             : std::make_exception_ptr(Error(
                                   ErrorCode::StreamCut, context("send"),
                                   "the channel dropped the message before it was written"));
      }
      auto op = std::move(front.op);
      sends_.pop_front();
      op->complete(result);
      progress = true;
    }
    return progress || sender.unsent_bytes() != unsent_before;
  }

  /// Waits for the descriptor (or, after quiet wake-ups, a short timer) when a receive
  /// or a send waits or bytes are unsent; a cancelled send's taken message still goes out.
  void wait() {
    if (waiting_ || flush_posted_ || !channel_) return;  // flush_turn() waits after
    if (receives_.empty() && sends_.empty() && channel_->unsent_bytes() == 0) return;
    waiting_ = true;
    auto self = shared_from_this();
    if (quiet_wakeups_ < kQuietWakeupsBeforeBackoff) {
      watcher_->async_wait(boost::asio::posix::stream_descriptor::wait_read,
                           [self](boost::system::error_code ec) { self->woken(ec, true); });
      return;
    }
    timer_->expires_after(backoff_);
    backoff_ = std::min(backoff_ * 2, kMaxBackoff);
    quiet_wakeups_ = kQuietWakeupsBeforeBackoff - 1;  // the descriptor again next time
    timer_->async_wait([self](boost::system::error_code ec) { self->woken(ec, false); });
  }

  void woken(boost::system::error_code ec, bool by_descriptor) {
    waiting_ = false;
    drained_ = false;
    reads_at_wake_ = channel_ ? channel_->receiver().stats().reads : 0;
    if (!channel_ || ec == boost::asio::error::operation_aborted) return;  // shut down
    if (ec) {  // the reactor failed on our descriptor: nothing more can be waited for
      const auto error = std::make_exception_ptr(std::system_error(ec.value(), std::generic_category(), context("wait")));
      for (auto& receive : std::exchange(receives_, {})) receive.fail(error);
      for (auto& send : std::exchange(sends_, {})) send.op->complete(error);
      return;
    }
    pump(by_descriptor);
  }

  const Executor executor_;
  std::optional<Channel> channel_;
  std::optional<boost::asio::posix::stream_descriptor> watcher_;  // dup of watch_fd()
  std::optional<boost::asio::steady_timer> timer_;                // backoff
  std::deque<Receive> receives_;
  std::deque<Send> sends_;
  std::uint64_t taken_ = 0;  // messages the sender took, as far as this adapter knows
  std::exception_ptr send_error_;
  bool waiting_ = false;
  bool flush_posted_ = false;
  bool drained_ = false;  // the pipe was empty at a read since the last wake-up
  std::uint64_t reads_at_wake_ = 0;  // the receiver's reads when the last wake-up came
  int flush_delays_ = 0;
  HandlersInFlight in_flight_ = std::make_shared<std::atomic<std::size_t>>(0);
  int quiet_wakeups_ = 0;
  std::chrono::milliseconds backoff_{1};
  std::atomic<std::uint64_t> next_id_{1};
  std::mutex mutex_;   // guards gone_
  bool gone_ = false;  // the execution context was destroyed
};

inline void Registry::shutdown() {
  std::vector<std::shared_ptr<State>> alive;
  {
    std::lock_guard lock(mutex_);
    for (auto& weak : states_) {
      if (auto state = weak.lock()) alive.push_back(std::move(state));
    }
    states_.clear();
  }
  for (auto& state : alive) state->context_gone();
}

#if CAPNSPLICE_ASIO_HAS_CANCELLATION_SLOTS
/// Installed in a handler's cancellation slot: cancels that operation on the adapter's
/// executor. Terminal and partial cancellation cancel a send whose message was taken (it
/// still goes out); total cancellation only one whose message was not taken.
struct CancelOne {
  std::weak_ptr<State> state;
  std::uint64_t id;
  void operator()(boost::asio::cancellation_type_t type) const {
    auto locked = state.lock();
    if (!locked) return;
    const bool taken_too = (type & (boost::asio::cancellation_type::terminal |
                                    boost::asio::cancellation_type::partial)) !=
                           boost::asio::cancellation_type::none;
    boost::asio::post(locked->executor(), [locked, id = id, taken_too] {
      locked->cancel_one(id, taken_too);
    });
  }
};
#endif

/// Wraps the handler with its work and cancellation, then starts the operation on the
/// adapter's executor with `start(state, op)`.
template <typename... Args, typename Handler, typename Start>
void initiate(const std::shared_ptr<State>& state, Handler&& handler, Start start) {
  using Op = PendingHandler<std::decay_t<Handler>, Args...>;
  auto op = std::make_unique<Op>(state->next_id(), std::forward<Handler>(handler),
                                 state->executor(), state->handlers_in_flight());
#if CAPNSPLICE_ASIO_HAS_CANCELLATION_SLOTS
  op->attach_cancellation(CancelOne{state, op->id});
#endif
  boost::asio::dispatch(state->executor(),
                        [state, op = std::move(op), start = std::move(start)]() mutable {
                          start(*state, std::move(op));
                        });
}

}  // namespace asio_detail
}  // namespace capnsplice
