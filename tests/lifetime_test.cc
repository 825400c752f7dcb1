// Lifetime: a peer that exits or is killed at any point (mid-message included) is seen
// promptly by the other end, on receive and on send; nothing hangs, SIGPIPE kills
// nobody; graceful close, timeouts and interrupts work across processes.
#include <poll.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <csignal>
#include <cstdio>
#include <thread>
#include <vector>

#include "capnsplice/process.h"
#include "support/blob.h"
#include "support/process_support.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

constexpr int kRuns = 100;
/// Far above the ~1 ms it takes: only a hang breaks it.
constexpr double kNoHangMs = 2000;

/// Latencies from a kill to the error that reported it, in ms.
struct Latencies {
  std::vector<double> ms;

  /// Prints p50, p90 and max (for the report) and checks nothing hung.
  void print(const char* what) {
    std::sort(ms.begin(), ms.end());
    std::printf("%s: %zu kills, peer gone after p50 %.3f ms, p90 %.3f ms, max %.3f ms\n", what,
                ms.size(), ms[ms.size() / 2], ms[ms.size() * 9 / 10], ms.back());
    CHECK(ms.back() < kNoHangMs);
  }
};

}  // namespace

TEST_CASE(
    "a child killed with kill -9 at random points is seen as gone by the receiver, "
    "each time, mid-message included") {
  Random random(20240601);
  Latencies latencies;
  int truncated = 0;
  for (int run = 0; run < kRuns; ++run) {
    Child child = spawn_peer({"stream", std::to_string(run)});
    for (auto messages = random.below(8); messages > 0; --messages) {
      child.channel.receive(Deadline::after(10s));
    }
    ::usleep(static_cast<useconds_t>(random.below(3000)));
    const auto killed_at = std::chrono::steady_clock::now();
    child.process.kill(SIGKILL);
    Error error = receive_until_error(child.channel);
    latencies.ms.push_back(ms_since(killed_at));
    INFO("run " << run << ": " << error.what());
    REQUIRE(error.peer_gone());
    truncated += error.code() == ErrorCode::TruncatedMessage ? 1 : 0;
    CHECK(child.process.wait().signal() == SIGKILL);
  }
  latencies.print("receiver");
  std::printf("receiver: %d of %d kills came mid-message (TruncatedMessage)\n", truncated, kRuns);
  CHECK(no_children_left());
}

TEST_CASE(
    "a child killed with kill -9 at random points is seen as gone by the sender, "
    "each time") {
  Random random(20240602);
  Latencies latencies;
  for (int run = 0; run < kRuns; ++run) {
    Child child = spawn_peer({"sink"}, ChannelOptions().with_name("sink").with_send_timeout(10s));
    std::atomic<std::int64_t> killed_at_ns{0};
    std::thread killer([&, pause = random.below(3000)] {
      ::usleep(static_cast<useconds_t>(pause));
      killed_at_ns = std::chrono::steady_clock::now().time_since_epoch().count();
      ::kill(child.process.pid(), SIGKILL);
    });
    Error error = error_from([&] {
      for (std::uint64_t seq = 0;; ++seq) {
        send_blob(child.channel, seq, random.below(4) == 0 ? 2 * MiB : 1000, random);
      }
    });
    killer.join();
    const std::chrono::steady_clock::time_point killed_at(
        std::chrono::steady_clock::duration(killed_at_ns.load()));
    latencies.ms.push_back(ms_since(killed_at));
    INFO("run " << run << ": " << error.what());
    REQUIRE(error.code() == ErrorCode::PeerClosed);
    CHECK(child.process.wait().signal() == SIGKILL);
  }
  latencies.print("sender");
}

