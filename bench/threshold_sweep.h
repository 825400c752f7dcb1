// bench/threshold_sweep.h — where vmsplice starts to beat a copy.
//
// Streams the same payload sizes through capnsplice-copy and capnsplice-vmsplice and
// prints, for each size, both throughputs and which path won; then the size from which
// vmsplice wins at every larger size: the value for SenderOptions::copy_threshold_bytes.
#pragma once

#include <cstddef>
#include <ostream>
#include <vector>

#include "run_settings.h"

namespace bench {

/// 256 B to 256 KiB: powers of two with the 1.5x steps between them.
std::vector<std::size_t> default_sweep_sizes();

void run_threshold_sweep(std::ostream& out, const std::vector<std::size_t>& sizes,
                         const RunSettings& settings);

}  // namespace bench
