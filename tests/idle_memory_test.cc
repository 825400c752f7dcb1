// Memory follows traffic: a channel that carried a few messages costs a few pages, and a
// channel end idle for a second gives back what a burst faulted in — without any call on
// it (the trimmer thread, src/idle_trimmer.h). The figures are printed for the note; the
// bounds are the ones issue 13 sets, with the process's own noise around them.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "support/blob.h"
#include "capnsplice/channel.h"
#include "support/resident_memory.h"
#include "support/sanitizer.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;


/// Longer than the trimmer needs (idle 1 s, looked at every 250 ms, both ends of a pair).
constexpr auto kIdleLongEnough = 2500ms;
/// How long a test waits at most for memory to come back, on a machine that is busy.
constexpr auto kGenerousWait = 15s;

/// Waits until this process's resident memory is at most `bound` bytes, or
/// kGenerousWait passed; returns the last figure.
std::size_t resident_once_at_most(std::size_t bound) {
  const auto give_up = std::chrono::steady_clock::now() + kGenerousWait;
  std::size_t resident = resident_bytes();
  while (resident > bound && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(100ms);
    resident = resident_bytes();
  }
  return resident;
}

/// Starts peak_resident_bytes() over from what is resident now.
void reset_peak_resident() {
  std::FILE* clear_refs = std::fopen("/proc/self/clear_refs", "we");
  if (clear_refs == nullptr) return;
  std::fputs("5", clear_refs);  // 5: reset the peak resident set size (proc(5))
  std::fclose(clear_refs);
}

/// Raises the descriptor limit to fit `descriptors` more; false when the hard limit is
/// too low (then the test says so and checks fewer pairs).
bool room_for_descriptors(std::size_t descriptors) {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return false;
  const rlim_t wanted = descriptors + 256;
  if (limit.rlim_cur >= wanted) return true;
  if (limit.rlim_max < wanted) return false;
  limit.rlim_cur = wanted;
  return ::setrlimit(RLIMIT_NOFILE, &limit) == 0;
}

using Pairs = std::vector<std::pair<Channel, Channel>>;

/// One small message each way on every pair.
void exchange_small_messages(Pairs& pairs, Random& random) {
  for (auto& [a, b] : pairs) {
    send_blob(a, 1, 64, random);
    CHECK(blob_intact(b.receive().root<test::Blob>()));
    send_blob(b, 1, 64, random);
    CHECK(blob_intact(a.receive().root<test::Blob>()));
  }
}

double per_pair_kib(std::size_t before, std::size_t after, std::size_t pairs) {
  return after > before ? static_cast<double>(after - before) / KiB / static_cast<double>(pairs) : 0;
}

}  // namespace

TEST_CASE("a thousand channel pairs after one small message each way stay under 64 MiB") {
  std::size_t count = 1000;
  if (!room_for_descriptors(count * 8)) {
    WARN("RLIMIT_NOFILE's hard limit is too low for 1000 pairs: checking 100");
    count = 100;
  }
  Random random(13);
  const std::size_t before = resident_bytes();
  Pairs pairs;
  pairs.reserve(count);
  for (std::size_t i = 0; i < count; ++i) pairs.push_back(Channel::pair());
  exchange_small_messages(pairs, random);
  const std::size_t after = resident_bytes();
  std::printf("%zu pairs after one small message each way: +%.1f MiB (%.1f KiB per pair)\n", count,
              static_cast<double>(after - before) / MiB, per_pair_kib(before, after, count));
  // 64 MiB for 1000 pairs; before pools started with small pages, one pair cost 4 MiB.
  // (Sanitizers' allocators and shadow memory count too: the plain build checks it.)
  if (!kUnderSanitizer) CHECK(after - before <= count * 64 * KiB);
}

