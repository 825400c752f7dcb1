// The trimmer thread (src/idle_trimmer.h) gives memory back while channels go on: an item
// that takes long to trim holds up neither other channels nor anything but its own end.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <optional>
#include <thread>

#include "idle_trimmer.h"

namespace {

using capnsplice::detail::Trimmable;
using Clock = std::chrono::steady_clock;

/// How long the slow item's trim takes: long against every bound below.
constexpr auto kSlowTrim = std::chrono::seconds(3);

/// An item whose trim takes kSlowTrim (as unmapping a large arena can), once, then says it
/// holds nothing more.
class SlowItem final : public Trimmable {
 public:
  /// `trim_done_when_destroyed` (may be null) learns whether the trim had finished by the
  /// time the destructor's unschedule() returned.
  explicit SlowItem(std::atomic<bool>* trim_done_when_destroyed = nullptr)
      : trim_done_when_destroyed_(trim_done_when_destroyed) {}
  ~SlowItem() {
    unschedule();
    if (trim_done_when_destroyed_ != nullptr) trim_done_when_destroyed_->store(left_.load());
  }

  bool trim_if_idle() noexcept override {
    entered_.store(true);
    std::this_thread::sleep_for(kSlowTrim);
    left_.store(true);
    return false;
  }

  void schedule_now() { schedule(); }
  bool entered() const { return entered_.load(); }
  bool left() const { return left_.load(); }

 private:
  std::atomic<bool>* const trim_done_when_destroyed_;
  std::atomic<bool> entered_{false};
  std::atomic<bool> left_{false};
};

/// An item that asks for another look forever and does nothing.
class QuietItem final : public Trimmable {
 public:
  ~QuietItem() { unschedule(); }
  bool trim_if_idle() noexcept override { return true; }
  void schedule_now() { schedule(); }
};

void wait_until_trimming(const SlowItem& item) {
  const auto give_up = Clock::now() + std::chrono::seconds(10);
  while (!item.entered() && Clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  REQUIRE(item.entered());
}

}  // namespace

TEST_CASE("a channel that becomes busy while the trimmer gives another's memory back does not "
          "wait for it",
          "[trimmer]") {
  SlowItem slow;
  slow.schedule_now();
  wait_until_trimming(slow);

  QuietItem waking;
  const auto start = Clock::now();
  waking.schedule_now();  // takes the registry's lock: free while `slow` trims
  const auto took = Clock::now() - start;
  CHECK_FALSE(slow.left());
  // Generous: with the lock held for the whole trim this took kSlowTrim (3 s).
  CHECK(took < std::chrono::seconds(1));
}

TEST_CASE("destroying an item waits for its trim in progress, and only for that", "[trimmer]") {
  std::atomic<bool> trim_done_when_destroyed{false};
  auto slow = std::make_unique<SlowItem>(&trim_done_when_destroyed);
  slow->schedule_now();
  wait_until_trimming(*slow);

  // Another item comes and goes meanwhile without waiting.
  const auto start = Clock::now();
  {
    QuietItem other;
    other.schedule_now();
  }
  CHECK(Clock::now() - start < std::chrono::seconds(1));

  auto destroyed = std::async(std::launch::async, [&] { slow.reset(); });
  // Still waiting a while into the trim: the item's members must outlive it.
  CHECK(destroyed.wait_for(std::chrono::milliseconds(500)) == std::future_status::timeout);
  destroyed.get();
  CHECK(trim_done_when_destroyed.load());
}

/// Set when the trimmer looks at a KeepingItem after its destructor ran.
std::atomic<bool> looked_at_after_destruction{false};

TEST_CASE("an item destroyed while its trim is in progress is never looked at again, even when "
          "that trim asked for another look",
          "[trimmer]") {
  /// Asks for another look every time; its first trim takes 1 s.
  class KeepingItem final : public Trimmable {
   public:
    ~KeepingItem() {
      unschedule();
      destroyed_.store(true);
    }
    bool trim_if_idle() noexcept override {
      if (destroyed_.load()) looked_at_after_destruction.store(true);
      if (!entered_.exchange(true)) std::this_thread::sleep_for(std::chrono::seconds(1));
      return true;
    }
    void schedule_now() { schedule(); }
    bool entered() const { return entered_.load(); }

   private:
    std::atomic<bool> entered_{false};
    std::atomic<bool> destroyed_{false};
  };

  // The storage outlives the item, so a look at the destroyed item reads its flag rather
  // than freed memory (AddressSanitizer would also report that).
  std::optional<KeepingItem> item;
  item.emplace();
  item->schedule_now();
  const auto give_up = Clock::now() + std::chrono::seconds(10);
  while (!item->entered() && Clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  REQUIRE(item->entered());
  item.reset();  // waits for the trim, which asks to stay on the list
  std::this_thread::sleep_for(4 * capnsplice::detail::kTrimCheckInterval);
  CHECK_FALSE(looked_at_after_destruction.load());
}
