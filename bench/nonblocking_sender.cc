#include "nonblocking_sender.h"

#include <capnsplice/channel.h>
#include <capnsplice/error.h>
#include <poll.h>

#include <algorithm>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "fresh_process.h"
#include "payload.h"
#include "results.h"
#include "runner.h"

namespace bench {

namespace {

using capnsplice::Deadline;
using capnsplice::demo::Chunk;
using namespace std::chrono_literals;

/// How long the reader has for the end of the run: its answer, its exit.
constexpr std::chrono::seconds kReaderGrace{20};
/// Fixed seeds: every run picks the same sizes and stalls.
constexpr std::uint64_t kSizeSeed = 3, kStallSeed = 2;

double microseconds(Clock::duration duration) {
  return std::chrono::duration<double, std::micro>(duration).count();
}

/// The library calls of the loop, each timed on its own.
enum class LibraryCall { new_message, try_send, try_flush, count };

/// How long every library call of the loop took.
class CallTimes {
 public:
  CallTimes() { durations_.reserve(std::size_t{1} << 18); }

  /// Makes one library call and notes how long it took; returns what the call returned.
  template <typename Call>
  auto time(LibraryCall kind, Call&& call) {
    const Clock::time_point began = Clock::now();
    auto result = call();
    const Clock::duration took = Clock::now() - began;
    durations_.push_back(took);
    Clock::duration& longest = longest_[static_cast<std::size_t>(kind)];
    longest = std::max(longest, took);
    return result;
  }

  /// The call figures of `outcome`: counts, percentiles, the longest of each kind.
  void summarise(NonblockingOutcome& outcome) {
    if (durations_.empty()) return;
    std::sort(durations_.begin(), durations_.end());
    const auto percentile = [this](double share) {  // nearest rank
      const auto rank = static_cast<std::size_t>(share * static_cast<double>(durations_.size()));
      return microseconds(durations_[std::min(rank, durations_.size() - 1)]);
    };
    outcome.calls = durations_.size();
    outcome.calls_over_1ms = static_cast<std::uint64_t>(
        durations_.end() - std::upper_bound(durations_.begin(), durations_.end(), 1ms));
    outcome.call_p50_us = percentile(0.50);
    outcome.call_p99_us = percentile(0.99);
    outcome.call_p999_us = percentile(0.999);
    outcome.call_max_us = microseconds(durations_.back());
    outcome.longest_new_message_us = longest_of(LibraryCall::new_message);
    outcome.longest_try_send_us = longest_of(LibraryCall::try_send);
    outcome.longest_try_flush_us = longest_of(LibraryCall::try_flush);
  }

 private:
  double longest_of(LibraryCall kind) const {
    return microseconds(longest_[static_cast<std::size_t>(kind)]);
  }

  std::vector<Clock::duration> durations_;
  std::array<Clock::duration, static_cast<std::size_t>(LibraryCall::count)> longest_{};
};

/// The sender's loop, written as an event loop would write it (see the header).
class SenderLoop {
 public:
  explicit SenderLoop(capnsplice::Channel& channel)
      : channel_(channel), watch_fd_(channel.watch_fd()), random_(kSizeSeed) {}

  /// Builds and offers messages of random sizes for `duration`, then sends the one it
  /// holds and everything queued; returns the figures.
  NonblockingOutcome run(std::chrono::milliseconds duration) {
    const Clock::time_point started = Clock::now();
    capnsplice::OutgoingMessage held;  // built, not taken yet
    while (Clock::now() < started + duration) {
      if (!held) held = build();
      if (!offer(held)) wait_for_room_and_flush();
    }
    while (held && !offer(held)) wait_for_room_and_flush();
    while (channel_.unsent_bytes() != 0) wait_for_room_and_flush();
    outcome_.seconds = std::chrono::duration<double>(Clock::now() - started).count();
    times_.summarise(outcome_);
    const capnsplice::SenderStats stats = channel_.sender().stats();
    outcome_.copied_messages = stats.copied_messages;
    outcome_.spliced_messages = stats.spliced_messages;
    outcome_.shared_messages = stats.shared_messages;
    return outcome_;
  }

