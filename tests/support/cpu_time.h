// CPU time the calling thread has used, for tests that check a wait does not spin.
#pragma once

#include <time.h>

#include <chrono>

namespace capnsplice::testing {

inline std::chrono::nanoseconds thread_cpu_time() {
  timespec now{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return std::chrono::seconds(now.tv_sec) + std::chrono::nanoseconds(now.tv_nsec);
}

}  // namespace capnsplice::testing
