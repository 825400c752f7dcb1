#include "idle_trimmer.h"

#include <pthread.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <new>
#include <thread>
#include <vector>


namespace capnsplice::detail {

/// The process's list of scheduled items and the thread that visits them.
class TrimRegistry {
 public:
  /// The one registry, made on first use and never destroyed: the thread may still run
  /// while static destructors do at exit.
  static TrimRegistry& instance() {
    static TrimRegistry* const registry = [] {
      auto* made = new TrimRegistry();  // NOLINT(cppcoreguidelines-owning-memory): see above
      ::pthread_atfork(&TrimRegistry::before_fork, &TrimRegistry::after_fork_in_parent,
                       &TrimRegistry::after_fork_in_child);
      return made;
    }();
    return *registry;
  }

  void add(Trimmable& item) {
    const std::uint64_t generation = fork_generation() + 1;
    std::lock_guard lock(mutex_);
    if (item.scheduled_in_.load(std::memory_order_relaxed) == generation) return;
    item.scheduled_in_.store(generation, std::memory_order_relaxed);
    items_.push_back(&item);
    if (!thread_started_) {
      std::thread([this] { run(); }).detach();
      thread_started_ = true;
    }
    wake_.notify_one();
  }

  void remove(Trimmable& item) {
    std::unique_lock lock(mutex_);
    // Wait first: a trim in progress that returns "keep" puts the item back on the list.
    trimmed_.wait(lock, [&] { return trimming_ != &item; });
    erase(items_, &item);
    erase(pass_, &item);
    item.scheduled_in_.store(0, std::memory_order_relaxed);
  }

 private:
  TrimRegistry() = default;

  static void erase(std::vector<Trimmable*>& list, Trimmable* item) {
    list.erase(std::remove(list.begin(), list.end(), item), list.end());
  }

  [[noreturn]] void run() {
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_.wait(lock, [this] { return !items_.empty(); });
      // A plain sleep: items count their quiet looks, so looks must not come sooner.
      const auto next_look = std::chrono::steady_clock::now() + kTrimCheckInterval;
      while (wake_.wait_until(lock, next_look) != std::cv_status::timeout) {
      }
      // One item at a time, and without the lock while it trims: giving memory back
      // takes a while (unmapping an arena ~70 ms per GiB), and a channel that wakes up
      // meanwhile takes the lock to schedule itself. `trimming_` keeps the item alive:
      // its destructor waits in remove() until it is done.
      pass_.swap(items_);
      while (!pass_.empty()) {
        Trimmable* item = pass_.back();
        pass_.pop_back();
        trimming_ = item;
        lock.unlock();
        const bool keep = item->trim_if_idle();
        lock.lock();
        trimming_ = nullptr;
        trimmed_.notify_all();
        if (keep) {
          items_.push_back(item);
        } else {
          // Release: what trim_if_idle() did happens before a destructor that sees 0.
          item->scheduled_in_.store(0, std::memory_order_release);
        }
      }
    }
  }

  // A fork() child has no trimmer thread and must not inherit a lock it holds: the
  // registry is locked across fork(), and the child starts over with an empty list (its
  // items schedule themselves again: their generation is the parent's). The condition
  // variable is made anew: the child's copy still counts the parent's waiting thread,
  // and glibc's notify then waits for it for ever.
  // The trimmer may hold an item's locks while it trims: fork() waits for that to end,
  // so the child inherits none of them locked.
  static void before_fork() noexcept {
    TrimRegistry& registry = instance();
    registry.mutex_.lock();
    while (registry.trimming_ != nullptr) {
      std::unique_lock lock(registry.mutex_, std::adopt_lock);
      registry.trimmed_.wait(lock);
      lock.release();
    }
  }
  static void after_fork_in_parent() noexcept { instance().mutex_.unlock(); }
  static void after_fork_in_child() noexcept {
    TrimRegistry& registry = instance();
    registry.items_.clear();
    registry.pass_.clear();
    registry.thread_started_ = false;
    // Made over the copies without destroying them (that could wait for the waiter too).
    new (&registry.wake_) std::condition_variable();
    new (&registry.trimmed_) std::condition_variable();
    registry.mutex_.unlock();
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable trimmed_;  // trimming_ changed
  std::vector<Trimmable*> items_;    // scheduled, waiting for the next pass
  std::vector<Trimmable*> pass_;     // this pass's items still to look at
  Trimmable* trimming_ = nullptr;    // the item being looked at, without the lock
  bool thread_started_ = false;
};

void Trimmable::add_to_list() noexcept {
  try {
    TrimRegistry::instance().add(*this);
  } catch (...) {
    // No memory or no thread for the trimmer: the item keeps its memory, as it would
    // without one.
  }
}

void Trimmable::unschedule() noexcept {
  if (scheduled_in_.load(std::memory_order_acquire) == 0) return;
  TrimRegistry::instance().remove(*this);
}

}  // namespace capnsplice::detail
