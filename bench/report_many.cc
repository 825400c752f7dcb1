// The many-channels workload's tables (many_workload.h): throughput, the host's memory,
// its descriptors and the cost of making a pair, capnsplice against socketpairs.
#include "report.h"
#include "report_cells.h"

namespace bench {

namespace {

Formatter with_unit(const char* unit) {
  return [unit](double value) { return format_significant(value) + unit; };
}

}  // namespace

void print_many(std::ostream& out, const Results& results, const ReportLayout& layout) {
  const CountTable table(results, many_implementations(), many_metric, layout.many_channels,
                         layout.many_sizes);
  const ManyPlan& plan = layout.many_plan;
  const char* const corner = "channels · payload";
  namespace f = many_figure;
  out << "\n## Many channels: one host process, one child, N pairs (ratio to " << table.baseline()
      << ")\n\nThe host makes N pairs, forks one child that keeps the "
      << "other ends, and streams round-robin over all of them (message k on channel k mod N, "
         "send() per message, the child receives them in that order); each row is one run of "
         "~"
      << plan.stream.count()
      << " ms after one warm-up round, in a fresh host process. Messages per second and "
         "payload MB/s:\n\n";
  table.print(
      out, corner,
      table.cells_with(f::kMessagesPerSecond, format_rate, f::kPayloadMBps, with_unit(" MB/s")));
  out << "\nThe host's RSS (VmRSS), MiB: with the pairs made (the child forked and its ends "
         "closed in the host) / after the stream / after "
      << plan.idle.count()
      << " ms idle (ratio of the last); then the growth from before the first pair to the "
         "end of the idle time, per pair (ratio; it includes the code and one-time set-up the "
         "first pair and message fault in, which dominate at N = 1):\n\n";
  const auto idle = table.cells(f::kRssIdle, format_significant);
  const auto per_pair = table.cells(f::kRssPerPairIdle, with_unit(" KiB/pair"));
  table.print(out, corner, [&](const std::string& way, std::size_t channels, std::size_t size) {
    const auto created = table.find(way, channels, size, f::kRssCreated);
    const auto streamed = table.find(way, channels, size, f::kRssStreamed);
    if (!created || !streamed) return idle(way, channels, size);
    return format_significant(*created) + " / " + format_significant(*streamed) + " / " +
           idle(way, channels, size) + " · " + per_pair(way, channels, size);
  });
  out << "\nMaking one pair, µs (all N made one after the other, divided by N; ratio; the "
         "process's first pair on its own), and the host's descriptors per pair (ratio; "
         "after the idle time, where it differs):\n\n";
  const auto create = table.cells(f::kCreateUs, with_unit(" µs"));
  const auto fds = table.cells(f::kFdsPerPair, with_unit(" fds"));
  table.print(out, corner, [&](const std::string& way, std::size_t channels, std::size_t size) {
    const auto made = table.find(way, channels, size, f::kFdsPerPair);
    const auto later = table.find(way, channels, size, f::kFdsPerPairIdle);
    const auto first = table.find(way, channels, size, f::kCreateFirstUs);
    std::string cell = create(way, channels, size);
    if (first) cell += " (first " + format_significant(*first) + ")";
    if (made) cell += " · " + fds(way, channels, size);
    if (made && later && *later != *made) cell += " (idle " + format_significant(*later) + ")";
    return cell;
  });
}

}  // namespace bench
