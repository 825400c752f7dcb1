#include "measurement.h"

#include <kj/exception.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "child_process.h"
#include "start_barrier.h"

namespace bench {

namespace {

/// What a child hands back; lives in memory shared between parent and children.
struct SideReport {
  std::uint64_t messages;
  std::int64_t last_message_ns;  // steady clock: CLOCK_MONOTONIC is the same in every process
  double rtt_p50_us, rtt_p99_us, rtt_p999_us;
  double one_way_p50_us, one_way_p99_us;
  long peak_rss_kib;
  std::int64_t system_calls;  // from the release to the end of the run; -1: not counted
  char paths[160];
  char error[480];
};

struct SharedReports {
  SideReport side[2];
};

/// A zeroed SharedReports mapped MAP_SHARED, so children's writes reach the parent.
class SharedReportsMapping {
 public:
  SharedReportsMapping() {
    void* memory = ::mmap(nullptr, sizeof(SharedReports), PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) throw std::runtime_error("mmap of the shared reports failed");
    reports_ = static_cast<SharedReports*>(memory);
  }
  ~SharedReportsMapping() { ::munmap(reports_, sizeof(SharedReports)); }
  SharedReportsMapping(const SharedReportsMapping&) = delete;
  SharedReportsMapping& operator=(const SharedReportsMapping&) = delete;

  SideReport& operator[](Side side) { return reports_->side[side == Side::a ? 0 : 1]; }

