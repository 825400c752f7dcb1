#include <algorithm>
#include <functional>
#include <optional>

#include "nonblocking_sender.h"
#include "report.h"
#include "report_cells.h"
#include "transport.h"
#include "units.h"

namespace bench {

namespace {

std::vector<std::string> size_labels(const std::vector<std::size_t>& sizes) {
  std::vector<std::string> labels;
  labels.reserve(sizes.size());
  for (std::size_t size : sizes) labels.push_back(size_label(size));
  return labels;
}

/// Rows = sizes, columns = transports, one metric.
void print_size_by_transport(std::ostream& out, const ReportLayout& layout,
                             const std::vector<std::size_t>& sizes, const CellMaker& cell) {
  std::vector<std::vector<std::string>> cells;
  for (std::size_t size : sizes) {
    std::vector<std::string>& row = cells.emplace_back();
    for (const std::string& transport : layout.transports) {
      row.push_back(cell(transport, size, kBaselineTransport));
    }
  }
  print_table(out, "payload", layout.transports, size_labels(sizes), cells);
}

void print_throughput(std::ostream& out, const Results& results, const ReportLayout& layout) {
  out << "\n## Throughput: one-way stream, payload GB/s (ratio to " << kBaselineTransport
      << ")\n\n";
  print_size_by_transport(out, layout, layout.throughput_sizes,
                          CellMaker(results, metric::kThroughputGbps, [](double value) {
                            return format_significant(value) + " GB/s";
                          }));
  std::vector<std::size_t> small;
  for (std::size_t size : layout.throughput_sizes) {
    if (size <= 4096) small.push_back(size);
  }
  if (small.empty()) return;
  out << "\n## Messages per second, small payloads (ratio to " << kBaselineTransport << ")\n\n";
  print_size_by_transport(out, layout, small,
                          CellMaker(results, metric::kMessagesPerSecond, format_rate));
}

/// Which ways the capnsplice senders sent, so a figure can be read against its path.
void print_paths(std::ostream& out, const Results& results, const ReportLayout& layout) {
  std::vector<std::string> columns;
  for (const std::string& transport : layout.transports) {
    for (std::size_t size : layout.throughput_sizes) {
      if (results.find_paths(transport, size)) {
        columns.push_back(transport);
        break;
      }
    }
  }
  if (columns.empty()) return;
  out << "\n## Paths the senders took in the throughput runs (share of messages)\n\n";
  std::vector<std::vector<std::string>> cells;
  for (std::size_t size : layout.throughput_sizes) {
    std::vector<std::string>& row = cells.emplace_back();
    for (const std::string& transport : columns) {
      row.push_back(results.find_paths(transport, size).value_or("–"));
    }
  }
  print_table(out, "payload", columns, size_labels(layout.throughput_sizes), cells);
}

/// "0.52 / 1.03": each side's system calls, or "–" where they were not counted.
std::string side_pair(const Results& results, const std::string& row, std::size_t size,
                      const char* side_a_metric, const char* side_b_metric) {
  const auto a = results.find(row, size, side_a_metric);
  const auto b = results.find(row, size, side_b_metric);
  if (!a || !b) return "–";
  return format_significant(*a) + " / " + format_significant(*b);
}

/// Rows × sizes of system calls per message, sides side by side; nothing if none counted.
void print_system_calls(std::ostream& out, const Results& results, const std::string& title,
                        const std::vector<std::string>& rows, const std::vector<std::size_t>& sizes,
                        const char* side_a_metric, const char* side_b_metric) {
  std::vector<std::vector<std::string>> cells;
  bool any = false;
  for (const std::string& row_name : rows) {
    std::vector<std::string>& row = cells.emplace_back();
    for (std::size_t size : sizes) {
      row.push_back(side_pair(results, row_name, size, side_a_metric, side_b_metric));
      any = any || row.back() != "–";
    }
  }
  if (!any) {
    out << "\n(" << title << ": not counted. The kernel's raw_syscalls:sys_enter tracepoint "
           "needs tracefs mounted (as root: mount -t tracefs nodev /sys/kernel/tracing) and "
           "perf_event_open allowed.)\n";
    return;
  }
  out << "\n## " << title
      << " (counted by the kernel: perf's raw_syscalls:sys_enter in each side's process, "
         "every thread, from the start to the last message; +spin rows are mostly the "
         "polls of busy waiting)\n\n";
  print_table(out, "transport", size_labels(sizes), rows, cells);
}

void print_round_trip(std::ostream& out, const Results& results, const ReportLayout& layout) {
  out << "\n## Round trip, µs (ratio to " << kBaselineTransport
      << " in the same mode; lower is better; +spin = busy-poll)\n\n";
  const std::pair<const char*, const char*> percentiles[] = {
      {"p50", metric::kRttP50}, {"p99", metric::kRttP99}, {"p99.9", metric::kRttP999}};
  std::vector<std::string> columns;
  for (std::size_t size : layout.round_trip_sizes) {
    for (const auto& [label, name] : percentiles) columns.push_back(size_label(size) + " " + label);
  }
  std::vector<std::vector<std::string>> cells;
  for (const std::string& row_name : layout.round_trip_rows) {
    const bool spinning = row_name.ends_with("+spin");
    const std::string baseline = spinning ? spin_name(kBaselineTransport) : kBaselineTransport;
    std::vector<std::string>& row = cells.emplace_back();
    for (std::size_t size : layout.round_trip_sizes) {
      for (const auto& [label, name] : percentiles) {
        row.push_back(CellMaker(results, name, format_significant)(row_name, size, baseline));
      }
    }
  }
  print_table(out, "transport", columns, layout.round_trip_rows, cells);
}

void print_rss(std::ostream& out, const Results& results, const ReportLayout& layout) {
  out << "\n## Peak RSS during the throughput runs, MiB: sender / receiver (ratio of the larger "
         "side to "
      << kBaselineTransport << ")\n\nA forked side that does nothing peaks at "
      << format_significant(layout.idle_child_rss_mib) << " MiB.\n\n";
  const CellMaker larger_side(results, metric::kPeakRss, format_significant);
  std::vector<std::vector<std::string>> cells;
  for (std::size_t size : layout.throughput_sizes) {
    std::vector<std::string>& row = cells.emplace_back();
    for (const std::string& transport : layout.transports) {
      const auto sender = results.find(transport, size, metric::kPeakRssSender);
      const auto receiver = results.find(transport, size, metric::kPeakRssReceiver);
      row.push_back(!sender || !receiver
                        ? larger_side.missing(transport, size)
                        : format_significant(*sender) + " / " + format_significant(*receiver) +
                              larger_side.ratio(transport, size, kBaselineTransport));
    }
  }
  print_table(out, "payload", layout.transports, size_labels(layout.throughput_sizes), cells);
}

/// One table of large-message latency: `p50_metric` with its p99 in brackets.
void print_large_message_table(std::ostream& out, const Results& results,
                               const ReportLayout& layout, const char* p50_metric,
                               const char* p99_metric) {
  const CellMaker p50(results, p50_metric, format_significant);
  std::vector<std::vector<std::string>> cells;
  for (std::size_t size : layout.large_message_sizes) {
    std::vector<std::string>& row = cells.emplace_back();
    for (const std::string& transport : layout.large_message_transports) {
      const auto p99 = results.find(transport, size, p99_metric);
      std::string cell = p50(transport, size, kBaselineTransport);
      if (p99) cell += " [p99 " + format_significant(*p99) + "]";
      row.push_back(cell);
    }
  }
  print_table(out, "message", layout.large_message_transports,
              size_labels(layout.large_message_sizes), cells);
}

void print_large_messages(std::ostream& out, const Results& results, const ReportLayout& layout) {
  out << "\n## Large messages: one-way latency, busy-poll, µs p50 (p99) (ratio of p50 to "
      << kBaselineTransport << "; lower is better)\n\n";
  print_large_message_table(out, results, layout, metric::kOneWayLatency,
                            metric::kOneWayLatencyP99);
  if (layout.large_message_evict_bytes == 0) return;
  const std::string evict = size_label(layout.large_message_evict_bytes);
  out << "\nBuilding a message leaves the caches and TLBs as writing that many bytes does, "
         "and the table above includes what that costs the send. Below, the sender writes "
      << evict << " elsewhere after building each message, so every size starts from the "
      << "state a " << evict << " build leaves: what is left is the cost of the path "
      << "itself.\n\n";
  print_large_message_table(out, results, layout, metric::kOneWayLatencyEvicted,
                            metric::kOneWayLatencyEvictedP99);
}

void print_host(std::ostream& out, const Results& results, const ReportLayout& layout) {
  std::vector<std::string> columns;
  for (const HostImplementation& host : host_implementations()) columns.emplace_back(host.name);
  const CountTable table(results, columns, host_metric, layout.host_plugins, layout.host_sizes);
  const HostPlan& plan = layout.host_plan;
  const char* const corner = "plugins · request";
  out << "\n## Host: one thread serves N plugin processes (ratio to " << table.baseline()
      << ")\n\nEach plugin is kept " << plan.window << " requests in flight and answers each "
      << "with a " << size_label(plan.reply_bytes) << " reply; each row is one run of ~"
      << plan.measure.count() << " ms after " << plan.warmup.count()
      << " ms of warm-up, the host in a fresh process, the plugins its children, all on this "
         "machine's cores. Replies per second, with the request payload rate:\n\n";
  table.print(
      out, corner,
      table.cells_with(host_figure::kRepliesPerSecond, format_rate, host_figure::kRequestGbps,
                       [](double gbps) { return format_significant(gbps) + " GB/s"; }));
  out << "\nLoop stall: how late the host loop's 1 ms timer ran, ms p99 / max (ratio of p99; "
         "lower is better); then the longest single step of the loop, ms, and how many steps "
         "took over 1 ms:\n\n";
  const auto stall = table.cells(host_figure::kStallP99, format_significant);
  table.print(out, corner, [&](const std::string& host, std::size_t plugins, std::size_t size) {
    const auto max = table.find(host, plugins, size, host_figure::kStallMax);
    const auto step = table.find(host, plugins, size, host_figure::kLongestStep);
    const auto long_steps = table.find(host, plugins, size, host_figure::kStepsOver1ms);
    std::string cell = stall(host, plugins, size);
    if (max) cell += " / " + format_significant(*max);
    if (step && long_steps) {
      cell += " · step " + format_significant(*step) + " (" +
              std::to_string(static_cast<long>(*long_steps)) + " > 1 ms)";
    }
    return cell;
  });
  out << "\nThe host process: peak RSS MiB (ratio), descriptors open (the benchmark's pidfds "
         "of the plugins not counted), CPU while measured (share of one core, and per reply); "
         "a forked process that does nothing peaks at "
      << format_significant(layout.idle_child_rss_mib) << " MiB:\n\n";
  const auto rss = table.cells(host_figure::kPeakRss, format_significant);
  table.print(out, corner, [&](const std::string& host, std::size_t plugins, std::size_t size) {
    const auto fds = table.find(host, plugins, size, host_figure::kOpenFds);
    const auto cpu = table.find(host, plugins, size, host_figure::kHostCpu);
    const auto per_reply = table.find(host, plugins, size, host_figure::kHostCpuPerReply);
    std::string cell = rss(host, plugins, size);
    if (fds) cell += " · " + std::to_string(static_cast<long>(*fds)) + " fds";
    if (cpu) cell += " · CPU " + format_significant(*cpu * 100) + "%";
    if (per_reply) cell += ", " + format_significant(*per_reply) + " µs/reply";
    return cell;
  });
}

/// The non-blocking sender: one row of figures, and the target met or not.
void print_nonblocking(std::ostream& out, const Results& results) {
  namespace m = nonblocking_metric;
  const auto figure = [&](const char* metric) {
    return results.find(kNonblockingTransport, 0, metric).value_or(0);
  };
  const auto number = [&](const char* metric) { return format_significant(figure(metric)); };
  const auto count = [&](const char* metric) {
    return std::to_string(static_cast<long long>(figure(metric)));
  };
  const auto joined = [](const std::vector<std::string>& parts) {
    std::string text;
    for (const std::string& part : parts) text += (text.empty() ? "" : " · ") + part;
    return text;
  };
  std::vector<std::string> sizes(kNonblockingMessageSizes.size());
  std::transform(kNonblockingMessageSizes.begin(), kNonblockingMessageSizes.end(), sizes.begin(),
                 size_label);
  out << "\n## Non-blocking sender\n\nA capnsplice sender (library defaults) offers messages "
         "of random sizes ("
      << joined(sizes) << ": every path) to try_send(), each built with "
      << "new_message(Deadline::immediate()); when refused, it sleeps in poll() on watch_fd() "
         "until the pipe has room and calls try_flush(). Its reader, another process, sleeps "
         "0-20 ms before one message in four. Each library call is timed on its own, in µs; "
         "filling the message (fill_chunk) is the application's work and is not timed, and "
         "with it the allocation of the payload's segments (new_message() only makes the "
         "builder).";
  if (!results.find(kNonblockingTransport, 0, m::kCalls)) {
    out << "\n\nNo figures: the run failed (see Failures).\n";
    return;
  }
  out << " One run of " << number(m::kSeconds) << " s:\n\n";
  const std::vector<std::string> columns = {
      "calls", "p50", "p99", "p99.9", "max", "over 1 ms",
      "longest new_message · try_send · try_flush", "messages · MB/s",
      "try_send queued · refused", "copied · spliced · shared"};
  const std::vector<std::string> row = {
      count(m::kCalls), number(m::kCallP50), number(m::kCallP99), number(m::kCallP999),
      number(m::kCallMax), count(m::kCallsOver1ms),
      joined({number(m::kLongestNewMessage), number(m::kLongestTrySend),
              number(m::kLongestTryFlush)}),
      joined({count(m::kMessages), number(m::kPayloadMBps)}),
      joined({count(m::kSendsQueued), count(m::kSendsRefused)}),
      joined({count(m::kCopiedMessages), count(m::kSplicedMessages), count(m::kSharedMessages)})};
  print_table(out, "sender", columns, {kNonblockingTransport}, {row});
  out << "\ntarget: no call over 1 ms — ";
  if (figure(m::kCallsOver1ms) == 0) {
    out << "met in this run.\n";
  } else {
    out << "not met in this run: " << count(m::kCallsOver1ms) << " call(s) over 1 ms, the longest "
        << number(m::kCallMax) << " µs (one run on a shared machine: a call the scheduler "
        << "preempted counts too).\n";
  }
}

void print_failures(std::ostream& out, const Results& results) {
  if (results.failures().empty()) return;
  out << "\n## Failures\n\n";
  for (const Failure& failure : results.failures()) {
    out << "- " << failure.transport << " " << size_label(failure.message_bytes) << " "
        << failure.workload << ": " << failure.reason << "\n";
  }
}

}  // namespace

void print_table(std::ostream& out, const std::string& corner,
                 const std::vector<std::string>& columns, const std::vector<std::string>& rows,
                 const std::vector<std::vector<std::string>>& cells) {
  out << "| " << corner;
  for (const std::string& column : columns) out << " | " << column;
  out << " |\n|---";
  for (std::size_t i = 0; i < columns.size(); ++i) out << "|---:";
  out << "|\n";
  for (std::size_t r = 0; r < rows.size(); ++r) {
    out << "| " << rows[r];
    for (const std::string& cell : cells[r]) out << " | " << cell;
    out << " |\n";
  }
}

void CountTable::print(std::ostream& out, const std::string& corner, const Cell& cell) const {
  std::vector<std::string> rows;
  std::vector<std::vector<std::string>> cells;
  for (std::size_t count : counts_) {
    for (std::size_t size : sizes_) {
      rows.push_back(std::to_string(count) + " · " + size_label(size));
      std::vector<std::string>& row = cells.emplace_back();
      for (const std::string& column : columns_) row.push_back(cell(column, count, size));
    }
  }
  print_table(out, corner, columns_, rows, cells);
}

void print_markdown(std::ostream& out, const Results& results, const ReportLayout& layout) {
  if (layout.throughput) {
    print_throughput(out, results, layout);
    print_paths(out, results, layout);
    print_system_calls(out, results, "System calls per message in the throughput runs: sender / receiver",
                       layout.transports, layout.throughput_sizes,
                       metric::kSyscallsPerMessageSender, metric::kSyscallsPerMessageReceiver);
  }
  if (layout.round_trip && !layout.round_trip_rows.empty()) {
    print_round_trip(out, results, layout);
    print_system_calls(out, results, "System calls per round trip: pinger / answerer",
                       layout.round_trip_rows, layout.round_trip_sizes,
                       metric::kSyscallsPerRoundTripPinger, metric::kSyscallsPerRoundTripAnswerer);
  }
  if (layout.rss) print_rss(out, results, layout);
  if (layout.large_messages && !layout.large_message_transports.empty()) {
    print_large_messages(out, results, layout);
  }
  if (layout.host && !layout.host_plugins.empty()) print_host(out, results, layout);
  if (layout.many && !layout.many_channels.empty()) print_many(out, results, layout);
  if (layout.nonblocking) print_nonblocking(out, results);
  print_failures(out, results);
}

}  // namespace bench
