// Bootstrap across exec and fork: spawn(), child_channel(), fork_with_channel(), and the
// ChildProcess handle that waits for, kills and reaps children.
#include "capnsplice/process.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <csignal>
#include <cstdlib>

#include "capnsplice/handshake.h"
#include "support/blob.h"
#include "support/process_support.h"
#include "support/signal_disposition.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

/// While alive, records how each child ended as SIGCHLD tells it — before the child is
/// reaped, so also for a child a destroyed handle reaps.
class ChildEndRecorder {
 public:
  ChildEndRecorder() {
    pid_ = 0;
    struct sigaction action {};
    action.sa_sigaction = [](int, siginfo_t* info, void*) {
      if (info->si_code != CLD_EXITED && info->si_code != CLD_KILLED) return;
      code_ = info->si_code;
      status_ = info->si_status;
      pid_ = info->si_pid;
    };
    action.sa_flags = SA_SIGINFO | SA_RESTART | SA_NOCLDSTOP;
    REQUIRE(::sigaction(SIGCHLD, &action, &previous_) == 0);
  }
  ~ChildEndRecorder() { ::sigaction(SIGCHLD, &previous_, nullptr); }

  /// The last child that ended: its pid, CLD_EXITED or CLD_KILLED, and exit code or signal.
  pid_t pid() const { return pid_; }
  int code() const { return code_; }
  int status() const { return status_; }

 private:
  static inline volatile std::sig_atomic_t code_ = 0;
  static inline volatile std::sig_atomic_t status_ = 0;
  static inline volatile std::sig_atomic_t pid_ = 0;
  struct sigaction previous_ {};
};

/// Sends a blob of `size` bytes and checks the copy that comes back.
void round_trip(Channel& channel, std::uint64_t seq, std::size_t size) {
  Random random(seq);
  send_blob(channel, seq, size, random);
  auto echoed = channel.receive_as<test::Blob>(Deadline::after(10s));
  CHECK(echoed->getSeq() == seq);
  CHECK(blob_size(echoed.root()) == size);
  CHECK(blob_intact(echoed.root()));
}

}  // namespace

TEST_CASE("a spawned child opens its end from the environment and messages flow both ways") {
  Child child = spawn_peer({"echo"});
  round_trip(child.channel, 1, 100);
  round_trip(child.channel, 2, 2 * MiB);  // large enough to be vmspliced both ways
  child.channel.close_sending();
  ExitStatus status = child.process.wait();
  CHECK(status.success());
  CHECK(status.describe() == "exited with code 0");
}

TEST_CASE("a spawned child inherits exactly its two pipe ends and control socket besides stdio") {
  // A descriptor the test leaves inheritable on purpose: spawn() must still not pass it on.
  UniqueFd inheritable(::fcntl(STDERR_FILENO, F_DUPFD, 10));
  REQUIRE(inheritable.get() > kChildControlFd);
  Child child = spawn({.program = CAPNSPLICE_TEST_PEER,
                       .arguments = {"inventory"},
                       .environment = {"CAPNSPLICE_TEST_EXTRA=added"}});
  auto report = child.channel.receive_as<test::Inventory>(Deadline::after(10s));

  std::vector<int> fds;
  for (int fd : report->getOpenFds()) fds.push_back(fd);
  INFO("descriptors open in the child: " << Catch::Detail::stringify(fds));
  CHECK(std::count(fds.begin(), fds.end(), kChildReceiveFd) == 1);
  CHECK(std::count(fds.begin(), fds.end(), kChildSendFd) == 1);
  CHECK(std::count(fds.begin(), fds.end(), kChildControlFd) == 1);
  CHECK(std::all_of(fds.begin(), fds.end(), [](int fd) { return fd <= kChildControlFd; }));
  CHECK(std::string(report->getVariable().cStr()) == "3,4,5");
  CHECK(std::string(report->getExtra().cStr()) == "added");
  CHECK_FALSE(report->getNonblockingAtStart());  // plain Cap'n Proto can use them as they are
  CHECK_FALSE(report->getVariableAfterOpen());   // grandchildren do not see it
  CHECK(report->getCloexecAfterOpen());          // nor inherit the descriptors
}

TEST_CASE("a spawned child written in plain Cap'n Proto talks to a capnsplice parent") {
  Child child = spawn_peer({"plain"});
  round_trip(child.channel, 3, 64 * KiB);
  CHECK(child.process.wait().success());
}

