// bench/nonblocking_sender.h — the "nonblocking" workload: a sender loop that must never block.
//
// Issue 12 asks for a non-blocking sender of mixed sizes (64 B to 16 MiB, every path)
// against a reader that stalls and resumes at random: every message arrives exactly
// once, in order, and the sender's loop never blocks longer than 1 ms.
// tests/nonblocking_send_test.cc checks the delivery; this workload measures the loop,
// on a Channel with the library's defaults, the way an event loop would run it:
//
//   build:   new_message(Deadline::immediate()), then fill_chunk() with a random size
//   send:    try_send(); when it refuses (queue_full) the message stays the loop's
//   wait:    poll() watch_fd() for POLLIN (at most 100 ms), then try_flush(), and again
//
// Every library call of the loop (new_message, try_send, try_flush) is timed on its own.
// Filling the message (fill_chunk) is the application's work and the poll() is the loop
// asleep with nothing to do: neither is timed. The payload's segments are allocated as
// fill_chunk initialises it (new_message() only makes the builder), so that is not timed
// either.
//
// The sender runs in a fresh process (fresh_process.h) for a fixed time; the reader is
// its child: it checks every message's seq and payload, sleeps 0-20 ms before about one
// message in four, and once the sender closed answers with how many messages it took.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>

namespace bench {

class Results;

/// The message sizes the sender picks from at random: the copy path (under 1 KiB),
/// vmsplice, and the shared-memory arena (from 128 KiB), up to 16 MiB.
inline constexpr std::array<std::size_t, 7> kNonblockingMessageSizes = {
    64, 700, 4 << 10, 60 << 10, 200 << 10, 1 << 20, 16 << 20};

struct NonblockingPlan {
  /// How long the sender builds new messages; then it sends what it holds and stops.
  std::chrono::milliseconds duration{2000};
};

/// What the sender measured, from its first message until the last byte was written.
struct NonblockingOutcome {
  std::uint64_t messages = 0;       ///< messages sent (all of them, the reader confirmed)
  std::uint64_t payload_bytes = 0;  ///< their payloads added up
  double seconds = 0;
  std::uint64_t calls = 0;  ///< library calls timed: new_message, try_send, try_flush
  std::uint64_t calls_over_1ms = 0;
  double call_p50_us = 0, call_p99_us = 0, call_p999_us = 0, call_max_us = 0;
  /// The longest call of each kind.
  double longest_new_message_us = 0, longest_try_send_us = 0, longest_try_flush_us = 0;
  std::uint64_t sends_queued = 0;   ///< try_send returned queued: taken, the pipe full
  std::uint64_t sends_refused = 0;  ///< try_send returned queue_full: kept and offered again
  /// SenderStats: the messages each path carried.
  std::uint64_t copied_messages = 0, spliced_messages = 0, shared_messages = 0;
};

/// Its rows in Results: this transport, message_bytes 0, these metrics.
inline constexpr const char* kNonblockingTransport = "capnsplice";
namespace nonblocking_metric {
inline constexpr const char* kMessages = "nonblocking_messages";
inline constexpr const char* kPayloadMBps = "nonblocking_payload_mb_per_s";
inline constexpr const char* kSeconds = "nonblocking_seconds";
inline constexpr const char* kCalls = "nonblocking_calls";
inline constexpr const char* kCallsOver1ms = "nonblocking_calls_over_1ms";
inline constexpr const char* kCallP50 = "nonblocking_call_p50_us";
inline constexpr const char* kCallP99 = "nonblocking_call_p99_us";
inline constexpr const char* kCallP999 = "nonblocking_call_p999_us";
inline constexpr const char* kCallMax = "nonblocking_call_max_us";
inline constexpr const char* kLongestNewMessage = "nonblocking_longest_new_message_us";
inline constexpr const char* kLongestTrySend = "nonblocking_longest_try_send_us";
inline constexpr const char* kLongestTryFlush = "nonblocking_longest_try_flush_us";
inline constexpr const char* kSendsQueued = "nonblocking_sends_queued";
inline constexpr const char* kSendsRefused = "nonblocking_sends_refused";
inline constexpr const char* kCopiedMessages = "nonblocking_copied_messages";
inline constexpr const char* kSplicedMessages = "nonblocking_spliced_messages";
inline constexpr const char* kSharedMessages = "nonblocking_shared_messages";
}  // namespace nonblocking_metric

/// In this process: makes the channel, forks the reader, runs the loop for
/// plan.duration, then flushes, closes and checks the reader's count and exit. Throws
/// on any failure, the reader's included.
NonblockingOutcome run_nonblocking_sender(const NonblockingPlan& plan);

/// Runs run_nonblocking_sender() in a fresh process (killed after `timeout`), with a
/// progress line, into `results` (kNonblockingTransport, 0, nonblocking_metric) or its
/// failures.
void run_nonblocking_workload(const NonblockingPlan& plan, std::chrono::seconds timeout,
                              Results& results);

}  // namespace bench
