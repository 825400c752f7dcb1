// capnsplice-bench: capnsplice against the transports it replaces, in one run.
//
// main() turns the command line into a list of jobs (transport x workload x size x
// wait mode), runs them (runner.h: each one in fresh processes, measurement.h) and
// prints the tables (report.h). The host workload (one thread serving N plugin processes)
// runs after them, on its own (host_workload.h), then many channels between two
// processes (many_workload.h), then the non-blocking sender (nonblocking_sender.h).
// `--help` explains the options; see also issues 4, 12 and 13.
#include <algorithm>
#include <csignal>
#include <iostream>

#include "cli.h"
#include "host_workload.h"
#include "machine.h"
#include "many_workload.h"
#include "measurement.h"
#include "nonblocking_sender.h"
#include "report.h"
#include "runner.h"
#include "threshold_sweep.h"
#include "units.h"

namespace bench {

namespace {

const std::vector<std::size_t> kThroughputSizes = {64, 1024, 4096, 64 << 10, 1 << 20, 16 << 20};
const std::vector<std::size_t> kRoundTripSizes = {64, 4096};
const std::vector<std::size_t> kLargeMessageSizes = {std::size_t{1} << 20, std::size_t{16} << 20,
                                                     std::size_t{256} << 20, std::size_t{1} << 30};
const std::vector<std::size_t> kHostRequestSizes = {512, 64 << 10};
const std::vector<std::size_t> kHostPlugins = {1, 16, 256};
const std::vector<std::size_t> kQuickHostPlugins = {1, 16, 64};
const std::vector<std::size_t> kManyPayloadSizes = {512, 64 << 10};
const std::vector<std::size_t> kManyChannels = {1, 64, 1000};
const std::vector<std::size_t> kQuickManyChannels = {1, 64, 256};
/// --quick leaves out the 1 GiB message (its building alone takes most of a second).
const std::vector<std::size_t> kQuickLargeMessageSizes = {
    std::size_t{1} << 20, std::size_t{16} << 20, std::size_t{256} << 20};

/// The counts or sizes the command line gave, else the run's defaults.
const std::vector<std::size_t>& given_or(const std::vector<std::size_t>& given, bool quick,
                                         const std::vector<std::size_t>& quick_default,
                                         const std::vector<std::size_t>& full_default) {
  return !given.empty() ? given : quick ? quick_default : full_default;
}

std::vector<const Transport*> selected_transports(const CommandLine& line) {
  std::vector<const Transport*> selected;
  for (const Transport& transport : all_transports()) {
    const bool wanted = line.transports.empty() ||
                        std::find(line.transports.begin(), line.transports.end(), transport.name) !=
                            line.transports.end();
    if (wanted) selected.push_back(&transport);
  }
  return selected;
}

/// Whether `transport` has round-trip rows in `wait` mode.
bool runs_round_trip(const Transport& transport, WaitMode wait) {
  if (!transport.supports_round_trip) return false;
  return wait == WaitMode::spin ? transport.supports_spin : !transport.only_spins;
}

/// Throughput jobs size by size (so a table row is measured close together in time),
/// then round trips: every transport blocking, then busy-polling.
std::vector<Job> plan_jobs(const std::vector<const Transport*>& transports,
                           const ReportLayout& layout) {
  std::vector<Job> jobs;
  if (layout.throughput || layout.rss) {
    for (std::size_t size : layout.throughput_sizes) {
      for (const Transport* transport : transports) {
        jobs.push_back({transport, Workload::throughput, size});
      }
    }
  }
  if (layout.round_trip) {
    for (WaitMode wait : {WaitMode::block, WaitMode::spin}) {
      for (const Transport* transport : transports) {
        if (!runs_round_trip(*transport, wait)) continue;
        for (std::size_t size : layout.round_trip_sizes) {
          jobs.push_back({transport, Workload::round_trip, size, wait});
        }
      }
    }
  }
  if (layout.large_messages) {
    // As built, then (full run) after an eviction: capnsplice's paths only there, as a
    // peer that copies takes seconds per GiB either way.
    std::vector<std::size_t> series{0};
    if (layout.large_message_evict_bytes != 0) series.push_back(layout.large_message_evict_bytes);
    for (std::size_t evict_bytes : series) {
      for (std::size_t size : layout.large_message_sizes) {
        for (const Transport* transport : transports) {
          if (!transport->supports_large_messages) continue;
          if (evict_bytes != 0 && !transport->name.starts_with("capnsplice")) continue;
          jobs.push_back({transport, Workload::large_message, size, WaitMode::spin, evict_bytes});
        }
      }
    }
  }
  return jobs;
}

ReportLayout plan_layout(const CommandLine& line, const std::vector<const Transport*>& transports,
                         const RunSettings& settings) {
  ReportLayout layout;
  layout.large_messages = line.large_messages;
  layout.large_message_sizes =
      given_or(line.sizes, line.quick, kQuickLargeMessageSizes, kLargeMessageSizes);
  for (const Transport* transport : transports) {
    if (transport->supports_large_messages) {
      layout.large_message_transports.push_back(transport->name);
    }
  }
  // The largest message of the full run: with it, every size starts from the cache state
  // the largest build leaves.
  if (line.sizes.empty() && !line.quick) {
    layout.large_message_evict_bytes = kLargeMessageSizes.back();
  }
  layout.throughput_sizes = line.sizes.empty() ? kThroughputSizes : line.sizes;
  layout.round_trip_sizes = line.sizes.empty() ? kRoundTripSizes : line.sizes;
  layout.throughput = line.throughput;
  layout.round_trip = line.round_trip;
  layout.rss = line.rss;
  layout.host = line.host;
  layout.nonblocking = line.nonblocking;
  layout.host_plugins = given_or(line.plugins, line.quick, kQuickHostPlugins, kHostPlugins);
  layout.host_sizes = line.sizes.empty() ? kHostRequestSizes : line.sizes;
  layout.host_plan.warmup = settings.host_warmup;
  layout.host_plan.measure = settings.host_time;
  layout.many = line.many;
  layout.many_channels = given_or(line.channels, line.quick, kQuickManyChannels, kManyChannels);
  layout.many_sizes = line.sizes.empty() ? kManyPayloadSizes : line.sizes;
  layout.many_plan.stream = settings.many_time;
  layout.many_plan.idle = settings.many_idle;
  for (const Transport* transport : transports) layout.transports.push_back(transport->name);
  for (WaitMode wait : {WaitMode::block, WaitMode::spin}) {
    for (const Transport* transport : transports) {
      if (!runs_round_trip(*transport, wait)) continue;
      layout.round_trip_rows.push_back(wait == WaitMode::spin ? spin_name(transport->name)
                                                              : transport->name);
    }
  }
  return layout;
}

int run(const CommandLine& line) {
  const RunSettings& settings = line.quick ? kQuickRun : kFullRun;
  const std::string machine = describe_machine();
  std::cout << "# capnsplice-bench (" << settings.name << " run)\n\nMachine: " << machine
            << "  \nLoad average at start: " << format_significant(load_average())
            << " (anything else running on the machine shows in the figures)\n";
  if (line.threshold_sweep) {
    run_threshold_sweeps(std::cout, line.sizes, settings);
    return 0;
  }
  std::cout << "\nEach figure: sender and receiver in two fresh processes; throughput is the "
               "median of "
            << settings.throughput_repetitions << " run(s) of ~" << settings.throughput_time.count()
            << " ms, round trips one run of ~" << settings.round_trip_time.count() << " ms.\n";

  const std::vector<const Transport*> transports = selected_transports(line);
  ReportLayout layout = plan_layout(line, transports, settings);
  layout.idle_child_rss_mib = idle_child_rss_mib();
  Results results;
  run_jobs(plan_jobs(transports, layout), settings, results);
  if (layout.host) {
    run_host_workload(layout.host_plugins, layout.host_sizes, layout.host_plan, settings.timeout,
                      results);
  }
  if (layout.many) {
    run_many_workload(layout.many_channels, layout.many_sizes, layout.many_plan, settings.timeout,
                      results);
  }
  if (layout.nonblocking) {
    run_nonblocking_workload({.duration = settings.nonblocking_time}, settings.timeout, results);
  }

  print_markdown(std::cout, results, layout);
  if (line.csv_path) write_csv(*line.csv_path, results);
  if (line.plot_path && (layout.throughput || layout.rss)) {
    write_plot(*line.plot_path, results, layout, machine);
  }
  return results.failures().empty() ? 0 : 1;
}

}  // namespace

}  // namespace bench

int main(int argc, char** argv) {
  // A peer that died must show up as an error in its measurement, never as a signal.
  std::signal(SIGPIPE, SIG_IGN);
  try {
    const bench::CommandLine line = bench::parse_command_line(argc, argv);
    if (line.help) {
      bench::print_help(std::cout);
      return 0;
    }
    return bench::run(line);
  } catch (const bench::UsageError& error) {
    std::cerr << "capnsplice-bench: " << error.what() << "\n";
    return 2;
  } catch (const std::exception& error) {
    std::cerr << "capnsplice-bench: " << error.what() << "\n";
    return 1;
  }
}
