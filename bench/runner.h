// bench/runner.h — runs a list of measurements, with a progress line, into Results.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "results.h"
#include "run_settings.h"
#include "transport.h"

namespace bench {

/// One cell of the report: a transport, a workload, a size and a wait mode.
struct Job {
  const Transport* transport;
  Workload workload;
  std::size_t payload_bytes;
  WaitMode wait = WaitMode::block;
  /// Large messages: WorkloadPlan::evict_bytes.
  std::size_t evict_bytes = 0;

  /// The transport's name as the report shows it ("capnsplice+spin" when spinning).
  std::string row_name() const;
};

/// One line on stderr per step; on a terminal the line is rewritten in place.
class ProgressLine {
 public:
  explicit ProgressLine(std::size_t steps);
  ~ProgressLine();
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;

  /// "[k/n] what ...".
  void show(const std::string& what);
  /// Reports a failure on a line of its own and counts the steps it made unnecessary.
  void fail(const std::string& what, const std::string& reason, std::size_t skipped_steps);

 private:
  std::size_t steps_;
  std::size_t step_ = 0;
  bool terminal_;
};

/// A workload measured per count (plugins, channels) and payload size, for each of
/// several ways of doing it; the words of its progress lines and failures.
struct CountSweep {
  const char* workload;  ///< "host": "capnsplice-asio host, 16 plugins, 512 B requests"
  const char* counted;   ///< "plugins"
  const char* sized;     ///< "requests"
};

/// Calls `measure` for every count, size and way (its index in `ways`; in that nesting)
/// with a progress line; one that throws is reported there and added to `results` as a
/// failure of (the way's name, size).
void run_count_sweep(
    const CountSweep& sweep, const std::vector<std::string>& ways,
    const std::vector<std::size_t>& counts, const std::vector<std::size_t>& sizes,
    const std::function<void(std::size_t way, std::size_t count, std::size_t size)>& measure,
    Results& results);

/// Runs every job (throughput jobs settings.throughput_repetitions times, keeping the
/// median), prints "[k/n] transport size workload" to stderr as it goes, and adds the
/// figures — or the failure — to `results`.
void run_jobs(const std::vector<Job>& jobs, const RunSettings& settings, Results& results);

}  // namespace bench
