// bench/workloads.h — the workloads, written once against Endpoint for every transport.
//
// Throughput: side A streams messages for a time and byte budget, then one end-of-run
// message; side B receives and checks them and notes when the last one arrived. The
// parent started the clock at the barrier, so throughput = bytes / (last - start).
//
// Round trip: side A sends a message, waits for B's answer of the same size, and
// records the time; B answers every message until the end-of-run message.
//
// Large-message latency: side A builds a large message (outside the clock), notes the
// time and sends it; side B takes it (busy-polling), notes the time and answers with that
// reading. One-way latency = B's reading - A's (CLOCK_MONOTONIC is one clock for both).
//
// Every side warms up (caches, page faults, pool and ring memory) before arriving at
// the start barrier; warm-up messages are not counted.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

#include "child_process.h"
#include "start_barrier.h"
#include "transport.h"

namespace bench {

enum class Workload { throughput, round_trip, large_message };

inline constexpr int kMinimumWaivedAfter = 4;

struct WorkloadPlan {
  Workload workload = Workload::throughput;
  std::size_t payload_bytes = 0;
  /// How receivers wait (the throughput workload always blocks).
  WaitMode wait = WaitMode::block;
  std::size_t warmup_messages = 0;
  /// The run ends once both budgets allow it: at least min_messages, and then as soon
  /// as time_budget passed or byte_budget payload bytes were sent. On a machine so busy
  /// that min_messages takes longer than kMinimumWaivedAfter time budgets, the run ends
  /// then with what it has.
  std::size_t min_messages = 0;
  std::chrono::nanoseconds time_budget{0};
  std::uint64_t byte_budget = 0;
  /// Large messages: bytes the sender writes elsewhere after building each message and
  /// before its clock starts, so that every size starts from the cache and TLB state
  /// that building a message this large leaves (0: none).
  std::size_t evict_bytes = 0;
};

/// What one side measured.
struct WorkloadOutcome {
  std::uint64_t messages = 0;           ///< counted messages (warm-up excluded)
  Clock::time_point last_message_at{};  ///< stream receiver: arrival of the last message
  double rtt_p50_us = 0, rtt_p99_us = 0, rtt_p999_us = 0;  ///< round trip, side A
  double one_way_p50_us = 0, one_way_p99_us = 0;           ///< large messages, side A
};

/// Runs `side`'s role of the plan's workload on `endpoint`, between the barrier and
/// the end-of-run message.
WorkloadOutcome run_side(Side side, Endpoint& endpoint, const WorkloadPlan& plan,
                         StartBarrier& barrier);

/// For transports that run in one process (memcpy): sends and receives each message
/// in turn on one thread.
WorkloadOutcome run_in_one_thread(Endpoint& sender, Endpoint& receiver, const WorkloadPlan& plan,
                                  StartBarrier& barrier);

}  // namespace bench
