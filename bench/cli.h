// bench/cli.h — the command line of capnsplice-bench.
#pragma once

#include <cstddef>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace bench {

struct CommandLine {
  bool help = false;
  bool quick = false;
  bool threshold_sweep = false;
  std::optional<std::string> csv_path;
  std::optional<std::string> plot_path;
  std::vector<std::string> transports;  ///< empty: every transport
  std::vector<std::size_t> sizes;       ///< empty: each workload's default sizes
  std::vector<std::size_t> plugins;     ///< host workload; empty: the default counts
  std::vector<std::size_t> channels;    ///< many workload; empty: the default counts
  bool throughput = true;
  bool round_trip = true;
  bool rss = true;
  bool large_messages = true;
  bool host = true;
  bool many = true;
  bool nonblocking = true;
};

/// A command line that cannot be followed; what() says why.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Throws UsageError for unknown options, transports, workloads or unreadable sizes.
CommandLine parse_command_line(int argc, char** argv);

void print_help(std::ostream& out);

}  // namespace bench