 private:
  capnsplice::OutgoingMessage build() {
    capnsplice::OutgoingMessage message = times_.time(
        LibraryCall::new_message, [this] { return channel_.new_message(Deadline::immediate()); });
    std::uniform_int_distribution<std::size_t> pick(0, kNonblockingMessageSizes.size() - 1);
    held_payload_bytes_ = kNonblockingMessageSizes[pick(random_)];
    // The application's work: not timed.
    fill_chunk(message.init_root<Chunk>(), outcome_.messages, held_payload_bytes_);
    return message;
  }

  /// try_send(): true when the message was taken (sent or queued); when refused
  /// (queue_full) it is still in `message`, unchanged, to offer again.
  bool offer(capnsplice::OutgoingMessage& message) {
    const capnsplice::SendStatus status =
        times_.time(LibraryCall::try_send, [&] { return channel_.try_send(std::move(message)); });
    if (status == capnsplice::SendStatus::queue_full) {
      ++outcome_.sends_refused;
      return false;
    }
    if (status == capnsplice::SendStatus::queued) ++outcome_.sends_queued;
    ++outcome_.messages;
    outcome_.payload_bytes += held_payload_bytes_;
    return true;
  }

  /// The loop asleep until the pipe has room (watch_fd() readable; 100 ms at most), then
  /// try_flush() writes what it takes.
  void wait_for_room_and_flush() {
    pollfd watch{watch_fd_, POLLIN, 0};
    ::poll(&watch, 1, 100);
    times_.time(LibraryCall::try_flush, [this] { return channel_.try_flush(); });
  }

  capnsplice::Channel& channel_;
  int watch_fd_;
  std::mt19937_64 random_;
  std::size_t held_payload_bytes_ = 0;
  CallTimes times_;
  NonblockingOutcome outcome_;
};

/// The next message, or empty at the sender's end of stream.
std::optional<capnsplice::ReceivedMessage> receive_unless_closed(capnsplice::Channel& channel) {
  try {
    return channel.receive(Deadline::after(60s));
  } catch (const capnsplice::Error& error) {
    if (error.code() == capnsplice::ErrorCode::PeerClosed) return std::nullopt;
    throw;
  }
}

/// The reader: checks every message (seq in order, payload), sleeps 0-20 ms before about
/// one in four; at the sender's end of stream answers with how many it took.
void read_with_stalls(capnsplice::Channel& channel) {
  std::mt19937_64 random(kStallSeed);
  std::bernoulli_distribution stall_now(0.25);
  std::uniform_int_distribution<int> stall_ms(0, 20);
  std::uint64_t received = 0;
  for (;;) {
    if (stall_now(random)) std::this_thread::sleep_for(std::chrono::milliseconds(stall_ms(random)));
    std::optional<capnsplice::ReceivedMessage> message = receive_unless_closed(channel);
    if (!message) break;
    const std::uint64_t seq = check_chunk(message->root<Chunk>());
    if (seq != received) {
      throw std::runtime_error("expected message " + std::to_string(received) + ", got " +
                               std::to_string(seq));
    }
    ++received;
  }
  channel.send_struct<Chunk>([received](Chunk::Builder answer) { answer.setSeq(received); });
}

/// The reader, a child of the sender's process.
class StallingReader {
 public:
  /// Forks the reader with `reader_end`; in it, `sender_end` is closed first, so that
  /// the reader sees the end of stream when the sender closes.
  StallingReader(std::optional<capnsplice::Channel>& sender_end, capnsplice::Channel& reader_end)
      : process_(ChildProcess::spawn([&] {
          sender_end.reset();
          return run_reporting_error([&] { read_with_stalls(reader_end); }, *error_);
        })) {}

