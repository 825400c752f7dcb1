// The pipe budget: a channel's pipe starts at the kernel's default, its sender raises it
// once when a stream needs it, a refused raise is reported and costs nothing but speed,
// and a pipe the application gave is never resized.
#include <fcntl.h>
#include <grp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <thread>
#include <vector>

#include "blob.h"
#include "capnsplice/channel.h"
#include "test_support.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

constexpr std::size_t kDefaultPipe = 64 * KiB;  // 16 pages, for a user within budget

std::size_t pipe_size(int fd) { return static_cast<std::size_t>(::fcntl(fd, F_GETPIPE_SZ)); }

/// What a raise to the default pipe_bytes gets where nothing refuses it.
std::size_t raised_size() {
  std::size_t limit = MiB;
  if (FILE* file = std::fopen("/proc/sys/fs/pipe-max-size", "re")) {
    unsigned long value = 0;
    if (std::fscanf(file, "%lu", &value) == 1 && value < limit) limit = value;
    std::fclose(file);
  }
  return limit;
}

/// try_send()s 4 KiB blobs, nobody reading, until the pipe takes one no more. Returns
/// how many went whole.
std::uint64_t send_until_full(Channel& channel, Random& random) {
  for (std::uint64_t seq = 0;; ++seq) {
    auto message = channel.new_message();
    fill_blob(message.init_root<test::Blob>(), seq, 4 * KiB, random);
    if (channel.try_send(std::move(message)) != SendStatus::sent) return seq;
  }
}

/// Receives blobs 0 to count-1 and checks each is whole and in order.
bool receive_intact(Channel& channel, std::uint64_t count) {
  for (std::uint64_t seq = 0; seq < count; ++seq) {
    auto blob = channel.receive_as<test::Blob>(Deadline::after(10s));
    if (blob->getSeq() != seq || !blob_intact(blob.root())) return false;
  }
  return true;
}

/// A uid no account uses: its pipe budget is this test's alone.
constexpr uid_t kBudgetUid = 64917;

/// Spends this (unprivileged) user's pipe budget (pipe-user-pages-soft) on pipes of
/// pipe-max-size, as an application with many big pipes would. Returns them: the budget
/// stays spent while they are open. Empty when the kernel never refused (no soft limit).
std::vector<UniqueFd> spend_pipe_budget() {
  std::vector<UniqueFd> pipes;
  for (int i = 0; i < 4096; ++i) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) break;
    pipes.emplace_back(fds[0]);
    pipes.emplace_back(fds[1]);
    if (::fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(raised_size())) < 0) return pipes;
  }
  return {};
}

}  // namespace

TEST_CASE("a channel's pipe starts at the kernel's default size and is raised once a stream "
          "fills it") {
  auto [near, far] = Channel::pair();
  CHECK(pipe_size(near.sender().fd()) == kDefaultPipe);
  CHECK(near.sender().stats().pipe_bytes == kDefaultPipe);
  CHECK(pipe_size(far.sender().fd()) == kDefaultPipe);

  Random random(13);
  const std::uint64_t sent = send_until_full(near, random);
  // The first full pipe raised it: far more than 64 KiB went in before it filled again.
  CHECK(sent * 4 * KiB > 2 * kDefaultPipe);
  const SenderStats stats = near.sender().stats();
  CHECK(stats.pipe_bytes == raised_size());
  CHECK_FALSE(stats.pipe_raise_refused);
  CHECK(pipe_size(near.sender().fd()) == raised_size());
  CHECK(pipe_size(far.sender().fd()) == kDefaultPipe);  // the idle direction stays small
  CHECK(receive_intact(far, sent));
  near.flush();  // the blob the full pipe left queued
  CHECK(far.receive_as<test::Blob>(Deadline::after(10s))->getSeq() == sent);
}

TEST_CASE("a message larger than the default pipe raises the pipe before it is written") {
  // By vmsplice: on the shared-memory path only a descriptor would cross the pipe.
  auto [near, far] = Channel::pair(
      ChannelOptions().with_pipe_bytes(512 * KiB).with_send_path(SendPath::vmsplice));
  CHECK(pipe_size(near.sender().fd()) == kDefaultPipe);
  Random random(14);
  auto message = near.new_message();
  fill_blob(message.init_root<test::Blob>(), 0, 200 * KiB, random);
  // Nobody reads yet: a 64 KiB pipe would take a part and leave the rest queued.
  CHECK(near.try_send(std::move(message)) == SendStatus::sent);
  CHECK(near.sender().stats().pipe_bytes == 512 * KiB);
  CHECK(receive_intact(far, 1));
}

TEST_CASE("a pipe the application gave keeps its size however full the stream gets") {
  int to_far[2];
  int to_near[2];
  REQUIRE(::pipe2(to_far, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(to_near, O_CLOEXEC) == 0);
  REQUIRE(::fcntl(to_far[1], F_SETPIPE_SZ, static_cast<int>(128 * KiB)) > 0);
  Channel near = Channel::from_fds(UniqueFd(to_near[0]), UniqueFd(to_far[1]));
  Channel far = Channel::from_fds(UniqueFd(to_far[0]), UniqueFd(to_near[1]));
  Random random(15);
  const std::uint64_t sent = send_until_full(near, random);
  CHECK(sent * 4 * KiB <= 128 * KiB);
  CHECK(pipe_size(near.sender().fd()) == 128 * KiB);
  CHECK(near.sender().stats().pipe_bytes == 128 * KiB);
  CHECK_FALSE(near.sender().stats().pipe_raise_refused);
  CHECK(receive_intact(far, sent));
  near.flush();
  CHECK(far.receive_as<test::Blob>(Deadline::after(10s))->getSeq() == sent);
}

TEST_CASE("a raise the user's pipe budget refuses is reported and every message still "
          "arrives intact") {
  if (::geteuid() != 0) {
    WARN("not root: cannot become a user whose pipe budget this test may spend; checked nothing");
    return;
  }
  // In a child of another uid (root's pipes are never refused): spend that user's budget,
  // then stream 4 MiB through a channel whose sender finds its pipe full many times.
  const pid_t child = fork_child([] {
    if (::setgroups(0, nullptr) != 0 || ::setgid(kBudgetUid) != 0 || ::setuid(kBudgetUid) != 0) {
      return 10;
    }
    const std::vector<UniqueFd> budget = spend_pipe_budget();
    if (budget.empty()) return 11;
    auto [near, far] = Channel::pair();
    constexpr std::uint64_t kMessages = 256;
    std::thread writer([&near = near] {
      Random random(16);
      for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
        auto message = near.new_message();
        fill_blob(message.init_root<test::Blob>(), seq, 16 * KiB, random);
        near.send(std::move(message));
      }
    });
    const bool intact = receive_intact(far, kMessages);
    writer.join();
    const SenderStats stats = near.sender().stats();
    if (!intact) return 12;
    if (stats.messages != kMessages) return 13;
    if (!stats.pipe_raise_refused) return 14;
    if (stats.pipe_bytes >= kDefaultPipe || stats.pipe_bytes != pipe_size(near.sender().fd())) {
      return 15;
    }
    return 0;
  });
  CHECK(wait_child(child) == 0);
}
