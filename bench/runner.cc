#include "runner.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <functional>

#include "measurement.h"
#include "units.h"

namespace bench {

namespace {

const char* workload_name(Workload workload) {
  switch (workload) {
    case Workload::throughput:
      return "throughput";
    case Workload::round_trip:
      return "round trip";
    case Workload::large_message:
      return "large-message latency";
  }
  return "";
}

double median_of(std::vector<MeasurementResult>& runs,
                 const std::function<double(const MeasurementResult&)>& field) {
  std::vector<double> values;
  values.reserve(runs.size());
  for (const MeasurementResult& run : runs) values.push_back(field(run));
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

/// Each side's system calls per message (median of the runs), where they were counted.
void record_system_calls(const std::string& name, std::size_t bytes,
                         std::vector<MeasurementResult>& runs, const char* side_a_metric,
                         const char* side_b_metric, Results& results) {
  const double a = median_of(runs, [](const MeasurementResult& r) {
    return r.system_calls_per_message_a;
  });
  const double b = median_of(runs, [](const MeasurementResult& r) {
    return r.system_calls_per_message_b;
  });
  if (a >= 0) results.add(name, bytes, side_a_metric, a);
  if (b >= 0) results.add(name, bytes, side_b_metric, b);
}

void record(const Job& job, std::vector<MeasurementResult>& runs, Results& results) {
  const std::string name = job.row_name();
  const std::size_t bytes = job.payload_bytes;
  if (job.workload == Workload::round_trip) {
    const MeasurementResult& run = runs.front();
    results.add(name, bytes, metric::kRttP50, run.rtt_p50_us);
    results.add(name, bytes, metric::kRttP99, run.rtt_p99_us);
    results.add(name, bytes, metric::kRttP999, run.rtt_p999_us);
    record_system_calls(name, bytes, runs, metric::kSyscallsPerRoundTripPinger,
                        metric::kSyscallsPerRoundTripAnswerer, results);
    return;
  }
  if (job.workload == Workload::large_message) {
    const bool evicted = job.evict_bytes != 0;
    results.add(name, bytes, evicted ? metric::kOneWayLatencyEvicted : metric::kOneWayLatency,
                runs.front().one_way_p50_us);
    results.add(name, bytes,
                evicted ? metric::kOneWayLatencyEvictedP99 : metric::kOneWayLatencyP99,
                runs.front().one_way_p99_us);
    return;
  }
  results.add(name, bytes, metric::kThroughputGbps,
              median_of(runs, [](const MeasurementResult& r) { return r.throughput_gbps; }));
  results.add(name, bytes, metric::kMessagesPerSecond,
              median_of(runs, [](const MeasurementResult& r) { return r.messages_per_s; }));
  double sender = 0, receiver = 0;
  for (const MeasurementResult& run : runs) {
    sender = std::max(sender, run.peak_rss_a_mib);
    receiver = std::max(receiver, run.peak_rss_b_mib);
  }
  if (!runs.front().paths_a.empty()) results.add_paths(name, bytes, runs.front().paths_a);
  record_system_calls(name, bytes, runs, metric::kSyscallsPerMessageSender,
                      metric::kSyscallsPerMessageReceiver, results);
  results.add(name, bytes, metric::kPeakRss, std::max(sender, receiver));
  results.add(name, bytes, metric::kPeakRssSender, sender);
  results.add(name, bytes, metric::kPeakRssReceiver, receiver);
}

}  // namespace

ProgressLine::ProgressLine(std::size_t steps) : steps_(steps), terminal_(::isatty(2) != 0) {}

ProgressLine::~ProgressLine() {
  if (terminal_) std::fprintf(stderr, "\r\033[K");
}

void ProgressLine::show(const std::string& what) {
  ++step_;
  std::fprintf(stderr, "%s[%zu/%zu] %s ...%s", terminal_ ? "\r\033[K" : "", step_, steps_,
               what.c_str(), terminal_ ? "" : "\n");
  std::fflush(stderr);
}

void ProgressLine::fail(const std::string& what, const std::string& reason,
                        std::size_t skipped_steps) {
  std::fprintf(stderr, "%s%s failed: %s\n", terminal_ ? "\r\033[K" : "", what.c_str(),
               reason.c_str());
  step_ += skipped_steps;
}

std::string Job::row_name() const {
  // Only round trips have a blocking and a busy-poll row; large messages always spin.
  const bool spin_row = wait == WaitMode::spin && workload == Workload::round_trip;
  return spin_row ? spin_name(transport->name) : transport->name;
}

void run_jobs(const std::vector<Job>& jobs, const RunSettings& settings, Results& results) {
  const auto repetitions = [&](const Job& job) {
    return job.workload == Workload::throughput ? settings.throughput_repetitions : 1;
  };
  std::size_t steps = 0;
  for (const Job& job : jobs) steps += static_cast<std::size_t>(repetitions(job));
  ProgressLine progress(steps);
  std::size_t unique = 0;
  for (const Job& job : jobs) {
    const std::string what = job.row_name() + " " + size_label(job.payload_bytes) + " " +
                             workload_name(job.workload) +
                             (job.evict_bytes != 0 ? " (" + size_label(job.evict_bytes) +
                                                         " written before each)"
                                                   : "");
    std::vector<MeasurementResult> runs;
    std::string failure;
    for (int repetition = 0; repetition < repetitions(job); ++repetition) {
      progress.show(what);
      WorkloadPlan plan = settings.plan(job.workload, job.payload_bytes, job.wait);
      plan.evict_bytes = job.evict_bytes;
      MeasurementSpec spec{.transport = job.transport,
                           .plan = plan,
                           .unique_name = "capnsplice-bench-" + std::to_string(::getpid()) + "-" +
                                          std::to_string(unique++),
                           .timeout = settings.timeout};
      MeasurementResult result = run_measurement(spec);
      if (!result.ok) {
        failure = result.error;
        progress.fail(what, failure, static_cast<std::size_t>(repetitions(job) - repetition - 1));
        break;
      }
      runs.push_back(std::move(result));
    }
    if (failure.empty()) {
      record(job, runs, results);
    } else {
      results.add_failure(
          {job.row_name(), job.payload_bytes, workload_name(job.workload), failure});
    }
  }
}

void run_count_sweep(
    const CountSweep& sweep, const std::vector<std::string>& ways,
    const std::vector<std::size_t>& counts, const std::vector<std::size_t>& sizes,
    const std::function<void(std::size_t way, std::size_t count, std::size_t size)>& measure,
    Results& results) {
  ProgressLine progress(counts.size() * sizes.size() * ways.size());
  for (std::size_t count : counts) {
    const std::string counted = std::to_string(count) + " " + sweep.counted;
    for (std::size_t size : sizes) {
      for (std::size_t way = 0; way < ways.size(); ++way) {
        const std::string what = ways[way] + " " + sweep.workload + ", " + counted + ", " +
                                 size_label(size) + " " + sweep.sized;
        progress.show(what);
        try {
          measure(way, count, size);
        } catch (const std::exception& error) {
          progress.fail(what, error.what(), 0);
          results.add_failure(
              {ways[way], size, std::string(sweep.workload) + " (" + counted + ")", error.what()});
        }
      }
    }
  }
}

}  // namespace bench