TEST_CASE("spawning a program that does not exist fails with SystemError naming it") {
  const int fds_before = open_fd_count();
  Error error = error_from([] { spawn({.program = "/nonexistent/capnsplice-plugin"}); });
  CHECK(error.code() == ErrorCode::SystemError);
  CHECK(error.sys_errno() == ENOENT);
  CHECK_THAT(error.what(), Catch::Contains("spawn '/nonexistent/capnsplice-plugin'"));
  CHECK(open_fd_count() == fds_before);
  CHECK(no_children_left());
}

TEST_CASE("child_channel in a process that was not spawned with a channel says so") {
  ::unsetenv("CAPNSPLICE_CHANNEL");
  Error missing = error_from([] { child_channel(); });
  CHECK(missing.code() == ErrorCode::InvalidArgument);
  CHECK_THAT(missing.what(), Catch::Contains("CAPNSPLICE_CHANNEL is not set"));

  ::setenv("CAPNSPLICE_CHANNEL", "3;4", 1);
  Error malformed = error_from([] { child_channel(); });
  CHECK(malformed.code() == ErrorCode::InvalidArgument);
  CHECK(malformed.sys_errno() == 0);

  ::setenv("CAPNSPLICE_CHANNEL", "900,901", 1);  // well-formed, but nothing is open there
  Error not_open = error_from([] { child_channel(); });
  CHECK(not_open.code() == ErrorCode::InvalidArgument);
  CHECK_THAT(not_open.what(), Catch::Contains("receive descriptor 900 is not open"));
  ::unsetenv("CAPNSPLICE_CHANNEL");
}

TEST_CASE(
    "child_channel refuses descriptors that cannot be a channel and leaves them as they "
    "were") {
  int ends[2];
  REQUIRE(::pipe(ends) == 0);  // inheritable, as a spawned child's are
  UniqueFd read_end(ends[0]);
  UniqueFd write_end(ends[1]);
  UniqueFd not_a_pipe(::open("/dev/null", O_RDWR));
  const auto r = std::to_string(read_end.get());
  const auto w = std::to_string(write_end.get());
  const auto flags = [](int fd) { return ::fcntl(fd, F_GETFD); };
  const int stdin_flags = flags(STDIN_FILENO);
  const int stdout_flags = flags(STDOUT_FILENO);
  const struct {
    std::string value;
    std::string says;
  } refused[] = {
      {"0,1", "CAPNSPLICE_CHANNEL='0,1': receive descriptor 0 is standard input, "
              "output or error, not a channel end"},
      {r + "," + r, "send descriptor " + r + " is also the receive descriptor"},
      {r + "," + w + "," + w, "control descriptor " + w + " is also the send descriptor"},
      {w + "," + r, "receive descriptor " + w + ": descriptor is not open for reading"},
      {r + "," + std::to_string(not_a_pipe.get()), "is not a pipe"},
      {r + "," + w + "," + std::to_string(not_a_pipe.get()), "is not a socket"},
  };
  for (const auto& bad : refused) {
    ::setenv("CAPNSPLICE_CHANNEL", bad.value.c_str(), 1);
    Error error = error_from([] { child_channel(); });
    INFO(bad.value << ": " << error.what());
    CHECK(error.code() == ErrorCode::InvalidArgument);
    CHECK(error.sys_errno() == 0);
    CHECK_THAT(error.what(), Catch::Contains(bad.says));
    // Nothing was taken over: all still open, none made close-on-exec.
    CHECK(flags(STDIN_FILENO) == stdin_flags);
    CHECK(flags(STDOUT_FILENO) == stdout_flags);
    CHECK(flags(read_end.get()) == 0);
    CHECK(flags(write_end.get()) == 0);
    CHECK(flags(not_a_pipe.get()) == 0);
  }
  ::unsetenv("CAPNSPLICE_CHANNEL");
}

TEST_CASE("a forked child runs the function with its end and exits with its return value") {
  Child child = fork_with_channel([](Channel& parent) {
    auto blob = parent.receive_as<test::Blob>();
    parent.sender().send_copy(blob.message().segments(), Deadline::never());
    return 7;
  });
  round_trip(child.channel, 4, 1000);
  CHECK(child.process.wait().exit_code() == 7);
}

TEST_CASE("a forked child keeps only its own end, so closing the parent's end ends it") {
  // If the child still held the parent's end, its receive would never see end of stream.
  Child child = fork_with_channel([](Channel& parent) {
    try {
      parent.receive();
    } catch (const Error& error) {
      return error.code() == ErrorCode::PeerClosed ? 3 : 4;
    }
    return 5;
  });
  { Channel closing = std::move(child.channel); }
  auto status = child.process.wait_for(10s);
  REQUIRE(status.has_value());
  CHECK(status->exit_code() == 3);
}