TEST_CASE("a child killed in the middle of writing a message is seen as TruncatedMessage") {
  Child child = spawn_peer({"half-frame"});
  pollfd readable{child.channel.receive_fd(), POLLIN, 0};
  REQUIRE(::poll(&readable, 1, 10'000) == 1);  // the partial frame is in the pipe
  CHECK_FALSE(child.channel.try_receive().has_value());
  child.process.kill(SIGKILL);
  Error error = receive_until_error(child.channel);
  CHECK(error.code() == ErrorCode::TruncatedMessage);
  CHECK(error.peer_gone());
  CHECK_THAT(error.what(), Catch::Contains("stream ended 108 bytes into a frame of 8008 bytes"));
}

TEST_CASE("a child sees its parent killed with kill -9 as PeerClosed and exits") {
  // This process adopts the orphaned grandchildren, to learn how they ended.
  REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
  Random random(20240603);
  Latencies latencies;
  for (int run = 0; run < 20; ++run) {
    // The middle process spawns a "sink" and tells us its pid, then is killed.
    Child middle = fork_with_channel([](Channel& test) {
      Child sink = spawn_peer({"sink"});
      test.send_struct<test::Blob>([&](test::Blob::Builder blob) {
        blob.setSeq(static_cast<std::uint64_t>(sink.process.pid()));
      });
      for (;;) ::pause();
      return 0;
    });
    const auto sink_pid =
        static_cast<pid_t>(middle.channel.receive_as<test::Blob>(Deadline::after(10s))->getSeq());
    ::usleep(static_cast<useconds_t>(random.below(2000)));
    const auto killed_at = std::chrono::steady_clock::now();
    middle.process.kill(SIGKILL);
    REQUIRE(middle.process.wait().signal() == SIGKILL);
    ChildProcess orphan(sink_pid, "orphaned sink");  // ours now, as the subreaper
    auto status = orphan.wait_for(10s);
    latencies.ms.push_back(ms_since(killed_at));
    REQUIRE(status.has_value());
    CHECK(status->success());  // the sink exits 0 once its peer is gone
  }
  latencies.print("child of a killed parent");
  ::prctl(PR_SET_CHILD_SUBREAPER, 0);
}

TEST_CASE("after close_sending the child reads what was in flight and this end still receives") {
  // 10 x 64 KiB fit in the pipes, so the echoes cannot block the sends (that would be a
  // deadlock of the test's own making).
  Child child = spawn_peer({"echo"});
  Random random(4);
  for (std::uint64_t seq = 0; seq < 10; ++seq) send_blob(child.channel, seq, 64 * KiB, random);
  child.channel.close_sending();
  for (std::uint64_t seq = 0; seq < 10; ++seq) {
    auto echoed = child.channel.receive_as<test::Blob>(Deadline::after(10s));
    CHECK(echoed->getSeq() == seq);
    CHECK(blob_intact(echoed.root()));
  }
  CHECK(receive_until_error(child.channel).code() == ErrorCode::PeerClosed);
  CHECK(child.process.wait().success());
  Error closed = error_from([&] { send_blob(child.channel, 11, 10, random); });
  CHECK(closed.code() == ErrorCode::PeerClosed);
}

TEST_CASE(
    "SIGPIPE never kills the process when a killed child's pipe breaks, "
    "with the default disposition in place") {
  REQUIRE(std::signal(SIGPIPE, SIG_DFL) != SIG_ERR);
  for (SendPath path : {SendPath::copy, SendPath::vmsplice}) {
    Child child = spawn_peer({"sink"}, ChannelOptions().with_send_path(path));
    child.process.kill(SIGKILL);
    child.process.wait();
    Random random(5);
    Error error = error_from([&] { send_blob(child.channel, 0, 100 * KiB, random); });
    CHECK(error.code() == ErrorCode::PeerClosed);
  }
  struct sigaction current {};
  REQUIRE(::sigaction(SIGPIPE, nullptr, &current) == 0);
  CHECK(current.sa_handler == SIG_DFL);
  sigset_t pending;
  ::sigpending(&pending);
  CHECK_FALSE(::sigismember(&pending, SIGPIPE));
}

TEST_CASE("a receive from a silent child times out, and the channel stays usable") {
  Child child = spawn_peer({"echo"});
  Error error = error_from([&] { child.channel.receive_for(50ms); });
  CHECK(error.code() == ErrorCode::Timeout);
  Random random(6);
  send_blob(child.channel, 9, 100, random);
  CHECK(child.channel.receive_as<test::Blob>(Deadline::after(10s))->getSeq() == 9);
}

TEST_CASE(
    "a receive blocked on a silent child is woken by interrupt_receive from another "
    "thread") {
  Child child = spawn_peer({"sink"});
  std::thread waker([&] {
    std::this_thread::sleep_for(50ms);
    child.channel.interrupt_receive();
  });
  Error error = error_from([&] { child.channel.receive(); });
  waker.join();
  CHECK(error.code() == ErrorCode::Interrupted);
}
