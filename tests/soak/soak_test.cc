// Soak: a long stream through one channel between two processes, both directions at
// once, random sizes from 0 B to 8 MiB, every message checksummed and numbered, while
// both processes watch their resident memory.
//
//   build/tests/soak_test --bytes 20G     the full soak (20 GiB in all, half each way)
//   build/tests/soak_test                 what ctest runs: 2 GiB (CAPNSPLICE_SOAK_CI_BYTES)
//
// Options: --bytes N[K|M|G] payload bytes over both directions (binary units),
//          --seed S, --max-growth-mib M (default 16),
//          --shared-memory-from N[K|M|G] messages this large go through shared memory
//          (the library's default: 128 KiB; 0: every message through the pipes),
//          --arena-keep N[K|M|G] SenderOptions::arena_keep_bytes (default 16 MiB; the
//          library's is 128 MiB).
//
// An arena stays resident up to its high-water mark until it is replaced, and a sender
// holds at most half of arena_keep_bytes in it for the reader at once. Under the
// library's budget (128 MiB, so 64 MiB in flight) this stream's arenas take a good part
// of the run to reach their bound, and each process maps both: its memory rises for a
// while (to ~110 MiB in 20 GiB, measured) before it is flat, which the quarter-to-quarter
// check below cannot tell from a leak. At 16 MiB the bound (8 MiB in flight) is reached
// at once, so what can still grow is a leak: 20 GiB runs grew 1-3 MiB, through one arena
// per direction.
//
// Each side sends from a thread while its main thread receives. The receiver replays
// the peer's size sequence, so it knows how many messages must come and how large each
// is. Passes (exit 0) when, on both sides, every message arrived intact, in order, at
// its size, none is missing, and VmRSS in the last quarter of the stream is at most
// --max-growth-mib above its peak in the first quarter.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>

#include "capnsplice/process.h"
#include "support/mixed_stream.h"
#include "support/resident_memory.h"
#include "support/sanitizer.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kMaxMessageBytes = 8 * MiB;
/// Sampling /proc/self/status costs ~20 µs: every 8th message keeps it out of the way.
constexpr std::uint64_t kSampleEvery = 8;

struct Settings {
  std::uint64_t bytes = 2ull << 30;
  std::uint64_t seed = 1;
  std::size_t max_growth = 16 * MiB;
  std::optional<std::size_t> shared_memory_from;  ///< empty: the library's default
  std::size_t arena_keep = 16 * MiB;
};

/// VmRSS over the run, by quarter of the stream received.
struct ResidentFigures {
  std::size_t min = ~std::size_t{0};
  std::size_t max = 0;
  std::size_t first_quarter_max = 0;
  std::size_t last_quarter_max = 0;

  void sample(double progress) {
    const std::size_t now = resident_bytes();
    min = std::min(min, now);
    max = std::max(max, now);
    if (progress < 0.25) first_quarter_max = std::max(first_quarter_max, now);
    if (progress >= 0.75) last_quarter_max = std::max(last_quarter_max, now);
  }
  std::size_t growth() const {
    return last_quarter_max > first_quarter_max ? last_quarter_max - first_quarter_max : 0;
  }
};

/// The sizes one side sends: a sequence of its own, so the receiver can replay it.
class SizeSequence {
 public:
  SizeSequence(std::uint64_t seed, std::uint64_t quota) : random_(seed), quota_(quota) {}
  /// The next size, or false once the side has sent its quota.
  bool next(std::size_t& size) {
    if (total_ >= quota_) return false;
    size = mixed_size(random_, kMaxMessageBytes);
    total_ += size;
    return true;
  }

 private:
  Random random_;
  std::uint64_t quota_;
  std::uint64_t total_ = 0;
};

double mib(std::uint64_t bytes) { return static_cast<double>(bytes) / static_cast<double>(MiB); }

