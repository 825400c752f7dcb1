// bench/run_settings.h — how long and how often each measurement runs.
//
// Counts are not fixed per size: a sender keeps going until a time budget or a byte
// budget is spent (whichever comes first, after a minimum count), so fast and slow
// transports alike take a fraction of a second per measurement.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>

#include "workloads.h"

namespace bench {

struct RunSettings {
  const char* name;
  // Throughput: each measurement repeated, the median kept.
  std::chrono::milliseconds throughput_time;
  std::uint64_t throughput_bytes;
  std::size_t throughput_min_messages;
  std::size_t throughput_warmup_bytes;
  int throughput_repetitions;
  // Round trip: one run, every round trip a sample.
  std::chrono::milliseconds round_trip_time;
  std::size_t round_trip_min_messages;
  std::size_t round_trip_warmup_messages;
  // Large-message latency: one run, every message a sample.
  std::chrono::milliseconds large_message_time;
  std::size_t large_message_min_messages;
  // Host workload: each (host, plugins, size) once, after a warm-up.
  std::chrono::milliseconds host_warmup;
  std::chrono::milliseconds host_time;
  // Many channels: each (way, channels, size) once, streaming this long, then idle.
  std::chrono::milliseconds many_time;
  std::chrono::milliseconds many_idle;
  // Non-blocking sender: one run, building new messages for this long.
  std::chrono::milliseconds nonblocking_time;
  /// A measurement still running after this is killed and reported as failed.
  std::chrono::seconds timeout;

  WorkloadPlan plan(Workload workload, std::size_t payload_bytes, WaitMode wait) const {
    WorkloadPlan plan{.workload = workload, .payload_bytes = payload_bytes, .wait = wait};
    if (workload == Workload::throughput) {
      plan.warmup_messages =
          std::clamp<std::size_t>(throughput_warmup_bytes / payload_bytes, 4, 2000);
      plan.min_messages = throughput_min_messages;
      plan.time_budget = throughput_time;
      plan.byte_budget = throughput_bytes;
    } else if (workload == Workload::large_message) {
      plan.warmup_messages = 2;
      plan.min_messages = large_message_min_messages;
      plan.time_budget = large_message_time;
      plan.byte_budget = UINT64_MAX;
    } else {
      plan.warmup_messages = round_trip_warmup_messages;
      plan.min_messages = round_trip_min_messages;
      plan.time_budget = round_trip_time;
      plan.byte_budget = UINT64_MAX;
    }
    return plan;
  }
};

/// The full run: ~0.4 s per measurement, throughput as the median of three.
inline constexpr RunSettings kFullRun{.name = "full",
                                      .throughput_time = std::chrono::milliseconds(400),
                                      .throughput_bytes = 8ull << 30,
                                      .throughput_min_messages = 20,
                                      .throughput_warmup_bytes = 32 << 20,
                                      .throughput_repetitions = 3,
                                      .round_trip_time = std::chrono::milliseconds(400),
                                      .round_trip_min_messages = 2000,
                                      .round_trip_warmup_messages = 500,
                                      .large_message_time = std::chrono::milliseconds(1500),
                                      .large_message_min_messages = 5,
                                      .host_warmup = std::chrono::milliseconds(500),
                                      .host_time = std::chrono::milliseconds(2000),
                                      .many_time = std::chrono::milliseconds(1000),
                                      .many_idle = std::chrono::milliseconds(1500),
                                      .nonblocking_time = std::chrono::milliseconds(2000),
                                      .timeout = std::chrono::seconds(30)};

/// --quick: one short run each, for the demo.
inline constexpr RunSettings kQuickRun{.name = "quick",
                                       .throughput_time = std::chrono::milliseconds(100),
                                       .throughput_bytes = 1ull << 30,
                                       .throughput_min_messages = 8,
                                       .throughput_warmup_bytes = 8 << 20,
                                       .throughput_repetitions = 1,
                                       .round_trip_time = std::chrono::milliseconds(100),
                                       .round_trip_min_messages = 200,
                                       .round_trip_warmup_messages = 100,
                                       .large_message_time = std::chrono::milliseconds(300),
                                       .large_message_min_messages = 3,
                                       .host_warmup = std::chrono::milliseconds(200),
                                       .host_time = std::chrono::milliseconds(500),
                                       .many_time = std::chrono::milliseconds(300),
                                       .many_idle = std::chrono::milliseconds(1500),
                                       .nonblocking_time = std::chrono::milliseconds(1000),
                                       .timeout = std::chrono::seconds(20)};

}  // namespace bench
