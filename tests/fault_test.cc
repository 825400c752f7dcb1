// Faults from outside the library: a storm of signals (any blocking system call may fail
// with EINTR or return short), a reader that sleeps while the pipe is full, a reader
// that goes away in the middle of a send. No message is lost or duplicated, and every
// failure is the error that names it.
#include <sys/time.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <thread>
#include <vector>

#include "capnsplice/process.h"
#include "support/error_from.h"
#include "support/mixed_stream.h"
#include "support/raw_pipe.h"
#include "support/sanitizer.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

/// While alive, SIGALRM arrives every `interval` at a handler that only counts it,
/// installed without SA_RESTART: a system call this process is blocked in when the
/// signal lands fails with EINTR (or returns short). Timers are per process, so a
/// forked child runs a storm of its own.
class SignalStorm {
 public:
  explicit SignalStorm(std::chrono::microseconds interval) {
    signals_.store(0);
    struct sigaction action {};
    action.sa_handler = [](int) { signals_.fetch_add(1, std::memory_order_relaxed); };
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // no SA_RESTART: interrupted calls are not resumed by the kernel
    ::sigaction(SIGALRM, &action, &previous_);
    const timeval every{0, static_cast<suseconds_t>(interval.count())};
    const itimerval timer{every, every};
    ::setitimer(ITIMER_REAL, &timer, nullptr);
  }
  SignalStorm(const SignalStorm&) = delete;
  SignalStorm& operator=(const SignalStorm&) = delete;
  ~SignalStorm() { stop(); }

  /// Ends the storm (a signal raised before the timer stopped is delivered before
  /// setitimer returns, to the counting handler) and returns the signals delivered.
  std::uint64_t stop() {
    if (running_) {
      const itimerval off{};
      ::setitimer(ITIMER_REAL, &off, nullptr);
      ::sigaction(SIGALRM, &previous_, nullptr);
      running_ = false;
    }
    return signals_.load();
  }

 private:
  static inline std::atomic<std::uint64_t> signals_{0};
  struct sigaction previous_ {};
  bool running_ = true;
};

/// Under ThreadSanitizer a signal costs its runtime about as much as the interval: two
/// storms side by side (ctest -j2) then made almost no progress and ran past ctest's
/// 300 s. A tenth of the rate still interrupts tens of thousands of calls there.
constexpr auto kStormInterval = kThreadSanitizer ? 200us : 20us;
constexpr std::uint64_t kStormMessages = 5000;
/// Far more signals than messages are expected; a few hundred prove the storm raged.
constexpr std::uint64_t kMinimumSignals = 200;

/// Receives the stream until end of stream, under a storm of its own, and answers with a
/// Report (sent under the storm too). Runs in the forked child.
int receive_under_storm(Channel& channel) {
  SignalStorm storm(kStormInterval);
  StreamTally tally;
  std::uint64_t frame_errors = 0;
  for (;;) {
    try {
      ReceivedMessage message = channel.receive();
      tally.add(message.root<test::Blob>());
    } catch (const Error& error) {
      frame_errors += error.code() == ErrorCode::PeerClosed ? 0 : 1;
      break;
    }
  }
  OutgoingMessage reply = channel.new_message();
  auto report = reply.init_root<test::Report>();
  tally.write_to(report);
  report.setFrameErrors(frame_errors);
  report.setSignals(storm.stop());
  channel.send(std::move(reply));
  return 0;
}

/// Streams kStormMessages of mixed sizes from this process to a forked child, both
/// under a storm, and checks what the child received.
void check_stream_survives_storm(Channel parent, Channel child, const char* what) {
  const pid_t pid = fork_child([&parent, &child] {
    { Channel dropped = std::move(parent); }  // the child keeps only its end
    return receive_under_storm(child);
  });
  { Channel dropped = std::move(child); }
  SignalStorm storm(kStormInterval);
  Random random(11);
  for (std::uint64_t seq = 0; seq < kStormMessages; ++seq) {
    send_mixed(parent, seq, mixed_size(random, 2 * MiB), random);
  }
  parent.close_sending();
  ReceivedMessage answer = parent.receive(Deadline::after(60s));
  const std::uint64_t parent_signals = storm.stop();
  const auto report = answer.root<test::Report>();
  const StreamTally received = StreamTally::read_from(report);
  std::printf(
      "EINTR storm (%s): %llu messages, %llu payload bytes received; %llu mismatched, "
      "%llu out of order; signals: sender %llu, receiver %llu\n",
      what, static_cast<unsigned long long>(received.messages),
      static_cast<unsigned long long>(received.bytes),
      static_cast<unsigned long long>(received.mismatches),
      static_cast<unsigned long long>(received.out_of_order),
      static_cast<unsigned long long>(parent_signals),
      static_cast<unsigned long long>(report.getSignals()));
  CHECK(wait_child(pid) == 0);
  CHECK(received.messages == kStormMessages);
  CHECK(received.mismatches == 0);
  CHECK(received.out_of_order == 0);
  CHECK(report.getFrameErrors() == 0);
  CHECK(parent_signals >= kMinimumSignals);
  CHECK(report.getSignals() >= kMinimumSignals);
}

