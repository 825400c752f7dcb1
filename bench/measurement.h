// bench/measurement.h — one measurement: one transport, one workload, one size.
//
// The parent makes the transport's link, forks side A and side B (one child for
// transports that run in one process), waits for both to warm up, starts the clock
// and waits — never longer than the timeout — for both to finish. Each child writes
// its outcome and its peak RSS into a small shared-memory report. A child that fails,
// hangs or dies makes the measurement fail with a reason; it never hangs the run.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "transport.h"
#include "workloads.h"

namespace bench {

struct MeasurementSpec {
  const Transport* transport = nullptr;
  WorkloadPlan plan;
  /// Unique within this run (names of queues and sockets are derived from it).
  std::string unique_name;
  std::chrono::seconds timeout{30};
};

struct MeasurementResult {
  bool ok = false;
  std::string error;  ///< why it failed, naming the side
  std::uint64_t messages = 0;
  double seconds = 0;
  double throughput_gbps = 0;  ///< payload bytes (10^9 per GB) per second
  double messages_per_s = 0;
  double rtt_p50_us = 0, rtt_p99_us = 0, rtt_p999_us = 0;
  double one_way_p50_us = 0, one_way_p99_us = 0;
  double peak_rss_a_mib = 0;  ///< side A: sender / pinger
  double peak_rss_b_mib = 0;  ///< side B: receiver / answerer
  std::string paths_a;        ///< Endpoint::paths_taken() of side A
  /// System calls of each side after the start, per message (per round trip for round
  /// trips), counted by the kernel (syscall_counter.h); -1 where they could not be.
  double system_calls_per_message_a = -1;
  double system_calls_per_message_b = -1;
};

MeasurementResult run_measurement(const MeasurementSpec& spec);

/// Peak RSS of a forked child that does nothing: what every side starts from.
double idle_child_rss_mib();

}  // namespace bench
