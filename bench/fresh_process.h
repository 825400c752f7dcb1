// bench/fresh_process.h — a measurement in a process of its own, its figures brought back.
//
// A figure such as a peak RSS, the descriptors open or the longest call of a loop belongs
// to one measurement only when that measurement has a process to itself; and a crash or
// a hang in it must fail that measurement, never the whole run. run_in_fresh_process()
// forks (ChildProcess), runs the measurement there and copies its outcome back through
// memory the two processes share. The outcome is copied as bytes, so it must be
// trivially copyable: plain figures, nothing that points into the child's heap.
//
// The two parts it is made of serve on their own too: SharedWithChildren (memory a
// forked child writes and its parent reads) and run_reporting_error() (a child's body
// whose exception leaves its text there rather than vanish with the child).
#pragma once

#include <kj/exception.h>
#include <sys/mman.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <exception>
#include <functional>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "child_process.h"

namespace bench {

/// One T in memory shared with every child forked after it was made (MAP_SHARED |
/// MAP_ANONYMOUS): what a child writes there, its parent reads once the child exited.
template <typename T>
class SharedWithChildren {
  static_assert(std::is_trivially_copyable_v<T> && std::is_trivially_destructible_v<T>,
                "a child's write must be all there is to a T: no destructor, no heap");

 public:
  SharedWithChildren() {
    void* memory =
        ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) throw std::runtime_error("mmap of memory shared with a child failed");
    value_ = new (memory) T{};
  }
  ~SharedWithChildren() { ::munmap(value_, sizeof(T)); }
  SharedWithChildren(const SharedWithChildren&) = delete;
  SharedWithChildren& operator=(const SharedWithChildren&) = delete;

  T& operator*() const noexcept { return *value_; }
  T* operator->() const noexcept { return value_; }

 private:
  T* value_;
};

/// Why a child failed, as text its parent can read: empty while it has not.
using ChildError = std::array<char, 480>;

/// For the body of a child: runs `body` and returns 0; when it throws a std::exception or
/// a kj::Exception (Cap'n Proto's), writes the text into `error` (cut to fit) and
/// returns 1. Anything else thrown is left to ChildProcess::spawn (exit status 1).
inline int run_reporting_error(const std::function<void()>& body, ChildError& error) {
  const auto fail = [&error](const char* what) {
    std::snprintf(error.data(), error.size(), "%s", what);
    return 1;
  };
  try {
    body();
    return 0;
  } catch (const std::exception& exception) {
    return fail(exception.what());
  } catch (const kj::Exception& exception) {
    return fail(exception.getDescription().cStr());
  }
}

/// Waits for `child` to exit (unless it was reaped already), at most `timeout`; throws
/// unless it exited 0: "timed out after N s" (the child killed), else the child's
/// `error`, else how it ended.
inline void wait_for_success(ChildProcess& child, const ChildError& error,
                             std::chrono::seconds timeout) {
  const Clock::time_point deadline = Clock::now() + timeout;
  if (child.running() &&
      wait_for_event(std::span(&child, 1), -1, deadline) == ChildEvent::timed_out) {
    child.kill_and_reap();
    throw std::runtime_error("timed out after " + std::to_string(timeout.count()) + " s");
  }
  if (!child.succeeded()) {
    throw std::runtime_error(error[0] != '\0' ? error.data() : child.describe_exit());
  }
}

/// Runs `body` in a freshly forked process and returns what it returned there. Throws
/// std::runtime_error when the body threw (with its text), the process died (how), or
/// it was still running after `timeout` (it is killed then).
template <typename Outcome>
Outcome run_in_fresh_process(const std::function<Outcome()>& body, std::chrono::seconds timeout) {
  static_assert(std::is_trivially_copyable_v<Outcome>,
                "the outcome is copied out of the child's memory as bytes");
  struct Report {
    Outcome outcome;
    ChildError error;
  };
  SharedWithChildren<Report> report;
  ChildProcess child = ChildProcess::spawn(
      [&] { return run_reporting_error([&] { report->outcome = body(); }, report->error); });
  wait_for_success(child, report->error, timeout);
  return report->outcome;
}

}  // namespace bench
