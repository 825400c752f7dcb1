// bench/report.h — what a run prints and writes: markdown tables, CSV, plot.
#pragma once

#include <cstddef>
#include <ostream>
#include <string>
#include <vector>

#include "host_workload.h"
#include "many_workload.h"
#include "results.h"

namespace bench {

/// What the tables show, in which order.
struct ReportLayout {
  std::vector<std::string> transports;       ///< columns of throughput and RSS tables
  std::vector<std::string> round_trip_rows;  ///< rows of the round-trip table
  std::vector<std::size_t> throughput_sizes;
  std::vector<std::size_t> round_trip_sizes;
  bool throughput = true;
  bool round_trip = true;
  bool rss = true;
  bool large_messages = true;
  std::vector<std::size_t> large_message_sizes;
  std::vector<std::string> large_message_transports;  ///< columns of that table
  /// The large messages again, each after the sender wrote this many bytes elsewhere
  /// (WorkloadPlan::evict_bytes); 0: not measured (--quick, --sizes).
  std::size_t large_message_evict_bytes = 0;
  double idle_child_rss_mib = 0;                      ///< where every side's RSS starts
  bool host = true;
  std::vector<std::size_t> host_plugins;  ///< plugin counts of the host workload
  std::vector<std::size_t> host_sizes;    ///< its request payloads
  HostPlan host_plan;                     ///< its window, reply size and times
  bool many = true;
  std::vector<std::size_t> many_channels;  ///< channel counts of the many workload
  std::vector<std::size_t> many_sizes;     ///< its payloads
  ManyPlan many_plan;                      ///< its times
  bool nonblocking = true;                 ///< the non-blocking sender's section
};

/// Throughput, messages/s, round-trip and RSS tables with ratios against
/// capnp-socketpair, the host and many-channels workloads' against their socketpair
/// ways, the non-blocking sender's figures, then the failures.
void print_markdown(std::ostream& out, const Results& results, const ReportLayout& layout);

/// Rows "transport,message_bytes,metric,value" with a header line. Throws on I/O errors.
void write_csv(const std::string& path, const Results& results);

/// Throughput against payload size, one line per transport, as PNG: gnuplot, or
/// python3 with matplotlib when gnuplot is missing. Throws when neither works.
void write_plot(const std::string& path, const Results& results, const ReportLayout& layout,
                const std::string& subtitle);

/// The many-channels workload's tables (report_many.cc).
void print_many(std::ostream& out, const Results& results, const ReportLayout& layout);

/// A markdown table: `cells[r][c]` under `columns`, each row led by `rows[r]`.
void print_table(std::ostream& out, const std::string& corner,
                 const std::vector<std::string>& columns, const std::vector<std::string>& rows,
                 const std::vector<std::vector<std::string>>& cells);

}  // namespace bench
