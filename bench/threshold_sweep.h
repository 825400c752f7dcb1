// bench/threshold_sweep.h — where each capnsplice path starts to beat the one below it.
//
// Streams the same payload sizes through two forced paths and prints, for each size,
// both throughputs and which won; then the size from which the larger path wins at
// every larger size measured. Two sweeps set the library's two thresholds:
//
//   copy -> vmsplice        256 B .. 256 KiB   SenderOptions::copy_threshold_bytes
//   vmsplice -> shm         128 KiB .. 32 MiB  SenderOptions::shared_memory_threshold_bytes
#pragma once

#include <cstddef>
#include <ostream>
#include <vector>

#include "run_settings.h"

namespace bench {

/// Runs both sweeps; `sizes`, when not empty, replaces both default size ranges.
void run_threshold_sweeps(std::ostream& out, const std::vector<std::size_t>& sizes,
                          const RunSettings& settings);

}  // namespace bench