TEST_CASE("idle channel ends give back what a burst of traffic faulted in, with no call on them") {
  constexpr std::size_t kPairs = 16;
  Random random(14);
  Pairs pairs;
  for (std::size_t i = 0; i < kPairs; ++i) pairs.push_back(Channel::pair());
  exchange_small_messages(pairs, random);
  std::this_thread::sleep_for(kIdleLongEnough);  // the process's own first-use pages settle
  const std::size_t at_rest = resident_bytes();
  reset_peak_resident();

  // Each way: a 16 MiB message (shared memory), and 64 KiB ones through pool and ring.
  for (auto& [a, b] : pairs) {
    for (Channel* sender : {&a, &b}) {
      Channel& receiver = sender == &a ? b : a;
      std::thread reader([&] {
        for (int i = 0; i < 65; ++i) CHECK(blob_intact(receiver.receive().root<test::Blob>()));
      });
      send_blob(*sender, 0, 16 * MiB, random);
      for (int i = 1; i < 65; ++i) send_blob(*sender, static_cast<std::uint64_t>(i), 64 * KiB, random);
      reader.join();
    }
  }
  const std::size_t peak = peak_resident_bytes();
  // Every idle end back to at most 64 KiB of what the burst added (the trimmer needs
  // 1-1.5 s; a busy machine may take longer).
  const std::size_t bound = at_rest + kPairs * 2 * 64 * KiB;
  const std::size_t after_idle = resident_once_at_most(bound);
  std::printf("%zu pairs: at rest %.1f MiB, peak in the burst %.1f MiB, idle again %.1f MiB "
              "(+%.1f KiB per pair over rest; anonymous %.1f MiB, shared %.1f MiB: arenas and "
              "rings are shared, pools anonymous)\n",
              kPairs, static_cast<double>(at_rest) / MiB, static_cast<double>(peak) / MiB,
              static_cast<double>(after_idle) / MiB, per_pair_kib(at_rest, after_idle, kPairs),
              static_cast<double>(status_bytes("RssAnon:")) / MiB,
              static_cast<double>(status_bytes("RssShmem:")) / MiB);
  if (kUnderSanitizer) return;  // their allocators hold freed memory back (quarantine)
  CHECK(peak > at_rest + 64 * MiB);  // the burst did fault memory in (one pair's arenas)
  CHECK(after_idle <= bound);
}

TEST_CASE("messages in the pipe while their sender's pages are given back arrive intact") {
  auto [a, b] = Channel::pair();
  Random random(15);
  // vmspliced from the pool, left unread while the pool goes idle and its pages are
  // discarded: the pipe holds the only reference to them by the time they are read.
  // The second message reuses the pool after the trim.
  send_blob(a, 0, 32 * KiB, random);
  std::this_thread::sleep_for(kIdleLongEnough);
  send_blob(a, 1, 32 * KiB, random);
  for (std::uint64_t seq = 0; seq < 2; ++seq) {
    auto message = b.receive();
    auto blob = message.root<test::Blob>();
    CHECK(blob.getSeq() == seq);
    CHECK(blob_intact(blob));
  }
}

TEST_CASE("a received message held across an idle spell keeps its bytes") {
  auto [a, b] = Channel::pair();
  Random random(16);
  send_blob(a, 7, 4 * KiB, random);
  auto held = b.receive();
  std::this_thread::sleep_for(kIdleLongEnough);
  auto blob = held.root<test::Blob>();
  CHECK(blob.getSeq() == 7);
  CHECK(blob_intact(blob));
}

TEST_CASE("a fork child gives idle memory back too") {
  // The child of a process whose trimmer thread runs has no such thread (fork copies
  // only the calling one): it must start its own, and not hang on the parent's lock or
  // condition variable.
  auto [a, b] = Channel::pair();
  Random random(17);
  send_blob(a, 1, 64, random);
  CHECK(blob_intact(b.receive().root<test::Blob>()));
  std::this_thread::sleep_for(kIdleLongEnough);  // trimmed: the parent's thread waits
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    Pairs pairs;
    for (int i = 0; i < 4; ++i) pairs.push_back(Channel::pair());
    Random child_random(18);
    bool intact = true;
    for (auto& [c, d] : pairs) {
      for (int i = 0; i < 32; ++i) {  // 2 MiB through c's pool and d's ring
        send_blob(c, 2, 64 * KiB, child_random);
        intact = intact && blob_intact(d.receive().root<test::Blob>());
      }
    }
    const std::size_t busy = resident_bytes();
    const std::size_t idle = kUnderSanitizer ? busy : resident_once_at_most(busy - 4 * MiB);
    std::printf("fork child: %.1f MiB after traffic, %.1f MiB idle\n",
                static_cast<double>(busy) / MiB, static_cast<double>(idle) / MiB);
    std::fflush(stdout);
    ::_exit(!intact ? 1 : (idle + 4 * MiB > busy && !kUnderSanitizer) ? 2 : 0);
  }
  int status = 0;
  pid_t reaped = 0;
  for (int waited_ms = 0; waited_ms < 30000 && reaped == 0; waited_ms += 10) {
    reaped = ::waitpid(child, &status, WNOHANG);
    if (reaped == 0) std::this_thread::sleep_for(10ms);
  }
  if (reaped == 0) {
    ::kill(child, SIGKILL);
    ::waitpid(child, &status, 0);
  }
  CHECK(reaped == child);
  REQUIRE(WIFEXITED(status));
  INFO("exit status 1: a message was damaged; 2: the child's idle memory stayed");
  CHECK(WEXITSTATUS(status) == 0);
}
