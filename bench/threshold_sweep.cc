#include "threshold_sweep.h"

#include <capnsplice/options.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "report.h"
#include "results.h"
#include "runner.h"
#include "units.h"

namespace bench {

namespace {

const Transport& transport_named(const std::string& name) {
  for (const Transport& transport : all_transports()) {
    if (transport.name == name) return transport;
  }
  throw std::logic_error("no transport named " + name);
}

/// The smallest size from which the upper path wins at every larger size measured.
std::optional<std::size_t> crossover(const std::vector<std::size_t>& sizes,
                                     const std::vector<bool>& upper_won) {
  std::optional<std::size_t> from;
  for (std::size_t i = sizes.size(); i-- > 0;) {
    if (!upper_won[i]) break;
    from = sizes[i];
  }
  return from;
}

/// `from` to `to`: powers of two with the 1.5x steps between them.
std::vector<std::size_t> sizes_between(std::size_t from, std::size_t to) {
  std::vector<std::size_t> sizes;
  for (std::size_t size = from; size <= to; size *= 2) {
    sizes.push_back(size);
    if (size < to) sizes.push_back(size + size / 2);
  }
  return sizes;
}

/// One sweep: `lower` against `upper` at each size, and the suggested threshold.
struct Sweep {
  const char* lower;
  const char* upper;
  const char* option;   // the SenderOptions field it sets
  std::size_t current;  // that field's default
  std::vector<std::size_t> default_sizes;
};

void run_sweep(std::ostream& out, const Sweep& sweep, const std::vector<std::size_t>& sizes,
               const RunSettings& settings) {
  const Transport& lower = transport_named(sweep.lower);
  const Transport& upper = transport_named(sweep.upper);
  std::vector<Job> jobs;
  for (std::size_t size : sizes) {
    // Interleaved, so that drift of the machine over the sweep hits both paths alike.
    jobs.push_back({&lower, Workload::throughput, size});
    jobs.push_back({&upper, Workload::throughput, size});
  }
  Results results;
  run_jobs(jobs, settings, results);

  out << "\n## Threshold sweep, " << lower.name << " against " << upper.name
      << ": throughput, payload GB/s (median of " << settings.throughput_repetitions << ")\n\n";
  std::vector<std::string> rows;
  std::vector<std::vector<std::string>> cells;
  std::vector<bool> upper_won;
  for (std::size_t size : sizes) {
    const auto by_lower = results.find(lower.name, size, metric::kThroughputGbps);
    const auto by_upper = results.find(upper.name, size, metric::kThroughputGbps);
    const bool both = by_lower && by_upper;
    upper_won.push_back(both && *by_upper > *by_lower);
    rows.push_back(size_label(size));
    cells.push_back({by_lower ? format_significant(*by_lower) : "failed",
                     by_upper ? format_significant(*by_upper) : "failed",
                     both ? format_ratio(*by_upper / *by_lower) : "–",
                     !both              ? "–"
                     : upper_won.back() ? upper.name
                                        : lower.name});
  }
  print_table(out, "payload", {lower.name, upper.name, "ratio", "faster"}, rows, cells);
  out << "\n";
  if (const auto from = crossover(sizes, upper_won)) {
    out << upper.name << " wins at every size from " << size_label(*from) << " up: suggested "
        << sweep.option << " = " << *from << " (the library's default is "
        << size_label(sweep.current) << ").\n";
  } else {
    out << upper.name << " does not win at the largest size measured (the library's default "
        << sweep.option << " is " << size_label(sweep.current) << ").\n";
  }
  for (const Failure& failure : results.failures()) {
    out << "- failed: " << failure.transport << " " << size_label(failure.message_bytes) << ": "
        << failure.reason << "\n";
  }
}

}  // namespace

void run_threshold_sweeps(std::ostream& out, const std::vector<std::size_t>& sizes,
                          const RunSettings& settings) {
  const capnsplice::SenderOptions defaults;
  const Sweep sweeps[] = {
      {"capnsplice-copy", "capnsplice-vmsplice", "copy_threshold_bytes",
       defaults.copy_threshold_bytes, sizes_between(256, 256 * 1024)},
      {"capnsplice-vmsplice", "capnsplice-shm", "shared_memory_threshold_bytes",
       defaults.shared_memory_threshold_bytes, sizes_between(128 * 1024, 32 * 1024 * 1024)},
  };
  for (const Sweep& sweep : sweeps) {
    run_sweep(out, sweep, sizes.empty() ? sweep.default_sizes : sizes, settings);
  }
}

}  // namespace bench