/// One process's half of the soak: sends its quota from a thread, receives the peer's
/// stream here. Returns true when everything checked out.
bool run_side(Channel& channel, const char* name, std::uint64_t own_seed, std::uint64_t peer_seed,
              const Settings& settings) {
  const std::uint64_t quota = settings.bytes / 2;
  std::uint64_t sent_messages = 0;
  std::uint64_t sent_bytes = 0;
  std::string send_failure;
  std::thread sender([&] {
    try {
      SizeSequence sizes(own_seed, quota);
      Random data(own_seed + 1000);
      for (std::size_t size = 0; sizes.next(size); ++sent_messages, sent_bytes += size) {
        send_mixed(channel, sent_messages, size, data);
      }
      channel.close_sending();  // writes what is queued, then end of stream
    } catch (const std::exception& error) {
      send_failure = error.what();
    }
  });

  SizeSequence expected(peer_seed, quota);
  StreamTally tally;
  std::uint64_t wrong_sizes = 0;
  std::uint64_t missing = 0;
  ResidentFigures resident;
  std::string receive_failure;
  try {
    for (;;) {
      ReceivedMessage message = channel.receive(Deadline::after(std::chrono::seconds(60)));
      auto blob = message.root<test::Blob>();
      std::size_t size = 0;
      wrong_sizes += expected.next(size) && blob_size(blob) == size ? 0 : 1;
      tally.add(blob);
      if (tally.messages % kSampleEvery == 0) {
        resident.sample(static_cast<double>(tally.bytes) / static_cast<double>(quota));
      }
    }
  } catch (const Error& error) {
    if (error.code() != ErrorCode::PeerClosed) receive_failure = error.what();
  }
  for (std::size_t size = 0; expected.next(size);) ++missing;
  resident.sample(1.0);
  sender.join();

  const bool memory_flat = kUnderSanitizer || resident.growth() <= settings.max_growth;
  std::printf(
      "soak %s: sent %.1f MiB in %llu messages through %llu arenas; received %.1f MiB in "
      "%llu messages, %llu mismatched, %llu out of order, %llu of the wrong size, %llu "
      "missing; VmRSS min %.1f MiB, max %.1f MiB, first-quarter max %.1f MiB, last-quarter "
      "max %.1f MiB%s\n",
      name, mib(sent_bytes), static_cast<unsigned long long>(sent_messages),
      static_cast<unsigned long long>(channel.sender().stats().arenas_created), mib(tally.bytes),
      static_cast<unsigned long long>(tally.messages),
      static_cast<unsigned long long>(tally.mismatches),
      static_cast<unsigned long long>(tally.out_of_order),
      static_cast<unsigned long long>(wrong_sizes), static_cast<unsigned long long>(missing),
      mib(resident.min), mib(resident.max), mib(resident.first_quarter_max),
      mib(resident.last_quarter_max),
      kUnderSanitizer ? " (not checked: the sanitizer's own memory)" : "");
  if (!send_failure.empty()) std::printf("soak %s: send failed: %s\n", name, send_failure.c_str());
  if (!receive_failure.empty()) {
    std::printf("soak %s: receive failed: %s\n", name, receive_failure.c_str());
  }
  if (!memory_flat) {
    std::printf("soak %s: VmRSS grew by %.1f MiB, more than the %.1f MiB allowed\n", name,
                mib(resident.growth()), mib(settings.max_growth));
  }
  std::fflush(stdout);
  return send_failure.empty() && receive_failure.empty() && tally.mismatches == 0 &&
         tally.out_of_order == 0 && wrong_sizes == 0 && missing == 0 && memory_flat;
}

std::uint64_t parse_bytes(const char* text) {
  char* unit = nullptr;
  std::uint64_t value = std::strtoull(text, &unit, 10);
  switch (*unit) {
    case 'G':
      value <<= 10;
      [[fallthrough]];
    case 'M':
      value <<= 10;
      [[fallthrough]];
    case 'K':
      value <<= 10;
      break;
    default:
      break;
  }
  return value;
}

bool parse(int argc, char** argv, Settings& settings) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string option = argv[i];
    if (option == "--bytes") {
      settings.bytes = parse_bytes(argv[i + 1]);
    } else if (option == "--seed") {
      settings.seed = std::strtoull(argv[i + 1], nullptr, 10);
    } else if (option == "--max-growth-mib") {
      settings.max_growth = std::strtoull(argv[i + 1], nullptr, 10) * MiB;
    } else if (option == "--shared-memory-from") {
      settings.shared_memory_from = parse_bytes(argv[i + 1]);
    } else if (option == "--arena-keep") {
      settings.arena_keep = parse_bytes(argv[i + 1]);
    } else {
      return false;
    }
  }
  return argc % 2 == 1;
}

}  // namespace

int main(int argc, char** argv) {
  Settings settings;
  if (!parse(argc, argv, settings)) {
    std::fprintf(stderr,
                 "usage: soak_test [--bytes N[K|M|G]] [--seed S] [--max-growth-mib M] "
                 "[--shared-memory-from N[K|M|G]] [--arena-keep N[K|M|G]]\n");
    return 2;
  }
  const std::uint64_t parent_seed = settings.seed * 2;
  const std::uint64_t child_seed = settings.seed * 2 + 1;
  auto options = ChannelOptions()
                     .with_name("soak")
                     .with_send_timeout(std::chrono::seconds(60))
                     .with_arena_keep_bytes(settings.arena_keep);
  if (settings.shared_memory_from) {
    options.with_shared_memory_threshold_bytes(*settings.shared_memory_from);
  }
  const auto started = Clock::now();
  Child child = fork_with_channel(
      [&](Channel& channel) {
        return run_side(channel, "child", child_seed, parent_seed, settings) ? 0 : 1;
      },
      options);
  const bool parent_ok = run_side(child.channel, "parent", parent_seed, child_seed, settings);
  const ExitStatus child_status = child.process.wait();
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  std::printf("soak: %.2f GiB in %.1f s, %.2f GB/s over both directions; child %s\n",
              static_cast<double>(settings.bytes) / (1ull << 30), seconds,
              static_cast<double>(settings.bytes) / seconds / 1e9, child_status.describe().c_str());
  return parent_ok && child_status.success() ? 0 : 1;
}
