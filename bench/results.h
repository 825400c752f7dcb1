// bench/results.h — every figure of a run, as the rows the CSV holds.
//
// A row is (transport, message_bytes, metric, value); round-trip rows in busy-poll
// mode carry the transport name with "+spin". The markdown tables, the CSV and the
// plot all read from here.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace bench {

namespace metric {
inline constexpr const char* kThroughputGbps = "throughput_gbps";
inline constexpr const char* kMessagesPerSecond = "messages_per_s";
inline constexpr const char* kRttP50 = "rtt_p50_us";
inline constexpr const char* kRttP99 = "rtt_p99_us";
inline constexpr const char* kRttP999 = "rtt_p999_us";
/// Large messages: from the sender's send() to the receiver holding the message.
inline constexpr const char* kOneWayLatency = "one_way_latency_us";
inline constexpr const char* kOneWayLatencyP99 = "one_way_latency_p99_us";
/// The same when the sender wrote WorkloadPlan::evict_bytes elsewhere before each clock.
inline constexpr const char* kOneWayLatencyEvicted = "one_way_latency_evicted_us";
inline constexpr const char* kOneWayLatencyEvictedP99 = "one_way_latency_evicted_p99_us";
/// The larger of the two sides' peak RSS; the two sides follow as their own metrics.
inline constexpr const char* kPeakRss = "peak_rss_mib";
inline constexpr const char* kPeakRssSender = "peak_rss_sender_mib";
inline constexpr const char* kPeakRssReceiver = "peak_rss_receiver_mib";
/// System calls per message of each side of a stream, and per round trip of each side
/// of a ping-pong, counted by the kernel (syscall_counter.h).
inline constexpr const char* kSyscallsPerMessageSender = "syscalls_per_message_sender";
inline constexpr const char* kSyscallsPerMessageReceiver = "syscalls_per_message_receiver";
inline constexpr const char* kSyscallsPerRoundTripPinger = "syscalls_per_round_trip_pinger";
inline constexpr const char* kSyscallsPerRoundTripAnswerer = "syscalls_per_round_trip_answerer";
}  // namespace metric

/// The name of a transport's busy-poll rows: "capnsplice+spin".
inline std::string spin_name(const std::string& transport) { return transport + "+spin"; }

struct ResultRow {
  std::string transport;
  std::size_t message_bytes;
  std::string metric;
  double value;
};

/// A measurement that failed, for the report's list of failures.
struct Failure {
  std::string transport;
  std::size_t message_bytes;
  std::string workload;
  std::string reason;
};

class Results {
 public:
  void add(const std::string& transport, std::size_t message_bytes, const std::string& metric,
           double value) {
    rows_.push_back({transport, message_bytes, metric, value});
  }

  std::optional<double> find(const std::string& transport, std::size_t message_bytes,
                             const std::string& metric) const {
    for (const ResultRow& row : rows_) {
      if (row.transport == transport && row.message_bytes == message_bytes &&
          row.metric == metric) {
        return row.value;
      }
    }
    return std::nullopt;
  }

  void add_failure(Failure failure) { failures_.push_back(std::move(failure)); }

  /// Which ways a transport's sender used (Endpoint::paths_taken()), per size.
  void add_paths(const std::string& transport, std::size_t message_bytes, std::string paths) {
    paths_.push_back({transport, message_bytes, std::move(paths)});
  }
  std::optional<std::string> find_paths(const std::string& transport,
                                        std::size_t message_bytes) const {
    for (const PathsTaken& entry : paths_) {
      if (entry.transport == transport && entry.message_bytes == message_bytes) {
        return entry.paths;
      }
    }
    return std::nullopt;
  }

  const std::vector<ResultRow>& rows() const { return rows_; }
  const std::vector<Failure>& failures() const { return failures_; }

 private:
  struct PathsTaken {
    std::string transport;
    std::size_t message_bytes;
    std::string paths;
  };

  std::vector<ResultRow> rows_;
  std::vector<Failure> failures_;
  std::vector<PathsTaken> paths_;
};

}  // namespace bench
