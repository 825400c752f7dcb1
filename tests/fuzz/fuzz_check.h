// What a fuzz target does when a property it checks does not hold: say which, and abort
// so libFuzzer records the input as a crash.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace capnsplice::fuzz {

inline void require(bool holds, const char* property) {
  if (holds) return;
  std::fprintf(stderr, "fuzz property violated: %s\n", property);
  std::abort();
}

}  // namespace capnsplice::fuzz
