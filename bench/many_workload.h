// bench/many_workload.h — the "many" workload: N channels between one host and one child.
//
// A plugin host keeps hundreds of channels, most of them idle (issue 13). Here one host
// process makes N pairs, forks one child that keeps the other end of each, and streams
// over all of them round-robin: message k (a Chunk of payload_bytes) goes on channel
// k mod N, the child receives them in the same order and checks each. After one warm-up
// round the stream runs for a fixed time; then an end-of-run message, which the child
// answers on channel 0 with the count it received (the host's clock stops there). The
// host then idles, and says goodbye on channel 0 before it closes its ends.
//
// Written twice, as a user would write it:
//
//   capnsplice        Channel::pair() (library defaults), send() / receive()
//   capnp-socketpair  socketpair(), capnp::writeMessageToFd / StreamFdMessageReader
//
// Each measurement runs in a fresh host process (fresh_process.h), whose RSS (VmRSS)
// and descriptors are read before the first pair, once the pairs are made and the
// child forked, after the stream, and after idling; making the pairs is timed (the
// first on its own too: it includes what a process sets up once). Growth from the
// start includes the code and one-time set-up the first pair and message fault in,
// which dominates at N = 1. No channel carries a message before the fork. A pair that
// cannot be made (EMFILE, ENOMEM, ...) fails that measurement with the reason.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace bench {

class Results;

struct ManyPlan {
  std::size_t channels = 1;
  std::size_t payload_bytes = 512;
  std::chrono::milliseconds stream{1000};  ///< measured stream, after one warm-up round
  std::chrono::milliseconds idle{1500};    ///< the host's idle time after the stream
};

/// What one host process measured.
struct ManyOutcome {
  std::uint64_t messages = 0;  ///< in the measured stream
  double seconds = 0;
  double create_first_us = 0;     ///< making the process's first pair
  double create_us_per_pair = 0;  ///< making all N pairs, divided by N
  double rss_before_mib = 0;      ///< VmRSS before the first pair
  double rss_created_mib = 0;     ///< the pairs made, the child forked and its ends closed
  double rss_streamed_mib = 0;    ///< right after the stream
  double rss_idle_mib = 0;        ///< after ManyPlan::idle without traffic
  int fds_before = 0, fds_created = 0, fds_idle = 0;  ///< open descriptors, the same moments
};

/// The metric names of one channel count: "many_messages_per_s_n64".
std::string many_metric(const char* figure, std::size_t channels);
namespace many_figure {
inline constexpr const char* kMessagesPerSecond = "messages_per_s";
inline constexpr const char* kPayloadMBps = "payload_mbps";
inline constexpr const char* kRssCreated = "rss_created_mib";
inline constexpr const char* kRssStreamed = "rss_streamed_mib";
inline constexpr const char* kRssIdle = "rss_idle_mib";
inline constexpr const char* kRssPerPairIdle = "rss_per_pair_idle_kib";  ///< above the start
inline constexpr const char* kFdsPerPair = "fds_per_pair";               ///< once made
inline constexpr const char* kFdsPerPairIdle = "fds_per_pair_idle";      ///< after the stream
inline constexpr const char* kCreateUs = "create_us_per_pair";
inline constexpr const char* kCreateFirstUs = "create_first_us";
}  // namespace many_figure

/// The two ways, in table order; the last one is the baseline of the ratios.
const std::vector<std::string>& many_implementations();

/// Runs every implementation for every channel count and payload size, each in a fresh
/// host process killed after `timeout`, with a progress line, into `results` (transport
/// = the implementation, message_bytes = the payload, metrics many_metric()).
void run_many_workload(const std::vector<std::size_t>& channel_counts,
                       const std::vector<std::size_t>& payload_sizes, const ManyPlan& base,
                       std::chrono::seconds timeout, Results& results);

}  // namespace bench
