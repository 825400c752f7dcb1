// How much memory this process has resident, from /proc/self/status (VmRSS).
#pragma once

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace capnsplice::testing {

/// Resident set size in bytes, or 0 when /proc cannot be read. A plain fopen/fgets
/// rather than iostreams: cheap enough to sample many times a second.
inline std::size_t resident_bytes() {
  std::FILE* status = std::fopen("/proc/self/status", "re");
  if (status == nullptr) return 0;
  std::size_t kib = 0;
  char line[256];
  while (std::fgets(line, sizeof line, status) != nullptr) {
    if (std::strncmp(line, "VmRSS:", 6) == 0) {
      kib = static_cast<std::size_t>(std::strtoull(line + 6, nullptr, 10));
      break;
    }
  }
  std::fclose(status);
  return kib * 1024;
}

}  // namespace capnsplice::testing