/// Two connected ends over pipes left blocking, as a plain Cap'n Proto peer leaves them:
/// writes then block in the kernel, where signals interrupt them half done.
std::pair<Channel, Channel> blocking_pair(const ChannelOptions& options) {
  RawPipe there;
  RawPipe back;
  return {Channel::from_fds(std::move(back.read_end), std::move(there.write_end), options,
                            /*keep_blocking=*/true),
          Channel::from_fds(std::move(there.read_end), std::move(back.write_end), options,
                            /*keep_blocking=*/true)};
}

const auto kFaultOptions = ChannelOptions().with_send_timeout(60s);

/// A way for a large message to travel: copied into the pipe, spliced into it, or left in
/// shared memory with a small descriptor on the pipe (messages of 128 KiB and more).
struct Route {
  const char* name;
  ChannelOptions options;
};

std::vector<Route> pipe_routes() {
  auto through_pipe = ChannelOptions(kFaultOptions).with_shared_memory_threshold_bytes(0);
  return {{"copy", ChannelOptions(through_pipe).with_send_path(SendPath::copy)},
          {"vmsplice", ChannelOptions(through_pipe).with_send_path(SendPath::vmsplice)}};
}

std::vector<Route> all_routes() {
  std::vector<Route> routes = pipe_routes();
  routes.push_back({"shared memory", kFaultOptions});
  return routes;
}

}  // namespace

TEST_CASE("an EINTR storm loses and duplicates no message") {
  auto [parent, child] = Channel::pair(kFaultOptions);
  check_stream_survives_storm(std::move(parent), std::move(child),
                              "non-blocking pipes and shared memory");
}

TEST_CASE("an EINTR storm on blocking descriptors loses and duplicates no message") {
  auto [parent, child] = blocking_pair(kFaultOptions);
  check_stream_survives_storm(std::move(parent), std::move(child), "blocking 64 KiB pipes");
}

TEST_CASE("a sender facing a full pipe waits for the sleeping reader, then completes") {
  constexpr std::uint64_t kMessages = 32;  // 8 MiB: eight times what the pipe holds
  for (const Route& route : pipe_routes()) {
    INFO(route.name);
    auto [near, far] = Channel::pair(route.options);
    std::atomic<bool> reader_awake{false};
    StreamTally tally;
    std::thread reader([&far = far, &reader_awake, &tally] {
      std::this_thread::sleep_for(300ms);
      reader_awake = true;
      for (std::uint64_t i = 0; i < kMessages; ++i) tally.add(far.receive_as<test::Blob>().root());
    });
    Random random(12);
    for (std::uint64_t seq = 0; seq < kMessages; ++seq) send_blob(near, seq, 256 * KiB, random);
    // The pipe holds an eighth of the stream: finishing proves the reader was awake.
    const bool finished_after_reader_woke = reader_awake.load();
    reader.join();
    CHECK(finished_after_reader_woke);
    CHECK(tally.messages == kMessages);
    CHECK(tally.mismatches == 0);
    CHECK(tally.out_of_order == 0);
  }
}

TEST_CASE(
    "a sender facing a full pipe past its send timeout gets Timeout when nothing of the "
    "message was written, StreamCut when part was, and every message it reported sent "
    "arrives intact") {
  for (const Route& route : pipe_routes()) {
    auto [near, far] = Channel::pair(ChannelOptions(route.options).with_send_timeout(100ms));
    Random random(13);
    std::uint64_t sent = 0;
    Error timeout = error_from([&near = near, &random, &sent] {
      for (;; ++sent) send_blob(near, sent, 256 * KiB, random);
    });
    // A message cut in the middle cannot be finished: the sender closed itself, and the
    // reader sees the cut after the whole messages.
    const bool stream_cut = near.sender().fd() < 0;
    CHECK(timeout.code() == (stream_cut ? ErrorCode::StreamCut : ErrorCode::Timeout));
    StreamTally tally;
    Error end = error_from([&far = far, &tally] {
      for (;;) tally.add(far.receive_for(200ms).root<test::Blob>());
    });
    INFO(route.name << ": " << timeout.what());
    CHECK(sent > 0);
    CHECK(tally.messages == sent);
    CHECK(tally.mismatches == 0);
    CHECK(tally.out_of_order == 0);
    CHECK(end.code() == (stream_cut ? ErrorCode::TruncatedMessage : ErrorCode::Timeout));
  }
}

TEST_CASE(
    "a reader process that exits mid-send fails the send with PeerClosed, and this "
    "process lives on") {
  REQUIRE(std::signal(SIGPIPE, SIG_DFL) != SIG_ERR);  // the default: SIGPIPE kills
  for (const Route& route : all_routes()) {
    Child reader = fork_with_channel(
        [](Channel& channel) {
          channel.receive();
          channel.receive();
          return 0;  // gone while the parent is still sending
        },
        route.options);
    Random random(14);
    std::uint64_t sent = 0;
    Error error = error_from([&reader, &random, &sent] {
      for (;; ++sent) send_blob(reader.channel, sent, 4 * MiB, random);
    });
    INFO(route.name << ": " << error.what());
    CHECK(error.code() == ErrorCode::PeerClosed);
    CHECK(sent >= 2);
    CHECK(reader.process.wait().success());
    // Alive, and no SIGPIPE is left pending for the process to die of later.
    sigset_t pending;
    sigpending(&pending);
    CHECK_FALSE(sigismember(&pending, SIGPIPE));
  }
}