TEST_CASE("a forked child whose function throws exits with code 70") {
  Child child = fork_with_channel([](Channel&) -> int { throw std::runtime_error("on purpose"); });
  CHECK(child.process.wait().exit_code() == 70);
}

TEST_CASE("wait_for gives up on a running child, and kill ends it with the signal given") {
  Child child = spawn_peer({"sink"});
  CHECK_FALSE(child.process.wait_for(50ms).has_value());
  CHECK_FALSE(child.process.try_wait().has_value());
  CHECK(child.process.running());
  child.process.kill(SIGTERM);
  ExitStatus status = child.process.wait();
  CHECK(status.killed());
  CHECK(status.signal() == SIGTERM);
  CHECK_THAT(status.describe(), Catch::StartsWith("killed by signal 15"));
  CHECK_FALSE(child.process.running());
  CHECK(no_children_left());
}

TEST_CASE("a child that exits on end of stream exits cleanly when its handle is destroyed") {
  ChildEndRecorder ended;
  pid_t pid;
  {
    Child child = spawn_peer({"sink"});  // exits 0 once its peer is gone
    pid = child.process.pid();
  }  // the channel closes first, then the handle waits for the child
  CHECK(ended.pid() == pid);
  CHECK(ended.code() == CLD_EXITED);  // not killed
  CHECK(ended.status() == 0);
  CHECK(::kill(pid, 0) == -1);  // reaped: not even a zombie holds the pid
  CHECK(no_children_left());
}

TEST_CASE(
    "a child handle destroyed while its child ignores end of stream kills it after the "
    "grace period and reaps it") {
  ChildEndRecorder ended;
  pid_t pid;
  std::chrono::steady_clock::time_point destroyed;
  {
    Child child = spawn_peer({"stall"});  // never reads, so never sees end of stream
    pid = child.process.pid();
    REQUIRE(::kill(pid, 0) == 0);
    destroyed = std::chrono::steady_clock::now();
  }
  const double took_ms = ms_since(destroyed);
  CHECK(took_ms >= static_cast<double>(kChildExitGracePeriod.count()));
  CHECK(took_ms < 10'000);
  CHECK(ended.pid() == pid);
  CHECK(ended.code() == CLD_KILLED);
  CHECK(ended.status() == SIGKILL);
  CHECK(::kill(pid, 0) == -1);  // gone entirely: not even a zombie holds the pid
  CHECK(errno == ESRCH);
  CHECK(no_children_left());
}

TEST_CASE("a spawned child starts with SIGPIPE and SIGCHLD at their default disposition") {
  Child child = [] {
    SignalDisposition no_sigpipe(SIGPIPE, SIG_IGN);
    SignalDisposition no_sigchld(SIGCHLD, SIG_IGN);  // restored before the child may exit
    return spawn_peer({"signals"});
  }();
  child.channel.close_sending();
  CHECK(child.process.wait().exit_code() == 10);  // 11, 12 or 13: it inherited SIG_IGN
}

TEST_CASE("a child that exited is reaped by try_wait and leaves no zombie") {
  Child child = spawn_peer({"echo"});
  child.channel.close_sending();
  std::optional<ExitStatus> status;
  const auto give_up = std::chrono::steady_clock::now() + 10s;
  while (!(status = child.process.try_wait()) && std::chrono::steady_clock::now() < give_up) {
    ::usleep(1000);
  }
  REQUIRE(status.has_value());
  CHECK(status->success());
  CHECK(no_children_left());
}

TEST_CASE("a parent and its spawned child exchange hellos with version and limits") {
  Child child = spawn_peer({"hello", "thumbnailer", "3"});
  HelloOptions hello{.application = "thumbnailer", .application_version = 3};
  PeerHello peer = exchange_hello(child.channel, hello);
  CHECK(peer.protocol_version == kProtocolVersion);
  CHECK(peer.application == "thumbnailer");
  CHECK(peer.application_version == 3);
  CHECK(peer.max_message_bytes == ReceiveLimits{}.max_message_bytes);
  CHECK(peer.pid == child.process.pid());
  round_trip(child.channel, 5, 100);
}

TEST_CASE("a spawned child with another application version fails the hello on both sides") {
  Child child = spawn_peer({"hello", "thumbnailer", "4"});
  HelloOptions hello{.application = "thumbnailer", .application_version = 3};
  Error error = error_from([&] { exchange_hello(child.channel, hello); });
  CHECK(error.code() == ErrorCode::IncompatiblePeer);
  CHECK_THAT(error.what(), Catch::Contains("channel 'peer': hello: the peer speaks application "
                                           "'thumbnailer' version 4, this end expects "
                                           "'thumbnailer' version 3"));
  CHECK(child.process.wait().exit_code() == 3);  // the child refused this end just the same
}
