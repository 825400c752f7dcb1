// capnsplice/asio.h — a Channel on a Boost.Asio event loop (header-only; CMake target
// capnsplice::asio).
//
// AsioChannel owns a Channel and gives it Asio's asynchronous operations, with completion
// tokens: callbacks, `use_awaitable` coroutines and `use_future` all work.
//
//   boost::asio::io_context io;
//   capnsplice::AsioChannel plugin(io.get_executor(), std::move(child.channel));
//   boost::asio::co_spawn(io, [&]() -> boost::asio::awaitable<void> {
//     for (;;) {                                  // ends with PeerClosed when it exits
//       capnsplice::ReceivedMessage request =
//           co_await plugin.async_receive(boost::asio::use_awaitable);
//       capnsplice::OutgoingMessage reply = plugin.new_message();   // never waits
//       fill(reply.init_root<Answer>(), request.root<Task>());
//       co_await plugin.async_send(std::move(reply), boost::asio::use_awaitable);
//     }
//   }, boost::asio::detached);
//   io.run();
//
// How it works: the adapter watches a dup() of Channel::watch_fd() with
// stream_descriptor::async_wait, only while something waits (a receive, a send, or bytes
// still unsent). Each wake-up drains the channel: try_receive() into every waiting
// receive, try_flush() for the sends. A send is taken into the channel's outgoing batch
// when it starts (try_queue()) and written once per turn of the loop: the write is
// posted behind the completion handlers the adapter has posted, so a handler that
// answers each message it was given adds its answer to the same write, and the peer
// wakes once for all of them. async_receive_batch() gives a handler every message that
// is there in one completion, where async_receive() takes a turn of the loop for each:
// the form for a host that serves many messages. Asio's epoll reactor is
// edge-triggered, and a message already buffered in the receiver does not make the
// descriptor readable, so nothing is left for a wake-up that would never come: every
// operation first tries at once, and every wake-up takes all it can. The loop never
// blocks: nothing here waits in a system call. The adapter reads only for a waiting
// receive, so a peer that sends faster than the application receives is held back by
// the pipe as usual. When the descriptor keeps reporting something the adapter has no
// use for (bytes or end of stream while only sends wait), it polls on a timer instead
// (1 ms, doubling up to 16 ms) until something changes.
//
// Cancellation: cancel() aborts every pending operation. With Asio 1.19 (Boost 1.77) or
// later, an operation also obeys its handler's cancellation slot (bind_cancellation_slot,
// awaitable operators): terminal or partial cancellation aborts any operation; total
// cancellation only one with no side effect yet (a receive, or a send whose message the
// channel has not taken). Boost 1.74 (Debian 12) has no cancellation slots: cancel() only.
//
// Threads: the Channel and the adapter's state are used only on the adapter's executor
// (initiations and cancel() are dispatched to it), so async_receive, async_send and
// cancel() may be called from any thread. When several threads run the io_context, give
// the adapter a strand (boost::asio::make_strand(io)). Handlers run on their associated
// executor (by default the adapter's). channel() is for use on the adapter's executor.
//
// Lifetime: destroying the AsioChannel completes what is pending with operation_aborted
// and closes the Channel (what the pipe does not take at once is cut, as for a destroyed
// Channel). Destroying the io_context first is fine too: per Asio's rules the pending
// handlers are then destroyed without being called, and the AsioChannel may be
// destroyed afterwards; until then its channel() still works, without a loop (start no
// more asynchronous operations on it).
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <algorithm>
#include <exception>
#include <memory>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "capnsplice/asio/detail.h"
#include "capnsplice/channel.h"

namespace capnsplice {

/// The error an aborted operation completes with: a std::system_error whose code is
/// ECANCELED, that is boost::asio::error::operation_aborted (== std::errc::operation_canceled).
inline std::exception_ptr make_operation_aborted() { return asio_detail::aborted_error(); }

/// True when `error` is the operation_aborted error of a cancelled operation.
inline bool is_operation_aborted(const std::exception_ptr& error) noexcept {
  if (!error) return false;
  try {
    std::rethrow_exception(error);
  } catch (const std::system_error& e) {
    return e.code() == std::errc::operation_canceled;
  } catch (...) {
  }
  return false;
}

/// A Channel driven by a Boost.Asio executor. Move-only.
class AsioChannel {
 public:
  using executor_type = boost::asio::any_io_executor;

  /// Takes `channel` and watches it on `executor` (an io_context's executor, or a strand
  /// of it when several threads run the context). Throws SystemError when the channel's
  /// watch descriptor cannot be made or duplicated.
  AsioChannel(const executor_type& executor, Channel&& channel)
      : state_(asio_detail::State::create(executor, std::move(channel))) {}

  /// Same, on `context.get_executor()` (an io_context).
  template <typename ExecutionContext>
    requires std::is_convertible_v<ExecutionContext&, boost::asio::execution_context&>
  AsioChannel(ExecutionContext& context, Channel&& channel)
      : AsioChannel(executor_type(context.get_executor()), std::move(channel)) {}

