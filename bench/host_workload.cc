#include "host_workload.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "fresh_process.h"
#include "process_figures.h"
#include "results.h"
#include "runner.h"
#include "units.h"

namespace bench {

namespace {

/// Runs one host in a fresh process; the outcome, or throws with the reason.
HostOutcome measure(const HostImplementation& host, const HostPlan& plan,
                    std::chrono::seconds timeout) {
  const HostOutcome outcome = run_in_fresh_process<HostOutcome>(
      [&] {
        raise_descriptor_limit();
        return host.run(plan);
      },
      timeout);
  if (outcome.replies == 0) throw std::runtime_error("no reply was counted");
  return outcome;
}

void record(const std::string& host, const HostPlan& plan, const HostOutcome& outcome,
            Results& results) {
  const auto add = [&](const char* figure, double value) {
    results.add(host, plan.request_bytes, host_metric(figure, plan.plugins), value);
  };
  const double replies_per_s = static_cast<double>(outcome.replies) / outcome.seconds;
  add(host_figure::kRepliesPerSecond, replies_per_s);
  add(host_figure::kRequestGbps, replies_per_s * static_cast<double>(plan.request_bytes) / 1e9);
  add(host_figure::kHostCpu, outcome.host_cpu_seconds / outcome.seconds);
  add(host_figure::kHostCpuPerReply,
      outcome.host_cpu_seconds * 1e6 / static_cast<double>(outcome.replies));
  add(host_figure::kStallP99, outcome.stall_p99_ms);
  add(host_figure::kStallMax, outcome.stall_max_ms);
  add(host_figure::kLongestStep, outcome.longest_step_ms);
  add(host_figure::kStepsOver1ms, static_cast<double>(outcome.steps_over_1ms));
  add(host_figure::kPeakRss, outcome.peak_rss_mib);
  add(host_figure::kOpenFds, outcome.open_fds);
}

}  // namespace

HostSession::HostSession(const HostPlan& plan)
    : warmup_end_(Clock::now() + plan.warmup),
      next_tick_(Clock::now() + kTickPeriod),
      measure_(plan.measure),
      plugins_(plan.plugins) {
  lateness_ms_.reserve(static_cast<std::size_t>(plan.measure / kTickPeriod) + 16);
}

bool HostSession::tick() {
  const Clock::time_point now = Clock::now();
  if (measuring_) {
    lateness_ms_.push_back(std::chrono::duration<double, std::milli>(now - next_tick_).count());
    if (now >= started_ + measure_) {
      ended_ = now;
      cpu_at_end_ = process_cpu_seconds();
      measuring_ = false;
      return false;
    }
  } else if (now >= warmup_end_) {
    measuring_ = true;
    started_ = now;
    cpu_at_start_ = process_cpu_seconds();
  }
  next_tick_ = now + kTickPeriod;
  return true;
}

HostOutcome HostSession::outcome() const {
  HostOutcome outcome;
  outcome.replies = replies_;
  outcome.seconds = std::chrono::duration<double>(ended_ - started_).count();
  outcome.host_cpu_seconds = cpu_at_end_ - cpu_at_start_;
  std::vector<double> sorted = lateness_ms_;
  std::sort(sorted.begin(), sorted.end());
  if (!sorted.empty()) {
    const auto p99 = static_cast<std::size_t>(std::ceil(0.99 * static_cast<double>(sorted.size())));
    outcome.stall_p99_ms = sorted[std::max<std::size_t>(p99, 1) - 1];
    outcome.stall_max_ms = sorted.back();
  }
  outcome.longest_step_ms = std::chrono::duration<double, std::milli>(longest_step_).count();
  outcome.steps_over_1ms = steps_over_1ms_;
  outcome.peak_rss_mib = status_mib("VmHWM:");
  outcome.open_fds = open_fds() - static_cast<int>(plugins_);  // not the harness's pidfds
  return outcome;
}

const std::vector<HostImplementation>& host_implementations() {
  static const std::vector<HostImplementation> hosts = {
      {"capnsplice-asio",
       "capnsplice channels (library defaults) on the Boost.Asio adapter: async_send of "
       "each request (the adapter writes one turn's requests together), one "
       "async_receive_batch at a time per plugin (every reply there is), callbacks",
       run_capnsplice_asio_host},
      {"capnp-socketpair-epoll",
       "one AF_UNIX socketpair per plugin, plain capnp (writeMessage into a per-plugin "
       "output buffer, FlatArrayMessageReader over a per-plugin input buffer), an "
       "edge-triggered epoll loop with non-blocking reads and writes",
       run_socketpair_epoll_host},
  };
  return hosts;
}

std::string host_metric(const char* figure, std::size_t plugins) {
  return "host_" + std::string(figure) + "_n" + std::to_string(plugins);
}

void run_host_workload(const std::vector<std::size_t>& plugin_counts,
                       const std::vector<std::size_t>& request_sizes, const HostPlan& base,
                       std::chrono::seconds timeout, Results& results) {
  std::vector<std::string> names;
  for (const HostImplementation& host : host_implementations()) names.emplace_back(host.name);
  run_count_sweep(
      {"host", "plugins", "requests"}, names, plugin_counts, request_sizes,
      [&](std::size_t way, std::size_t plugins, std::size_t size) {
        const HostImplementation& host = host_implementations()[way];
        HostPlan plan = base;
        plan.plugins = plugins;
        plan.request_bytes = size;
        record(host.name, plan, measure(host, plan, timeout), results);
      },
      results);
}

}  // namespace bench