 private:
  SharedReports* reports_;
};

long peak_rss_kib() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

void record_error(SideReport& report, const std::string& text) {
  std::snprintf(report.error, sizeof report.error, "%s", text.c_str());
}

void record_outcome(SideReport& report, const WorkloadOutcome& outcome, const std::string& paths,
                    std::int64_t system_calls) {
  std::snprintf(report.paths, sizeof report.paths, "%s", paths.c_str());
  report.system_calls = system_calls;
  report.messages = outcome.messages;
  report.last_message_ns = outcome.last_message_at.time_since_epoch().count();
  report.rtt_p50_us = outcome.rtt_p50_us;
  report.rtt_p99_us = outcome.rtt_p99_us;
  report.rtt_p999_us = outcome.rtt_p999_us;
  report.one_way_p50_us = outcome.one_way_p50_us;
  report.one_way_p99_us = outcome.one_way_p99_us;
  report.peak_rss_kib = peak_rss_kib();
}

/// The body of a child: runs `work`, turning every kind of exception into a report.
template <typename Work>
int report_to_parent(SideReport& report, Work&& work) {
  try {
    work();
    return 0;
  } catch (const std::exception& error) {
    record_error(report, error.what());
  } catch (const kj::Exception& error) {
    record_error(report, error.getDescription().cStr());
  }
  return 1;
}

const char* role_of(Side side, Workload workload) {
  if (workload != Workload::round_trip) return side == Side::a ? "sender" : "receiver";
  return side == Side::a ? "pinger" : "answerer";
}

/// Why a measurement failed: each side's own error, else how it ended.
std::string describe_failure(SharedReportsMapping& reports, std::vector<ChildProcess>& children,
                             const MeasurementSpec& spec, const std::string& what) {
  std::string text = what;
  for (std::size_t i = 0; i < children.size(); ++i) {
    const Side side = i == 0 ? Side::a : Side::b;
    const SideReport& report = reports[side];
    text += std::string("; ") + role_of(side, spec.plan.workload) + ": ";
    text += report.error[0] != '\0' ? report.error : children[i].describe_exit();
  }
  return text;
}

/// Forks the children, runs the barrier and waits for the end; "" on success.
std::string supervise(const MeasurementSpec& spec, Link& link, StartBarrier& barrier,
                      SharedReportsMapping& reports, std::vector<ChildProcess>& children,
                      Clock::time_point& started) {
  const Transport& transport = *spec.transport;
  if (transport.in_one_process) {
    children.push_back(ChildProcess::spawn([&] {
      barrier.enter_child();
      return report_to_parent(reports[Side::a], [&] {
        auto sender = link.open(Side::a);
        auto receiver = link.open(Side::b);
        const WorkloadOutcome outcome = run_in_one_thread(*sender, *receiver, spec.plan, barrier);
        // One process does both sides: its system calls belong to neither alone.
        record_outcome(reports[Side::a], outcome, sender->paths_taken(), -1);
        record_outcome(reports[Side::b], outcome, receiver->paths_taken(), -1);
      });
    }));
  } else {
    for (Side side : {Side::a, Side::b}) {
      children.push_back(ChildProcess::spawn([&, side] {
        barrier.enter_child();
        return report_to_parent(reports[side], [&] {
          auto endpoint = link.open(side);
          const WorkloadOutcome outcome = run_side(side, *endpoint, spec.plan, barrier);
          const std::int64_t system_calls = barrier.system_calls_since_release();
          const std::string paths = endpoint->paths_taken();
          endpoint.reset();  // tear down inside the measurement: errors there count too
          record_outcome(reports[side], outcome, paths, system_calls);
        });
      }));
    }
  }
  link.release_in_parent();
  barrier.enter_parent();

  const Clock::time_point deadline = Clock::now() + spec.timeout;
  if (!barrier.wait_for_arrivals(children, deadline)) {
    return Clock::now() >= deadline ? "timed out during warm-up" : "a side failed during warm-up";
  }
  started = barrier.release(children.size());
  for (;;) {
    const bool all_done = std::none_of(children.begin(), children.end(),
                                       [](const ChildProcess& child) { return child.running(); });
    if (all_done) break;
    const ChildEvent event = wait_for_event(children, -1, deadline);
    if (event == ChildEvent::timed_out) {
      return "timed out after " + std::to_string(spec.timeout.count()) + " s";
    }
    for (const ChildProcess& child : children) {
      if (!child.running() && !child.succeeded()) return "a side failed";
    }
  }
  return "";
}

MeasurementResult summarise(const MeasurementSpec& spec, SharedReportsMapping& reports,
                            Clock::time_point started) {
  MeasurementResult result;
  const SideReport& a = reports[Side::a];
  const SideReport& b = reports[Side::b];
  result.peak_rss_a_mib = a.peak_rss_kib / 1024.0;
  result.peak_rss_b_mib = b.peak_rss_kib / 1024.0;
  result.paths_a = a.paths;
  if (spec.plan.workload == Workload::round_trip) {
    result.messages = a.messages;
    result.rtt_p50_us = a.rtt_p50_us;
    result.rtt_p99_us = a.rtt_p99_us;
    result.rtt_p999_us = a.rtt_p999_us;
  } else if (spec.plan.workload == Workload::large_message) {
    result.messages = a.messages;
    result.one_way_p50_us = a.one_way_p50_us;
    result.one_way_p99_us = a.one_way_p99_us;
  } else {
    result.messages = b.messages;
    result.seconds = (b.last_message_ns - started.time_since_epoch().count()) / 1e9;
    if (result.seconds > 0) {
      result.messages_per_s = static_cast<double>(b.messages) / result.seconds;
      result.throughput_gbps = result.messages_per_s * spec.plan.payload_bytes / 1e9;
    }
  }
  // Per message of the stream, or per round trip / large message.
  const auto per_message = [&](const SideReport& side) {
    return side.system_calls < 0 || result.messages == 0
               ? -1.0
               : static_cast<double>(side.system_calls) / static_cast<double>(result.messages);
  };
  result.system_calls_per_message_a = per_message(a);
  result.system_calls_per_message_b = per_message(b);
  result.ok = result.messages > 0;
  if (!result.ok) result.error = "no message was counted";
  return result;
}

}  // namespace

MeasurementResult run_measurement(const MeasurementSpec& spec) {
  SharedReportsMapping reports;
  StartBarrier barrier;
  // Declared after the link: on failure the children die before the link is cleaned up.
  std::unique_ptr<Link> link = spec.transport->make_link(
      LinkParams{.payload_bytes = spec.plan.payload_bytes, .unique_name = spec.unique_name});
  std::vector<ChildProcess> children;
  children.reserve(2);
  Clock::time_point started{};
  const std::string failure = supervise(spec, *link, barrier, reports, children, started);
  if (!failure.empty()) {
    for (ChildProcess& child : children) child.kill_and_reap();
    MeasurementResult result;
    result.error = describe_failure(reports, children, spec, failure);
    return result;
  }
  return summarise(spec, reports, started);
}

double idle_child_rss_mib() {
  SharedReportsMapping reports;
  ChildProcess child = ChildProcess::spawn([&] {
    reports[Side::a].peak_rss_kib = peak_rss_kib();
    return 0;
  });
  wait_for_event(std::span(&child, 1), -1, Clock::now() + std::chrono::seconds(5));
  child.kill_and_reap();  // no-op once it exited
  return reports[Side::a].peak_rss_kib / 1024.0;
}

}  // namespace bench