  AsioChannel(AsioChannel&&) noexcept = default;
  AsioChannel& operator=(AsioChannel&& other) noexcept {
    if (this != &other) {
      if (state_) asio_detail::State::close(std::move(state_));
      state_ = std::move(other.state_);
    }
    return *this;
  }

  /// Completes every pending operation with operation_aborted (their handlers run on
  /// their executors later, as always) and closes the Channel: on the adapter's executor,
  /// at once when called there, else as soon as the executor runs it. Sends whose
  /// message was taken but not yet written are cut like a destroyed Channel's.
  ~AsioChannel() {
    if (state_) asio_detail::State::close(std::move(state_));
  }

  /// The adapter's executor: where the channel is used, and where handlers without an
  /// executor of their own run.
  executor_type get_executor() const noexcept { return state_->executor(); }

  /// The channel, for what the adapter does not wrap (at_end(), unsent_bytes(),
  /// close_sending(Deadline::immediate()), stats). Use it on the adapter's executor only,
  /// or while no thread runs the loop. Do not send through it while async_sends wait, or
  /// while it holds unsent bytes when an async_send starts: an async_send counts the
  /// messages ahead of it to know when it is written, and would complete early.
  Channel& channel() { return state_->channel(); }

  /// A message to build and pass to async_send(): building never waits (where the pool
  /// or arena is full it takes fresh memory). May be called from any thread.
  OutgoingMessage new_message() { return channel().new_message(Deadline::immediate()); }

  /// Receives the next message. Completion signature
  /// `void(std::exception_ptr, ReceivedMessage)`: completes at once when a message is
  /// buffered, else when one arrives. Errors (the message is then empty): PeerClosed
  /// once the peer closed its end and every message before was received (and for every
  /// receive after that); TruncatedMessage when it died in the middle of one; the other
  /// codes of Channel::receive(); operation_aborted when cancelled (no message is lost:
  /// the next receive gets it). Several receives may wait; they complete in order.
  template <typename CompletionToken>
  auto async_receive(CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken,
                                       void(std::exception_ptr, ReceivedMessage)>(
        [state = state_](auto&& handler) {
          asio_detail::initiate<std::exception_ptr, ReceivedMessage>(
              state, std::forward<decltype(handler)>(handler),
              [](asio_detail::State& s, std::unique_ptr<asio_detail::ReceiveOp> op) {
                s.start_receive({.one = std::move(op), .batch = nullptr, .max_messages = 1});
              });
        },
        token);  // an lvalue, as Asio's own operations pass it
  }

  /// Receives every message there is now, at least one (waiting for it like
  /// async_receive) and at most `max_messages` (0 counts as 1). Completion signature
  /// `void(std::exception_ptr, std::vector<ReceivedMessage>)`. The form for a loop that
  /// serves many messages: one completion (one turn of the loop) for all that arrived
  /// together, where async_receive takes a turn for each. The errors of async_receive,
  /// with an empty vector; an error that comes after some messages waits for the next
  /// receive, so no message is lost with it.
  template <typename CompletionToken>
  auto async_receive_batch(std::size_t max_messages, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken,
                                       void(std::exception_ptr, std::vector<ReceivedMessage>)>(
        [state = state_, max = std::max<std::size_t>(max_messages, 1)](auto&& handler) {
          asio_detail::initiate<std::exception_ptr, std::vector<ReceivedMessage>>(
              state, std::forward<decltype(handler)>(handler),
              [max](asio_detail::State& s, std::unique_ptr<asio_detail::BatchReceiveOp> op) {
                s.start_receive({.one = nullptr, .batch = std::move(op), .max_messages = max});
              });
        },
        token);
  }

  /// Sends `message` (from new_message()). Completion signature
  /// `void(std::exception_ptr)`: completes once the message is written whole into the
  /// pipe (the loop never blocks meanwhile: the channel takes it into its outgoing queue,
  /// or, when that queue is full, the adapter keeps it and offers it again as the reader
  /// makes room). Several sends may wait; they are written and complete in order.
  /// Errors: those of Sender::try_send() (PeerClosed, MessageTooLarge, InvalidArgument
  /// after close_sending(), ...), and operation_aborted when cancelled. A cancelled send
  /// whose message the channel had already taken still goes out whole (the adapter keeps
  /// flushing it); one not yet taken is dropped with its message.
  template <typename CompletionToken>
  auto async_send(OutgoingMessage&& message, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr)>(
        [state = state_](auto&& handler, OutgoingMessage taken) {
          asio_detail::initiate<std::exception_ptr>(
              state, std::forward<decltype(handler)>(handler),
              [message = std::move(taken)](asio_detail::State& s,
                                             std::unique_ptr<asio_detail::SendOp> op) mutable {
                s.start_send(std::move(op), std::move(message));
              });
        },
        token, std::move(message));
  }

  /// Completes every pending receive and send with operation_aborted (see async_send for
  /// what happens to their messages). Operations started later work as usual. Any thread.
  void cancel() {
    boost::asio::dispatch(state_->executor(),
                          [state = state_] { state->cancel_all(); });
  }

 private:
  std::shared_ptr<asio_detail::State> state_;
};

}  // namespace capnsplice
