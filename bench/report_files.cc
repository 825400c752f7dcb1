// The files a run can write: the CSV of every figure and the throughput plot.
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>

#include "report.h"
#include "units.h"

namespace bench {

namespace {

/// Throughput points per transport, as a whitespace table: "bytes value" lines, one
/// block per transport separated by two blank lines (gnuplot's "index"), and the
/// transports' names in the same order.
struct PlotData {
  std::vector<std::string> names;
  std::string blocks;
};

PlotData throughput_points(const Results& results, const ReportLayout& layout) {
  PlotData data;
  for (const std::string& transport : layout.transports) {
    std::ostringstream block;
    for (std::size_t size : layout.throughput_sizes) {
      if (auto value = results.find(transport, size, metric::kThroughputGbps)) {
        block << size << " " << *value << "\n";
      }
    }
    if (block.str().empty()) continue;
    data.names.push_back(transport);
    data.blocks += block.str() + "\n\n";
  }
  return data;
}

/// Runs `program` with `script` on its standard input; true when it exited with 0.
bool run_with_input(const std::string& program, const std::string& script) {
  FILE* pipe = ::popen(program.c_str(), "w");
  if (pipe == nullptr) return false;
  std::fwrite(script.data(), 1, script.size(), pipe);
  return ::pclose(pipe) == 0;
}

std::string gnuplot_script(const std::string& path, const PlotData& data,
                           const std::vector<std::size_t>& sizes, const std::string& subtitle) {
  // Distinct colours for up to ten lines; capnsplice bold, memcpy (the ceiling) dashed.
  static const char* const kColours[] = {"#d62728", "#ff7f0e", "#e377c2", "#1f77b4", "#17becf",
                                         "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f", "#bcbd22"};
  std::ostringstream script;
  script << "set terminal pngcairo size 1100,700 font ',10' noenhanced\n"
         << "set output '" << path << "'\n"
         << "set title \"Throughput against payload size\\n"
         << subtitle << "\"\n"
         << "set logscale x 2\nset logscale y 10\nset grid\nset key outside right\n"
         << "set xlabel 'payload'\nset ylabel 'GB/s (10^9 bytes per second)'\nset xtics (";
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    script << (i ? ", " : "") << "'" << size_label(sizes[i]) << "' " << sizes[i];
  }
  script << ")\nset xrange [" << sizes.front() / 1.5 << ":" << sizes.back() * 1.5 << "]\n"
         << "$data << EOD\n"
         << data.blocks << "EOD\nplot ";
  for (std::size_t i = 0; i < data.names.size(); ++i) {
    const std::string& name = data.names[i];
    script << (i ? ", " : "") << "$data index " << i << " using 1:2 with linespoints"
           << " lc rgb '" << kColours[i % std::size(kColours)] << "'"
           << " lw " << (name.starts_with("capnsplice") ? 3 : 1.5) << " dt "
           << (name == "memcpy" ? 2 : 1) << " title '" << name << "'";
  }
  script << "\n";
  return script.str();
}

std::string matplotlib_script(const std::string& path, const PlotData& data,
                              const std::vector<std::size_t>& sizes, const std::string& subtitle) {
  std::ostringstream script;
  script << "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
         << "blocks = '''" << data.blocks << "'''.strip().split('\\n\\n\\n')\n"
         << "names = [";
  for (const std::string& name : data.names) script << "'" << name << "', ";
  script
      << "]\nfig, ax = plt.subplots(figsize=(11, 7))\n"
      << "for name, block in zip(names, blocks):\n"
      << "    points = [tuple(map(float, line.split())) for line in block.strip().split('\\n')]\n"
      << "    ax.plot([p[0] for p in points], [p[1] for p in points], marker='o', label=name)\n"
      << "ax.set_xscale('log', base=2)\nax.set_yscale('log')\nax.grid(True)\n"
      << "ax.set_xticks([";
  for (std::size_t size : sizes) script << size << ", ";
  script << "], [";
  for (std::size_t size : sizes) script << "'" << size_label(size) << "', ";
  script << "])\n"
         << "ax.set_xlabel('payload bytes')\nax.set_ylabel('GB/s (10^9 bytes/s)')\n"
         << "ax.set_title('Throughput against payload size\\n"
         << subtitle << "', fontsize=10)\n"
         << "ax.legend()\nfig.savefig('" << path << "', dpi=100)\n";
  return script.str();
}

}  // namespace

void write_csv(const std::string& path, const Results& results) {
  std::ofstream out(path);
  out << "transport,message_bytes,metric,value\n";
  for (const ResultRow& row : results.rows()) {
    out << row.transport << "," << row.message_bytes << "," << row.metric << "," << row.value
        << "\n";
  }
  out.flush();
  if (!out) throw std::runtime_error("cannot write " + path);
}

void write_plot(const std::string& path, const Results& results, const ReportLayout& layout,
                const std::string& subtitle) {
  const PlotData data = throughput_points(results, layout);
  if (data.names.empty()) throw std::runtime_error("no throughput figures to plot");
  std::string title = subtitle;  // goes inside quotes in both scripts
  std::erase_if(title, [](char c) { return c == '\'' || c == '"' || c == '\\'; });
  if (run_with_input("command -v gnuplot >/dev/null && gnuplot 2>/dev/null",
                     gnuplot_script(path, data, layout.throughput_sizes, title))) {
    return;
  }
  // Debian's python3-matplotlib belongs to /usr/bin/python3, which a python3 earlier in
  // PATH (pyenv, a venv) may hide.
  for (const char* python : {"/usr/bin/python3 2>/dev/null", "python3 2>/dev/null"}) {
    if (run_with_input(python, matplotlib_script(path, data, layout.throughput_sizes, title)))
      return;
  }
  throw std::runtime_error("cannot plot to " + path +
                           ": neither gnuplot nor python3 with matplotlib worked");
}

}  // namespace bench
