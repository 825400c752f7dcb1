// bench/machine.h — which machine the figures came from.
#pragma once

#include <string>

namespace bench {

/// "2 cores · AMD EPYC · Linux 6.1.0 x86_64 · pipe-max-size 1 MiB · THP madvise ·
/// vmsplice maps pages" (the last: the library's probe, see SenderStats)
std::string describe_machine();

/// The 1-minute load average (/proc/loadavg): other work on a 2-core machine shows up
/// in every figure, so the report prints it.
double load_average();

}  // namespace bench