  /// Waits for the reader to exit (at most `grace`); throws "the reader: why" unless it
  /// exited 0.
  void expect_success(std::chrono::seconds grace) {
    try {
      wait_for_success(process_, *error_, grace);
    } catch (const std::runtime_error& error) {
      throw std::runtime_error(std::string("the reader: ") + error.what());
    }
  }

  /// After the sender failed: a reader that failed first closed the pipe under it, and
  /// its reason is the real one. Waits up to `grace` for it, throws it if so.
  void throw_if_failed(std::chrono::seconds grace) {
    if (process_.running()) wait_for_event(std::span(&process_, 1), -1, Clock::now() + grace);
    if (!process_.running()) expect_success(grace);
  }

 private:
  SharedWithChildren<ChildError> error_;  // before process_: the child writes it
  ChildProcess process_;
};

void record(const NonblockingOutcome& outcome, Results& results) {
  namespace m = nonblocking_metric;
  const auto count = [](std::uint64_t value) { return static_cast<double>(value); };
  const std::pair<const char*, double> figures[] = {
      {m::kMessages, count(outcome.messages)},
      {m::kPayloadMBps, count(outcome.payload_bytes) / outcome.seconds / 1e6},
      {m::kSeconds, outcome.seconds},
      {m::kCalls, count(outcome.calls)},
      {m::kCallsOver1ms, count(outcome.calls_over_1ms)},
      {m::kCallP50, outcome.call_p50_us},
      {m::kCallP99, outcome.call_p99_us},
      {m::kCallP999, outcome.call_p999_us},
      {m::kCallMax, outcome.call_max_us},
      {m::kLongestNewMessage, outcome.longest_new_message_us},
      {m::kLongestTrySend, outcome.longest_try_send_us},
      {m::kLongestTryFlush, outcome.longest_try_flush_us},
      {m::kSendsQueued, count(outcome.sends_queued)},
      {m::kSendsRefused, count(outcome.sends_refused)},
      {m::kCopiedMessages, count(outcome.copied_messages)},
      {m::kSplicedMessages, count(outcome.spliced_messages)},
      {m::kSharedMessages, count(outcome.shared_messages)},
  };
  for (const auto& [metric, value] : figures) results.add(kNonblockingTransport, 0, metric, value);
}

}  // namespace

NonblockingOutcome run_nonblocking_sender(const NonblockingPlan& plan) {
  auto [first, second] = capnsplice::Channel::pair();  // the library's defaults
  std::optional<capnsplice::Channel> sender_end(std::move(first));
  std::optional<capnsplice::Channel> reader_end(std::move(second));
  StallingReader reader(sender_end, *reader_end);
  reader_end.reset();  // the reader's end lives in the reader alone
  NonblockingOutcome outcome;
  try {
    outcome = SenderLoop(*sender_end).run(plan.duration);
    sender_end->close_sending();
    const auto answer = sender_end->receive_as<Chunk>(Deadline::after(kReaderGrace));
    if (answer->getSeq() != outcome.messages) {
      throw std::runtime_error("the reader took " + std::to_string(answer->getSeq()) + " of the " +
                               std::to_string(outcome.messages) + " messages sent");
    }
  } catch (const std::exception&) {
    reader.throw_if_failed(std::chrono::seconds(1));
    throw;
  }
  reader.expect_success(kReaderGrace);
  return outcome;
}

void run_nonblocking_workload(const NonblockingPlan& plan, std::chrono::seconds timeout,
                              Results& results) {
  const std::string what = "capnsplice non-blocking sender, 64 B to 16 MiB, stalling reader";
  ProgressLine progress(1);
  progress.show(what);
  try {
    record(run_in_fresh_process<NonblockingOutcome>(
               [&] { return run_nonblocking_sender(plan); }, timeout),
           results);
  } catch (const std::exception& error) {
    progress.fail(what, error.what(), 0);
    results.add_failure({kNonblockingTransport, 0, "nonblocking", error.what()});
  }
}

}  // namespace bench
