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

/// The smallest size from which vmsplice wins at every larger size measured.
std::optional<std::size_t> crossover(const std::vector<std::size_t>& sizes,
                                     const std::vector<bool>& vmsplice_won) {
  std::optional<std::size_t> from;
  for (std::size_t i = sizes.size(); i-- > 0;) {
    if (!vmsplice_won[i]) break;
    from = sizes[i];
  }
  return from;
}

}  // namespace

std::vector<std::size_t> default_sweep_sizes() {
  std::vector<std::size_t> sizes;
  for (std::size_t size = 256; size <= 256 * 1024; size *= 2) {
    sizes.push_back(size);
    if (size < 256 * 1024) sizes.push_back(size + size / 2);
  }
  return sizes;
}

void run_threshold_sweep(std::ostream& out, const std::vector<std::size_t>& sizes,
                         const RunSettings& settings) {
  const Transport& copy = transport_named("capnsplice-copy");
  const Transport& vmsplice = transport_named("capnsplice-vmsplice");
  std::vector<Job> jobs;
  for (std::size_t size : sizes) {
    // Interleaved, so that drift of the machine over the sweep hits both paths alike.
    jobs.push_back({&copy, Workload::throughput, size});
    jobs.push_back({&vmsplice, Workload::throughput, size});
  }
  Results results;
  run_jobs(jobs, settings, results);

  out << "\n## Copy/vmsplice threshold sweep: throughput, payload GB/s (median of "
      << settings.throughput_repetitions << ")\n\nA frame is the payload plus 32 bytes "
      << "(segment table, root pointer, Chunk struct).\n\n";
  std::vector<std::string> rows;
  std::vector<std::vector<std::string>> cells;
  std::vector<bool> vmsplice_won;
  for (std::size_t size : sizes) {
    const auto by_copy = results.find(copy.name, size, metric::kThroughputGbps);
    const auto by_vmsplice = results.find(vmsplice.name, size, metric::kThroughputGbps);
    const bool both = by_copy && by_vmsplice;
    vmsplice_won.push_back(both && *by_vmsplice > *by_copy);
    rows.push_back(size_label(size));
    cells.push_back({by_copy ? format_significant(*by_copy) : "failed",
                     by_vmsplice ? format_significant(*by_vmsplice) : "failed",
                     both ? format_ratio(*by_vmsplice / *by_copy) : "–",
                     !both                 ? "–"
                     : vmsplice_won.back() ? "vmsplice"
                                           : "copy"});
  }
  print_table(out, "payload", {"copy GB/s", "vmsplice GB/s", "vmsplice/copy", "faster"}, rows,
              cells);

  const std::size_t current = capnsplice::SenderOptions{}.copy_threshold_bytes;
  out << "\n";
  if (const auto from = crossover(sizes, vmsplice_won)) {
    out << "vmsplice wins at every size from " << size_label(*from)
        << " up: suggested copy_threshold_bytes = " << *from << " (" << size_label(*from)
        << "; the library's default is " << size_label(current) << ").\n";
  } else {
    out << "vmsplice does not win at the largest size measured: keep copying (the library's "
           "default copy_threshold_bytes is "
        << size_label(current) << ").\n";
  }
  for (const Failure& failure : results.failures()) {
    out << "- failed: " << failure.transport << " " << size_label(failure.message_bytes) << ": "
        << failure.reason << "\n";
  }
}

}  // namespace bench
