// How much memory this process has resident, from /proc/self/status (VmRSS).
#pragma once

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace capnsplice::testing {

/// A size line of /proc/self/status in bytes ("VmRSS:", "VmHWM:"), or 0 when /proc
/// cannot be read. A plain fopen/fgets rather than iostreams: cheap enough to sample
/// many times a second.
inline std::size_t status_bytes(const char* field) {
  std::FILE* status = std::fopen("/proc/self/status", "re");
  if (status == nullptr) return 0;
  const std::size_t length = std::strlen(field);
  std::size_t kib = 0;
  char line[256];
  while (std::fgets(line, sizeof line, status) != nullptr) {
    if (std::strncmp(line, field, length) == 0) {
      kib = static_cast<std::size_t>(std::strtoull(line + length, nullptr, 10));
      break;
    }
  }
  std::fclose(status);
  return kib * 1024;
}

/// Resident set size in bytes (VmRSS), or 0 when /proc cannot be read.
inline std::size_t resident_bytes() { return status_bytes("VmRSS:"); }

/// The most this process had resident since it started or since the peak was reset
/// (VmHWM), or 0 when /proc cannot be read.
inline std::size_t peak_resident_bytes() { return status_bytes("VmHWM:"); }

}  // namespace capnsplice::testing
