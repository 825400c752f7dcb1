#include "cli.h"

#include <algorithm>
#include <string_view>

#include "transport.h"
#include "units.h"

namespace bench {

namespace {

bool is_transport(const std::string& name) {
  for (const Transport& transport : all_transports()) {
    if (transport.name == name) return true;
  }
  return false;
}

void select_workloads(const std::string& list, CommandLine& line) {
  line.throughput = line.round_trip = line.rss = line.large_messages = line.host = line.many =
      line.nonblocking = false;
  for (const std::string& name : split(list, ',')) {
    if (name == "throughput") {
      line.throughput = true;
    } else if (name == "rtt") {
      line.round_trip = true;
    } else if (name == "rss") {
      line.rss = true;
    } else if (name == "latency") {
      line.large_messages = true;
    } else if (name == "host") {
      line.host = true;
    } else if (name == "many") {
      line.many = true;
    } else if (name == "nonblocking") {
      line.nonblocking = true;
    } else {
      throw UsageError("unknown workload '" + name +
                       "' (known: throughput, rtt, rss, latency, host, many, nonblocking)");
    }
  }
}

/// "1,16,256" as counts from 1 to `most`; `what` names one in the error.
std::vector<std::size_t> parse_counts(const std::string& list, const char* what, std::size_t most) {
  std::vector<std::size_t> counts;
  for (const std::string& text : split(list, ',')) {
    const auto count = parse_size(text);
    if (!count || *count < 1 || *count > most) {
      throw UsageError(std::string(what) + " '" + text + "' is not a number from 1 to " +
                       std::to_string(most));
    }
    counts.push_back(*count);
  }
  return counts;
}

/// "  name                text of the description, wrapped at 80 columns with the
///                        following lines indented under the first".
void print_wrapped(std::ostream& out, const std::string& name, const std::string& text) {
  constexpr std::size_t kIndent = 22, kWidth = 80;
  std::string line = "  " + name;
  line.resize(std::max(line.size() + 1, kIndent), ' ');
  const std::size_t start = line.size();
  for (const std::string& word : split(text, ' ')) {
    if (line.size() > start && line.size() + word.size() > kWidth) {
      out << line << "\n";
      line = std::string(kIndent, ' ');
    }
    line += (line.size() > kIndent ? " " : "") + word;
  }
  out << line << "\n";
}

}  // namespace

CommandLine parse_command_line(int argc, char** argv) {
  CommandLine line;
  for (int i = 1; i < argc; ++i) {
    const std::string_view option = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(std::string(option) + " needs a value");
      return argv[++i];
    };
    if (option == "--help" || option == "-h") {
      line.help = true;
    } else if (option == "--quick") {
      line.quick = true;
    } else if (option == "--threshold-sweep") {
      line.threshold_sweep = true;
    } else if (option == "--csv") {
      line.csv_path = value();
    } else if (option == "--plot") {
      line.plot_path = value();
    } else if (option == "--transports") {
      line.transports = split(value(), ',');
      for (const std::string& name : line.transports) {
        if (!is_transport(name)) throw UsageError("unknown transport '" + name + "'; see --help");
      }
    } else if (option == "--sizes") {
      for (const std::string& text : split(value(), ',')) {
        const auto size = parse_size(text);
        if (!size || *size < 8 || *size > std::size_t{64} << 20) {
          throw UsageError("size '" + text + "' is not a byte count from 8 to 64 MiB");
        }
        line.sizes.push_back(*size);
      }
    } else if (option == "--plugins") {
      line.plugins = parse_counts(value(), "plugin count", 4096);
    } else if (option == "--channels") {
      line.channels = parse_counts(value(), "channel count", 65536);
    } else if (option == "--workloads") {
      select_workloads(value(), line);
    } else {
      throw UsageError("unknown option '" + std::string(option) + "'; see --help");
    }
  }
  return line;
}

