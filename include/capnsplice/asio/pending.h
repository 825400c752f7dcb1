// capnsplice/asio/pending.h — one asynchronous operation of AsioChannel waiting to
// complete: its handler, the work it keeps counted on the handler's executor, its
// cancellation slot, and the count of completions posted and not yet run. Not an API:
// include capnsplice/asio.h.
#pragma once

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/version.hpp>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <system_error>
#include <utility>
#include <vector>

#include "capnsplice/received_message.h"

// Per-operation cancellation (cancellation slots) came with Asio 1.19 (Boost 1.77).
#if BOOST_ASIO_VERSION >= 101900
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/cancellation_type.hpp>
#define CAPNSPLICE_ASIO_HAS_CANCELLATION_SLOTS 1
#else
#define CAPNSPLICE_ASIO_HAS_CANCELLATION_SLOTS 0
#endif

namespace capnsplice {
namespace asio_detail {

/// The error an aborted operation completes with (see make_operation_aborted()).
inline std::exception_ptr aborted_error() {
  return std::make_exception_ptr(std::system_error(boost::asio::error::operation_aborted,
                                                   std::generic_category(),
                                                   "capnsplice::AsioChannel: operation aborted"));
}

using Executor = boost::asio::any_io_executor;

/// Completion handlers posted and not yet run (or destroyed unrun). The adapter writes
/// its sends after them, so that what they send goes out together (State::flush_turn).
using HandlersInFlight = std::shared_ptr<std::atomic<std::size_t>>;

/// One waiting operation: a completion handler, with work counted on its executor.
template <typename... Args>
class Pending {
 public:
  explicit Pending(std::uint64_t op_id) : id(op_id) {}
  virtual ~Pending() = default;
  /// Posts the handler with `args` to its associated executor. Called at most once.
  virtual void complete(Args... args) = 0;
  const std::uint64_t id;
};

template <typename Handler, typename... Args>
class PendingHandler final : public Pending<Args...> {
 public:
  PendingHandler(std::uint64_t id, Handler handler, const Executor& io_executor,
                 HandlersInFlight in_flight)
      : Pending<Args...>(id),
        work_(boost::asio::get_associated_executor(handler, io_executor)),
        handler_(std::move(handler)),
        in_flight_(std::move(in_flight)) {}
  ~PendingHandler() override { detach_cancellation(); }

  void complete(Args... args) override {
    detach_cancellation();
    in_flight_->fetch_add(1, std::memory_order_relaxed);
    boost::asio::post(work_.get_executor(),
                      [handler = std::move(handler_), count = InFlightCount(in_flight_),
                       ... args = std::move(args)]() mutable {
                        std::move(handler)(std::move(args)...);
                      });
    work_.reset();
  }

#if CAPNSPLICE_ASIO_HAS_CANCELLATION_SLOTS
  /// Installs `cancel` in the handler's cancellation slot, if it has one.
  template <typename CancelHandler>
  void attach_cancellation(CancelHandler cancel) {
    slot_ = boost::asio::get_associated_cancellation_slot(handler_);
    if (slot_.is_connected()) slot_.template emplace<CancelHandler>(std::move(cancel));
  }
#endif

 private:
  void detach_cancellation() {
#if CAPNSPLICE_ASIO_HAS_CANCELLATION_SLOTS
    if (slot_.is_connected()) slot_.clear();
#endif
  }

  /// Counts one posted handler until it has run or was destroyed unrun.
  class InFlightCount {
   public:
    explicit InFlightCount(HandlersInFlight count) : count_(std::move(count)) {}
    InFlightCount(InFlightCount&& other) noexcept = default;
    InFlightCount(const InFlightCount&) = delete;
    InFlightCount& operator=(const InFlightCount&) = delete;
    InFlightCount& operator=(InFlightCount&&) = delete;
    ~InFlightCount() {
      if (count_) count_->fetch_sub(1, std::memory_order_relaxed);
    }

   private:
    HandlersInFlight count_;
  };

  boost::asio::executor_work_guard<boost::asio::associated_executor_t<Handler, Executor>> work_;
  Handler handler_;
  HandlersInFlight in_flight_;
#if CAPNSPLICE_ASIO_HAS_CANCELLATION_SLOTS
  boost::asio::associated_cancellation_slot_t<Handler> slot_;
#endif
};

using ReceiveOp = Pending<std::exception_ptr, ReceivedMessage>;
using BatchReceiveOp = Pending<std::exception_ptr, std::vector<ReceivedMessage>>;
using SendOp = Pending<std::exception_ptr>;

/// A waiting receive: of one message (async_receive) or of a batch (async_receive_batch).
struct Receive {
  std::unique_ptr<ReceiveOp> one;
  std::unique_ptr<BatchReceiveOp> batch;
  std::size_t max_messages = 1;

  std::uint64_t id() const noexcept { return one ? one->id : batch->id; }
  void fail(const std::exception_ptr& error) {
    if (one) return one->complete(error, ReceivedMessage());
    batch->complete(error, {});
  }
};
}  // namespace asio_detail
}  // namespace capnsplice
