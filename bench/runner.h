// bench/runner.h — runs a list of measurements, with a progress line, into Results.
#pragma once

#include <cstddef>
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

/// Runs every job (throughput jobs settings.throughput_repetitions times, keeping the
/// median), prints "[k/n] transport size workload" to stderr as it goes, and adds the
/// figures — or the failure — to `results`.
void run_jobs(const std::vector<Job>& jobs, const RunSettings& settings, Results& results);

}  // namespace bench