void print_help(std::ostream& out) {
  out << R"(capnsplice-bench — capnsplice against the transports it replaces, in one run.

Usage: capnsplice-bench [options]

Each measurement forks a fresh sender and receiver process (peak RSS is per
measurement), warms them up, releases both from a start barrier and times the
receiver's last message on CLOCK_MONOTONIC. Every message is a Chunk whose Data
payload the sender fills completely and whose seq and first/middle/last payload
bytes the receiver checks. Where the kernel lets it (root), each side's system calls
from the release to its last message are counted (perf, raw_syscalls:sys_enter) and
printed per message: CSV metrics syscalls_per_message_sender / _receiver (throughput)
and syscalls_per_round_trip_pinger / _answerer (rtt).

Workloads:
  throughput  one-way stream; payload GB/s (10^9 bytes) and messages/s
              (default sizes 64 B, 1 KiB, 4 KiB, 64 KiB, 1 MiB, 16 MiB)
  rtt         ping-pong round trip, p50 / p99 / p99.9 (default sizes 64 B, 4 KiB),
              blocking, and busy-poll as "<transport>+spin"
  rss         peak RSS (ru_maxrss) of sender and receiver in the throughput runs;
              the CSV has peak_rss_mib (the larger side) plus peak_rss_sender_mib
              and peak_rss_receiver_mib
  latency     large-message one-way latency, busy-poll: 1 MiB, 16 MiB, 256 MiB and
              1 GiB (not in --quick) messages built before the clock starts, from
              send() to the receiver holding the message; CSV metric
              one_way_latency_us (p50) and one_way_latency_p99_us; only the
              transports that can carry them (capnsplice paths, capnp-socketpair).
              The full run measures them again with the sender writing 1 GiB
              elsewhere before each clock starts, so every size starts from the
              cache state of a 1 GiB build (one_way_latency_evicted_us, _p99_us)
  host        one host thread serves N plugin processes (N = 1, 16, 256; --quick
              1, 16, 64), each kept 8 requests in flight (512 B and 64 KiB payloads,
              one size per row) and answering each with a 64 B reply: capnsplice on
              the Boost.Asio adapter against socketpairs, plain capnp and an epoll
              loop. Replies/s, loop stall (how late a 1 ms timer on the loop runs,
              p99 and max; the longest single step of the loop), the host's peak
              RSS, descriptors and CPU. CSV metrics host_<figure>_n<N>; --sizes
              applies, --transports does not
  many        N channel pairs between one host process and one child (N = 1, 64,
              1000; --quick 1, 64, 256): the host streams round-robin over all of
              them (512 B and 64 KiB payloads, one size per row; ~1 s, --quick
              0.3 s, after one warm-up round), the child receives in that order and
              answers the end with its count; capnsplice channels against
              socketpairs with plain capnp framing. Messages/s and MB/s, the host's
              RSS (made, after the stream, after 1.5 s idle; per pair), its
              descriptors per pair and the time to make one pair. CSV metrics
              many_<figure>_n<N>; --sizes applies, --transports does not
  nonblocking a capnsplice sender that must never block (issue 12: no call
              over 1 ms): try_send of 64 B to 16 MiB messages (every path) at
              random, poll on watch_fd and try_flush when refused, against a
              reader that sleeps 0-20 ms before one message in four; 2 s (--quick
              1 s). Each library call timed (new_message, try_send, try_flush; not
              the filling of the message): p50 / p99 / p99.9 / max, calls over
              1 ms, the longest of each kind. CSV metrics nonblocking_<figure>,
              message_bytes 0; --sizes and --transports do not apply

Options:
  --quick             short runs (under a minute); the demo uses it
  --transports LIST   comma-separated, e.g. capnsplice,capnp-socketpair
  --sizes LIST        payload sizes for every workload, e.g. 64,4K,1MiB
  --workloads LIST    any of throughput,rtt,rss,latency,host,many,nonblocking
                      (rss alone still runs throughput)
  --plugins LIST      plugin counts of the host workload, e.g. 1,16,256
  --channels LIST     channel counts of the many workload, e.g. 1,64,1000
  --csv FILE          rows transport,message_bytes,metric,value
  --plot FILE.png     throughput against payload size, one line per transport
                      (gnuplot; python3-matplotlib when gnuplot is missing)
  --threshold-sweep   only the two sweeps that set the library's thresholds:
                      capnsplice-copy against capnsplice-vmsplice (256 B to 256 KiB,
                      copy_threshold_bytes) and capnsplice-vmsplice against
                      capnsplice-shm (128 KiB to 32 MiB, shared_memory_threshold_bytes)
  -h, --help          this text

Transports (ratios in the tables are against capnp-socketpair):
)";
  for (const Transport& transport : all_transports()) {
    print_wrapped(out, transport.name, transport.description);
  }
  out << R"(
Busy-poll (+spin) rows exist for every transport with a receive to spin on; shm-spin
has only those (it always spins); memcpy has neither a round trip nor busy-poll (it is
one thread copying a buffer).
Output: a progress line on stderr, markdown tables on stdout.
Exit status: 0; 1 when a measurement failed (the report lists it under Failures: a
child that fails, hangs past the timeout or dies is killed and reported, never waited
for); 2 for a command line it cannot follow.
)";
}

}  // namespace bench
