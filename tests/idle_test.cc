// Waiting costs no CPU: a receiver or poller with nothing to do spins for at most
// spin_before_block (100 µs by default), then sleeps in the kernel until data, a
// deadline or an interrupt wakes it.
#include <catch2/catch.hpp>
#include <chrono>

#include "capnsplice/channel.h"
#include "capnsplice/poller.h"
#include "support/cpu_time.h"
#include "support/error_from.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

/// How long each idle wait lasts, and the CPU it may use meanwhile: a wait that spun
/// instead of sleeping would use nearly all of it.
constexpr auto kIdleFor = 300ms;
constexpr auto kCpuAllowed = 15ms;

/// Runs `wait` (which idles for kIdleFor) and checks the CPU this thread used meanwhile.
template <typename Wait>
void check_sleeps_while(Wait&& wait) {
  const auto cpu_before = thread_cpu_time();
  wait();
  const double cpu_ms = std::chrono::duration<double>(thread_cpu_time() - cpu_before).count() * 1e3;
  INFO("CPU used while idle: " << cpu_ms << " ms of " << kIdleFor.count() << " ms");
  CHECK(cpu_ms < static_cast<double>(kCpuAllowed.count()));
}

}  // namespace

TEST_CASE("a receiver waiting on a silent channel sleeps instead of spinning") {
  auto [near, far] = Channel::pair();
  check_sleeps_while([&far = far] {
    CHECK(error_from([&far] { far.receive_for(kIdleFor); }).code() == ErrorCode::Timeout);
  });
}

TEST_CASE("a poller waiting on silent channels sleeps instead of spinning") {
  auto [near, far] = Channel::pair();
  Poller poller;
  poller.add(far, 1);
  check_sleeps_while([&poller] { CHECK(poller.wait(Deadline::after(kIdleFor)).empty()); });
}
