// bench/process_figures.h — what a measurement reads about its own process.
//
// The host and many-channels workloads run in a fresh process each (fresh_process.h)
// and report that process's memory and descriptors; both read them here.
#pragma once

#include <string_view>

namespace bench {

/// CPU time of this process so far (user + system, every thread), in seconds.
double process_cpu_seconds();

/// A "kB" line of /proc/self/status in MiB: "VmRSS:" (resident now), "VmHWM:" (peak).
/// 0 when the line is missing.
double status_mib(std::string_view field);

/// Descriptors open in this process (/proc/self/fd, not counting the one that reads it).
int open_fds();

/// Raises the soft RLIMIT_NOFILE to the hard limit: hundreds of channels take more
/// descriptors than the usual soft limit of 1024. Children forked later inherit it.
void raise_descriptor_limit();

}  // namespace bench
