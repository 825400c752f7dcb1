// bench/report_cells.h — the cells of the markdown tables: a figure with its ratio.
//
// report_markdown.cc prints the tables of every workload; report_many.cc those of the
// many-channels workload. Both make their cells here.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "results.h"
#include "units.h"

namespace bench {

/// Formats one figure of one cell, e.g. "9.81 GB/s".
using Formatter = std::function<std::string(double)>;

/// Cells for one metric: the value of (transport, size) with its ratio against the
/// baseline transport, "9.81 GB/s (2.90x)"; "failed" or "–" when there is no value.
class CellMaker {
 public:
  CellMaker(const Results& results, std::string metric, Formatter format)
      : results_(results), metric_(std::move(metric)), format_(std::move(format)) {}

  std::string operator()(const std::string& transport, std::size_t bytes,
                         const std::string& baseline) const {
    const std::optional<double> value = results_.find(transport, bytes, metric_);
    if (!value) return missing(transport, bytes);
    return format_(*value) + ratio(transport, bytes, baseline);
  }

  /// " (2.90x)": the value against the baseline's; "" when either is missing.
  std::string ratio(const std::string& transport, std::size_t bytes,
                    const std::string& baseline) const {
    const std::optional<double> value = results_.find(transport, bytes, metric_);
    const std::optional<double> base = results_.find(baseline, bytes, metric_);
    if (!value || !base || *base <= 0) return "";
    return " (" + format_ratio(*value / *base) + ")";
  }

  /// "failed" when the measurement failed, "–" when it was not made.
  std::string missing(const std::string& transport, std::size_t bytes) const {
    for (const Failure& failure : results_.failures()) {
      if (failure.transport == transport && failure.message_bytes == bytes) return "failed";
    }
    return "–";
  }

 private:
  const Results& results_;
  std::string metric_;
  Formatter format_;
};

/// The figures of a workload measured per count (plugins, channels) and size, whose
/// metric names carry the count ("host_replies_per_s_n16"), one column per way of
/// doing it, ratios against the last column.
class CountTable {
 public:
  using MetricName = std::string (*)(const char* figure, std::size_t count);
  /// The text of the cell of one column, count and size.
  using Cell =
      std::function<std::string(const std::string& column, std::size_t count, std::size_t size)>;

  CountTable(const Results& results, std::vector<std::string> columns, MetricName metric,
             std::vector<std::size_t> counts, std::vector<std::size_t> sizes)
      : results_(results),
        columns_(std::move(columns)),
        metric_(metric),
        counts_(std::move(counts)),
        sizes_(std::move(sizes)) {}

  const std::string& baseline() const { return columns_.back(); }

  /// A figure's value with its ratio to the baseline's, "1.2 M/s (0.8x)", or why not.
  Cell cells(const char* figure, Formatter format) const {
    return [this, figure, format = std::move(format)](const std::string& column, std::size_t count,
                                                      std::size_t size) {
      return CellMaker(results_, metric_(figure, count), format)(column, size, baseline());
    };
  }
  /// cells(figure, format), then " · " and `extra_figure` in `extra` format where there is one.
  Cell cells_with(const char* figure, Formatter format, const char* extra_figure,
                  Formatter extra) const {
    return [this, main = cells(figure, std::move(format)), extra_figure, extra = std::move(extra)](
               const std::string& column, std::size_t count, std::size_t size) {
      const std::optional<double> value = find(column, count, size, extra_figure);
      return main(column, count, size) + (value ? " · " + extra(*value) : "");
    };
  }
  std::optional<double> find(const std::string& column, std::size_t count, std::size_t size,
                             const char* figure) const {
    return results_.find(column, size, metric_(figure, count));
  }

  /// Rows "count · size", `corner` above them; `cell` for each column.
  void print(std::ostream& out, const std::string& corner, const Cell& cell) const;

 private:
  const Results& results_;
  std::vector<std::string> columns_;
  MetricName metric_;
  std::vector<std::size_t> counts_, sizes_;
};

}  // namespace bench
