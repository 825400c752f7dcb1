// bench/host_workload.h — the "host" workload: one thread serves N plugin processes.
//
// A plugin host (issue 12) runs one event loop for many plugins. Here one host thread
// keeps `window` requests in flight to each of N forked plugins, every request a Chunk
// with a payload of request_bytes; each plugin answers each request with a small Chunk
// (reply_bytes) as fast as it can. The host is written twice, as a user would write it:
//
//   capnsplice-asio         capnsplice channels on the Boost.Asio adapter (hosts/capnsplice_asio.cc)
//   capnp-socketpair-epoll  socketpairs, plain capnp, a hand-written epoll loop
//                           with buffered non-blocking I/O (hosts/socketpair_epoll.cc)
//
// Both hosts measure the same way (HostSession): after a warm-up they count replies for
// a fixed time, and a 1 ms periodic timer on the loop records how late each of its
// handler runs comes — the "loop stall": how long anything else ready on the loop (a
// reply, a new plugin, a timer) would have waited, work queued ahead of it and time the
// scheduler gave to other processes included. The longest single step of the loop (one
// Asio handler, the adapter's own included; one plugin's event served by the epoll
// loop) tells a loop that blocks from one that has much to do. Each measurement runs in a
// fresh host process (its peak RSS and open descriptors are its own); the plugins are
// its children.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "child_process.h"

namespace bench {

class Results;

struct HostPlan {
  std::size_t plugins = 1;
  std::size_t request_bytes = 512;  ///< payload of every request
  std::size_t reply_bytes = 64;     ///< payload of every reply
  std::size_t window = 8;           ///< requests in flight per plugin
  std::chrono::milliseconds warmup{500};
  std::chrono::milliseconds measure{2000};
};

/// What one host process measured, during the measured time only.
struct HostOutcome {
  std::uint64_t replies = 0;
  double seconds = 0;
  double host_cpu_seconds = 0;  ///< the host thread's user + system time
  double stall_p99_ms = 0, stall_max_ms = 0;
  double longest_step_ms = 0;         ///< the longest single step of the loop
  std::uint64_t steps_over_1ms = 0;   ///< steps that took longer than 1 ms
  double peak_rss_mib = 0;  ///< VmHWM of the host process at the end
  int open_fds = 0;  ///< descriptors open at the end (/proc/self/fd), less one pidfd per plugin
};

/// The measurement inside a host process, driven by the host's loop: its 1 ms timer
/// calls tick(), every reply count_reply().
class HostSession {
 public:
  static constexpr std::chrono::milliseconds kTickPeriod{1};

  /// Starts the warm-up clock.
  explicit HostSession(const HostPlan& plan);

  /// When the loop's timer should fire next.
  Clock::time_point next_tick() const noexcept { return next_tick_; }
  /// From the timer's handler: records how late it ran (while measuring), moves the
  /// phases on, and schedules the next tick one period from now. False once the
  /// measured time is over: the loop should stop.
  bool tick();
  void count_reply() noexcept { replies_ += measuring_ ? 1 : 0; }
  /// One step of the loop (a handler, an event served) that began at `began` just ended.
  void step(Clock::time_point began) noexcept {
    if (!measuring_) return;
    const Clock::duration took = Clock::now() - began;
    longest_step_ = std::max(longest_step_, took);
    steps_over_1ms_ += took > std::chrono::milliseconds(1) ? 1 : 0;
  }

  /// The figures, once tick() returned false. Reads RSS and descriptors now.
  HostOutcome outcome() const;

 private:
  Clock::time_point warmup_end_, next_tick_;
  Clock::time_point started_{}, ended_{};
  double cpu_at_start_ = 0, cpu_at_end_ = 0;
  bool measuring_ = false;
  std::uint64_t replies_ = 0;
  Clock::duration longest_step_{};
  std::uint64_t steps_over_1ms_ = 0;
  std::chrono::milliseconds measure_;
  std::size_t plugins_;
  std::vector<double> lateness_ms_;
};

/// One way to write the host.
struct HostImplementation {
  const char* name;
  const char* description;
  /// In a fresh host process: starts plan.plugins plugins (children of this process,
  /// killed when it ends), serves them until the session ends. Throws on any failure.
  HostOutcome (*run)(const HostPlan& plan);
};

HostOutcome run_capnsplice_asio_host(const HostPlan& plan);
HostOutcome run_socketpair_epoll_host(const HostPlan& plan);

/// The hosts in table order; the last one is the baseline of the ratios.
const std::vector<HostImplementation>& host_implementations();

/// The metric names of one plugin count: "host_replies_per_s_n16".
std::string host_metric(const char* figure, std::size_t plugins);
namespace host_figure {
inline constexpr const char* kRepliesPerSecond = "replies_per_s";
inline constexpr const char* kRequestGbps = "request_gbps";
inline constexpr const char* kHostCpu = "host_cpu_share";
inline constexpr const char* kHostCpuPerReply = "host_cpu_us_per_reply";
inline constexpr const char* kStallP99 = "stall_p99_ms";
inline constexpr const char* kStallMax = "stall_max_ms";
inline constexpr const char* kLongestStep = "longest_step_ms";
inline constexpr const char* kStepsOver1ms = "steps_over_1ms";
inline constexpr const char* kPeakRss = "peak_rss_mib";
inline constexpr const char* kOpenFds = "open_fds";
}  // namespace host_figure

/// Runs every host for every plugin count and request size (each measurement in a fresh
/// host process, killed after `timeout`), with a progress line, into `results` (transport
/// = the host's name, message_bytes = the request size, metrics host_metric()).
void run_host_workload(const std::vector<std::size_t>& plugin_counts,
                       const std::vector<std::size_t>& request_sizes, const HostPlan& base,
                       std::chrono::seconds timeout, Results& results);

}  // namespace bench
