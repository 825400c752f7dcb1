// spawn()'s options for hosts: descriptors given to the child at chosen numbers, and a
// signal the child gets when its parent dies.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <csignal>
#include <optional>
#include <string>

#include "capnsplice/process.h"
#include "support/descriptors.h"
#include "support/process_support.h"
#include "support/signal_disposition.h"
#include "test.capnp.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

/// While alive, this process adopts orphaned descendants (so a test can reap a grandchild
/// whose parent it killed, and see how it ended).
class AdoptsOrphans {
 public:
  AdoptsOrphans() { REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0); }
  ~AdoptsOrphans() { ::prctl(PR_SET_CHILD_SUBREAPER, 0); }
  AdoptsOrphans(const AdoptsOrphans&) = delete;
  AdoptsOrphans& operator=(const AdoptsOrphans&) = delete;
};

/// Waits up to `timeout` for the adopted `pid` to end; its wait status, or none.
std::optional<int> wait_for_adopted(pid_t pid, std::chrono::milliseconds timeout) {
  const auto give_up = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) return status;
    if (std::chrono::steady_clock::now() >= give_up) return std::nullopt;
    ::usleep(2000);
  }
}

/// Starts a peer that spawns a stalled child of its own with `parent_death_signal`,
/// kills that peer with SIGKILL, and says how the stalled grandchild ended within
/// `patience` (none: it still runs; it is then killed and reaped here).
std::optional<int> grandchild_end_after_its_parent_is_killed(int parent_death_signal,
                                                            std::chrono::milliseconds patience) {
  const AdoptsOrphans adopts;
  Child host = spawn_peer({"host-of-stalled", std::to_string(parent_death_signal)});
  const auto grandchild =
      static_cast<pid_t>(host.channel.receive_as<test::Blob>(Deadline::after(10s))->getSeq());
  REQUIRE(grandchild > 0);
  host.process.kill(SIGKILL);
  CHECK(host.process.wait().signal() == SIGKILL);
  std::optional<int> status = wait_for_adopted(grandchild, patience);
  if (!status) {
    ::kill(grandchild, SIGKILL);
    CHECK(wait_for_adopted(grandchild, 10s).has_value());
  }
  return status;
}

}  // namespace

TEST_CASE(
    "a spawned child gets the descriptors given at the numbers chosen, even numbers that are "
    "another's source or their own, and no others") {
  // A descriptor left inheritable on purpose, numbered between the given ones' targets
  // and the channel's: the child must not get it.
  UniqueFd inheritable(::fcntl(STDERR_FILENO, F_DUPFD, 30));
  UniqueFd alpha = memfd_with("alpha", 40);
  UniqueFd beta = memfd_with("beta", 40);
  UniqueFd gamma = memfd_with("gamma", 40);
  const int a = alpha.get();
  const int b = beta.get();
  const int g = gamma.get();
  REQUIRE(inheritable.get() < std::min(a, b));

  // a and b swapped: each number is the other's source, the order in which dup2 calls
  // overwrite. g keeps its number: dup2(g, g) would leave it close-on-exec.
  Child child = spawn(
      {.program = CAPNSPLICE_TEST_PEER,
       .arguments = {"inventory", std::to_string(a), std::to_string(b), std::to_string(g)},
       .channel = peer_channel_options(),
       .descriptors = {{.parent_fd = a, .child_fd = b},
                       {.parent_fd = b, .child_fd = a},
                       {.parent_fd = g, .child_fd = g}}});
  auto report = child.channel.receive_as<test::Inventory>(Deadline::after(10s));

  std::vector<int> fds;
  for (int fd : report->getOpenFds()) fds.push_back(fd);
  std::sort(fds.begin(), fds.end());
  INFO("descriptors open in the child: " << Catch::Detail::stringify(fds));
  std::vector<int> expected = {0, 1, 2, kChildReceiveFd, kChildSendFd, kChildControlFd, a, b, g};
  std::sort(expected.begin(), expected.end());
  CHECK(fds == expected);
  REQUIRE(report->getContents().size() == 3);
  CHECK(std::string(report->getContents()[0].cStr()) == "beta");   // child's a: parent's b
  CHECK(std::string(report->getContents()[1].cStr()) == "alpha");  // child's b: parent's a
  CHECK(std::string(report->getContents()[2].cStr()) == "gamma");
  CHECK(report->getParentDeathSignal() == 0);

  // The parent's descriptors are still its own, unchanged.
  CHECK(first_bytes(a) == "alpha");
  CHECK(first_bytes(b) == "beta");
  CHECK(::fcntl(a, F_GETFD) == FD_CLOEXEC);
  child.channel.close_sending();
  CHECK(child.process.wait().success());
}

