// bench/hosts/asio_step_timing.h — times every handler an io_context runs.
//
// Asio's custom handler tracking (BOOST_ASIO_CUSTOM_HANDLER_TRACKING names this header)
// lets the host workload see each step of the loop, the adapter's own handlers
// included: BOOST_ASIO_HANDLER_INVOCATION_BEGIN declares a HandlerStep, which reports the
// outermost invocation's duration to the current HostSession when it goes out of scope.
// Only hosts/capnsplice_asio.cc includes Asio, so only its loop is timed this way.
#pragma once

#include <chrono>

namespace bench {

class HostSession;
/// Where handler steps are reported; null: nowhere.
inline HostSession* asio_step_session = nullptr;
void report_asio_step(HostSession& session, std::chrono::steady_clock::time_point began);

class HandlerStep {
 public:
  HandlerStep() noexcept : outermost_(depth_++ == 0) {
    if (outermost_) began_ = std::chrono::steady_clock::now();
  }
  ~HandlerStep() {
    --depth_;
    if (outermost_ && asio_step_session != nullptr) report_asio_step(*asio_step_session, began_);
  }
  HandlerStep(const HandlerStep&) = delete;
  HandlerStep& operator=(const HandlerStep&) = delete;

 private:
  inline static thread_local int depth_ = 0;  // handlers run inline (dispatch) nest
  bool outermost_;
  std::chrono::steady_clock::time_point began_{};
};

}  // namespace bench

#define BOOST_ASIO_INHERIT_TRACKED_HANDLER
#define BOOST_ASIO_ALSO_INHERIT_TRACKED_HANDLER
#define BOOST_ASIO_HANDLER_TRACKING_INIT (void)0
#define BOOST_ASIO_HANDLER_LOCATION(loc) (void)0
#define BOOST_ASIO_HANDLER_CREATION(args) (void)0
#define BOOST_ASIO_HANDLER_COMPLETION(args) (void)0
#define BOOST_ASIO_HANDLER_INVOCATION_BEGIN(args) ::bench::HandlerStep bench_handler_step_
#define BOOST_ASIO_HANDLER_INVOCATION_END (void)0
#define BOOST_ASIO_HANDLER_OPERATION(args) (void)0
#define BOOST_ASIO_HANDLER_REACTOR_REGISTRATION(args) (void)0
#define BOOST_ASIO_HANDLER_REACTOR_DEREGISTRATION(args) (void)0
#define BOOST_ASIO_HANDLER_REACTOR_READ_EVENT 0
#define BOOST_ASIO_HANDLER_REACTOR_WRITE_EVENT 0
#define BOOST_ASIO_HANDLER_REACTOR_ERROR_EVENT 0
#define BOOST_ASIO_HANDLER_REACTOR_EVENTS(args) (void)0
#define BOOST_ASIO_HANDLER_REACTOR_OPERATION(args) (void)0