TEST_CASE(
    "descriptors or a signal a child cannot be given are refused with InvalidArgument and "
    "start nothing") {
  UniqueFd memfd = memfd_with("x", 10);
  const int fd = memfd.get();
  // Closed, and high enough that the channel spawn() makes does not take the number.
  UniqueFd closed = memfd_with("y", 900);
  const int closed_number = closed.get();
  closed.reset();
  const struct {
    std::vector<InheritedFd> descriptors;
    int signal;
    std::string says;
  } refused[] = {
      {{{fd, kChildSendFd}}, 0, "the channel's descriptors are 3, 4 and 5 in the child"},
      {{{fd, -1}}, 0, "choose a child number from 0 to 1023"},
      {{{fd, kMaxChildFd + 1}}, 0, "choose a child number from 0 to 1023"},
      {{{fd, 7}, {fd, 7}}, 0, "that child number is given twice"},
      {{{closed_number, 7}}, 0, "the parent descriptor is not open"},
      {{}, 999, "parent_death_signal 999 is not a signal"},
  };
  make_thread_wake_fd();
  const int fds_before = open_fd_count();
  for (const auto& bad : refused) {
    Error error = error_from([&] {
      spawn({.program = CAPNSPLICE_TEST_PEER,
             .arguments = {"echo"},
             .descriptors = bad.descriptors,
             .parent_death_signal = bad.signal});
    });
    INFO(error.what());
    CHECK(error.code() == ErrorCode::InvalidArgument);
    CHECK_THAT(error.what(), Catch::Contains(bad.says));
    CHECK_THAT(error.what(), Catch::Contains("spawn '" CAPNSPLICE_TEST_PEER "'"));
  }
  CHECK(open_fd_count() == fds_before);
  CHECK(no_children_left());
}

TEST_CASE("a child number whose copies would pass the descriptor limit is InvalidArgument") {
  rlimit saved{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &saved) == 0);
  rlimit lowered = saved;
  lowered.rlim_cur = std::min<rlim_t>(saved.rlim_cur, 256);
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &lowered) == 0);
  UniqueFd memfd = memfd_with("x", 10);
  Error error = error_from([&] {
    spawn({.program = CAPNSPLICE_TEST_PEER,
           .arguments = {"echo"},
           .descriptors = {{.parent_fd = memfd.get(), .child_fd = 300}}});
  });
  ::setrlimit(RLIMIT_NOFILE, &saved);
  CHECK(error.code() == ErrorCode::InvalidArgument);
  CHECK_THAT(error.what(), Catch::Contains("past this process's limit of 256 (RLIMIT_NOFILE)"));
  CHECK(no_children_left());
}

TEST_CASE(
    "a child spawned with a parent-death signal starts like any other: its descriptors, "
    "default SIGPIPE and SIGCHLD, and the signal set") {
  UniqueFd memfd = memfd_with("gamma", 20);
  Child child = spawn({.program = CAPNSPLICE_TEST_PEER,
                       .arguments = {"inventory", "9"},
                       .channel = peer_channel_options(),
                       .descriptors = {{.parent_fd = memfd.get(), .child_fd = 9}},
                       .parent_death_signal = SIGTERM});
  auto report = child.channel.receive_as<test::Inventory>(Deadline::after(10s));
  std::vector<int> fds;
  for (int fd : report->getOpenFds()) fds.push_back(fd);
  std::sort(fds.begin(), fds.end());
  INFO("descriptors open in the child: " << Catch::Detail::stringify(fds));
  CHECK(fds == std::vector<int>{0, 1, 2, kChildReceiveFd, kChildSendFd, kChildControlFd, 9});
  CHECK(std::string(report->getContents()[0].cStr()) == "gamma");
  CHECK(report->getParentDeathSignal() == SIGTERM);
  CHECK(std::string(report->getVariable().cStr()) == "3,4,5");
  child.channel.close_sending();
  CHECK(child.process.wait().success());

  Child signals = [] {
    SignalDisposition no_sigpipe(SIGPIPE, SIG_IGN);
    SignalDisposition no_sigchld(SIGCHLD, SIG_IGN);  // restored before the child may exit
    return spawn({.program = CAPNSPLICE_TEST_PEER,
                  .arguments = {"signals"},
                  .channel = peer_channel_options(),
                  .parent_death_signal = SIGTERM});
  }();
  signals.channel.close_sending();
  CHECK(signals.process.wait().exit_code() == 10);  // 11, 12 or 13: it inherited SIG_IGN
}

TEST_CASE(
    "a child spawned with a parent-death signal is ended by it when its host is killed, even "
    "a signal the host ignores") {
  // Without the signal, a stalled child outlives its killed host: the test can tell.
  CHECK_FALSE(grandchild_end_after_its_parent_is_killed(0, 300ms).has_value());

  // SIGTERM ignored here and so in the host (exec keeps it ignored, as nohup's SIGHUP):
  // the child must still end by it.
  const SignalDisposition ignored(SIGTERM, SIG_IGN);
  const std::optional<int> status = grandchild_end_after_its_parent_is_killed(SIGTERM, 10s);
  REQUIRE(status.has_value());
  CHECK(WIFSIGNALED(*status));
  CHECK(WTERMSIG(*status) == SIGTERM);
}

TEST_CASE("spawning a program missing from PATH with a parent-death signal fails naming it") {
  make_thread_wake_fd();
  const int fds_before = open_fd_count();
  Error error = error_from([] {
    spawn({.program = "capnsplice-no-such-plugin", .parent_death_signal = SIGKILL});
  });
  CHECK(error.code() == ErrorCode::SystemError);
  CHECK(error.sys_errno() == ENOENT);
  CHECK_THAT(error.what(), Catch::Contains("spawn 'capnsplice-no-such-plugin'"));

  Error not_executable = error_from([] {
    spawn({.program = "/dev/null", .parent_death_signal = SIGKILL});
  });
  CHECK(not_executable.code() == ErrorCode::SystemError);
  CHECK(not_executable.sys_errno() == EACCES);
  CHECK_THAT(not_executable.what(), Catch::Contains("execve"));
  CHECK(open_fd_count() == fds_before);
  CHECK(no_children_left());
}
