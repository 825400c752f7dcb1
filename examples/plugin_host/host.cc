// examples/plugin_host: one thread serves sixteen plugin processes on Boost.Asio and
// survives the two that misbehave.
//
// The host starts sixteen instances of one plugin executable (plugin.cc), each on its own
// capnsplice::AsioChannel, and streams requests to all of them from one io_context on
// one thread: every 10 ms tick tops each plugin up to 4 requests in flight (payloads of
// 512 B and 64 KiB), until it has been sent 300. A plugin answers each request with the
// checksum of its payload, which the host checks.
//
// Two plugins misbehave on purpose:
//   * plugin 5 aborts after 10 answers. The host learns it from its receive, which fails
//     (PeerClosed when the plugin died between messages, TruncatedMessage in the middle
//     of one), and from the process's exit descriptor, which gives its exit status.
//   * plugin 9 stops reading after 10 answers, without exiting. Nothing tells the host;
//     its own rule does: a plugin whose oldest request has waited more than a second, or
//     whose channel holds more than 1 MiB unsent, is hung. The host kills it (SIGKILL),
//     cancels its operations and carries on.
// Nothing in the host waits in a system call, so the loop does not stall: the tick
// records the gaps between ticks, and the host prints their median and the longest.
//
// It exits 0 when every other plugin answered every request and exited cleanly, plugin
// 5's crash was noticed, and plugin 9 was killed by the rule.
#include <capnsplice/asio.h>
#include <capnsplice/process.h>
#include <fcntl.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <map>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "plugin.capnp.h"

namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int kPlugins = 16;
constexpr int kRequestsEach = 300;
constexpr std::size_t kInFlight = 4;  // per plugin, topped up every tick
constexpr int kCrashing = 5;
constexpr int kStalling = 9;
constexpr int kMisbehaveAfter = 10;  // answers before plugin 5 crashes, plugin 9 stalls
constexpr auto kTick = 10ms;
constexpr auto kGiveUpAfter = 20s;  // a safety net for the example itself

// The host's rule for a hung plugin. With 4 requests in flight the pipe (up to 1 MiB)
// never fills, so here the age rule fires; the unsent rule guards a host that also
// streams one-way messages, which a stalled plugin lets pile up. A plugin just started
// gets longer for its first answer: exec and loading take time on a busy machine.
constexpr auto kMaxWait = 1s;
constexpr auto kMaxWaitForFirstAnswer = 5s;
constexpr std::size_t kMaxUnsentBytes = 1 * capnsplice::MiB;
// A tick this late means the host itself stalled (a busy machine): answers may be waiting
// unread in the pipes, so the rule waits one more tick rather than blame the plugins.
constexpr auto kLateTick = 50ms;

long long ms(Clock::duration duration) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(duration).count();
}

double millis(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

std::uint64_t checksum(capnp::Data::Reader bytes) {
  return std::accumulate(bytes.begin(), bytes.end(), std::uint64_t{0});
}

/// What became of a plugin.
enum class Fate {
  serving,   ///< still answering
  finished,  ///< answered every request; the host closed its channel
  crashed,   ///< its channel ended before it answered everything
  killed,    ///< the host found it hung and killed it
};

/// A request sent and not answered yet.
struct Pending {
  Clock::time_point sent_at;
  std::uint64_t checksum;  ///< what the answer must say
};

/// One plugin process and what the host knows of it.
struct Plugin {
  Plugin(asio::io_context& io, int plugin_index, capnsplice::Child child)
      : index(plugin_index),
        process(std::move(child.process)),
        channel(io, std::move(child.channel)),
        exit_watch(io) {
    // Asio closes the descriptors it watches: give it a copy of the pidfd. Kernels before
    // 5.3 have no pidfd; exit_watch then stays closed and tick() polls try_wait().
    if (process.exit_fd() >= 0) exit_watch.assign(::fcntl(process.exit_fd(), F_DUPFD_CLOEXEC, 0));
  }

  int index;
  capnsplice::ChildProcess process;
  capnsplice::AsioChannel channel;
  asio::posix::stream_descriptor exit_watch;
  std::map<std::uint64_t, Pending> in_flight;  // by request id: the first is the oldest
  int sent = 0;
  int answered = 0;
  Fate fate = Fate::serving;
  bool reading = true;        // its read_answers() coroutine still runs
  std::string what_happened;  // why it crashed, or why the host killed it
  std::optional<capnsplice::ExitStatus> exit_status;
};

/// The host: its plugins, their conversations, the tick, and the final report.
class Host {
 public:
  explicit Host(asio::io_context& io) : io_(io), ticker_(io) {}

  /// Starts every plugin, its reader, its exit watch and the tick; io.run() does the rest.
  void start();
  /// Prints one line per plugin and the gaps between ticks; true when everything
  /// happened as planned.
  bool report();

 private:
  void start_plugin(int index);
  /// Sends requests until the plugin has kInFlight in flight or was sent them all.
  void top_up(Plugin& plugin);
  void send_request(Plugin& plugin);
  /// Receives the plugin's answers until its channel ends (or the host cancels it).
  asio::awaitable<void> read_answers(Plugin& plugin);
  void take_answer(Plugin& plugin, capnsplice::ReceivedMessage& message);
  void channel_ended(Plugin& plugin, const capnsplice::Error& error);
  void watch_exit(Plugin& plugin);
  /// Every 10 ms: records the gap since the last tick, applies the hung rule, tops up.
  void tick();
  void record_gap(Clock::time_point now);
  std::optional<std::string> why_hung(Plugin& plugin, Clock::time_point now);
  void kill(Plugin& plugin, const std::string& why);
  /// True once every plugin's fate is known, its reader stopped and its process reaped.
  bool settled() const;
  bool as_planned(const Plugin& plugin) const;

  asio::io_context& io_;
  asio::steady_timer ticker_;
  std::deque<Plugin> plugins_;  // a deque: handlers hold references to its elements
  std::uint64_t next_request_id_ = 1;
  Clock::time_point started_;
  Clock::time_point last_tick_;
  int ticks_ = 0;
  std::vector<Clock::duration> gaps_;  // between consecutive ticks: 10 ms unless stalled
  Clock::duration longest_gap_{};
  Clock::time_point longest_gap_at_;
  bool judged_last_tick_ = true;  // the hung rule ran at the last tick (see kLateTick)
  bool gave_up_ = false;
};

void Host::start() {
  std::printf("host: %d plugins, %d requests each (512 B or 64 KiB), %zu in flight each\n",
              kPlugins, kRequestsEach, kInFlight);
  for (int i = 0; i < kPlugins; ++i) start_plugin(i);
  started_ = last_tick_ = Clock::now();
  tick();
}

void Host::start_plugin(int index) {
  const auto program =
      std::filesystem::read_symlink("/proc/self/exe").parent_path() / "plugin_host_plugin";
  capnsplice::SpawnOptions options{
      .program = program.string(),
      .arguments = {std::to_string(index)},
      .environment = {},
      .channel = capnsplice::ChannelOptions().with_name("plugin-" + std::to_string(index)),
      .descriptors = {},
      // A plugin ends with this host even when the host is killed with SIGKILL (and so
      // cannot close its channels): a hung plugin never outlives it.
      .parent_death_signal = SIGKILL,
  };
  const std::string after = std::to_string(kMisbehaveAfter);
  if (index == kCrashing) {
    options.arguments.insert(options.arguments.end(), {"--crash-after", after});
  }
  if (index == kStalling) {
    options.arguments.insert(options.arguments.end(), {"--stop-reading-after", after});
  }
  Plugin& plugin = plugins_.emplace_back(io_, index, capnsplice::spawn(options));
  // A reader that throws something else than the channel's end is a bug of this
  // example: rethrown here, it leaves io.run() and main() reports it.
  asio::co_spawn(io_, read_answers(plugin), [](std::exception_ptr error) {
    if (error) std::rethrow_exception(error);
  });
  watch_exit(plugin);
}

void Host::top_up(Plugin& plugin) {
  while (plugin.sent < kRequestsEach && plugin.in_flight.size() < kInFlight) send_request(plugin);
}

/// Every third request carries 64 KiB (vmspliced into the pipe), the others 512 B (copied).
void Host::send_request(Plugin& plugin) {
  const std::uint64_t id = next_request_id_++;
  capnsplice::OutgoingMessage message = plugin.channel.new_message();  // never waits
  auto request = message.init_root<example::Request>();
  request.setId(id);
  auto payload = request.initPayload(id % 3 == 0 ? 64 * capnsplice::KiB : 512);
  std::iota(payload.begin(), payload.end(), static_cast<capnp::byte>(id));
  plugin.in_flight[id] = Pending{Clock::now(), checksum(payload)};
  ++plugin.sent;
  // Completes once the message is in the pipe whole, without blocking the loop. Only
  // the answer counts, and a plugin that cannot take requests any more is noticed by
  // read_answers() or the hung rule, so the outcome is not needed here.
  plugin.channel.async_send(std::move(message), [](const std::exception_ptr&) {});
}

asio::awaitable<void> Host::read_answers(Plugin& plugin) {
  try {
    for (;;) {
      capnsplice::ReceivedMessage message =
          co_await plugin.channel.async_receive(asio::use_awaitable);
      take_answer(plugin, message);
    }
  } catch (const capnsplice::Error& error) {
    if (!error.peer_gone()) throw;
    channel_ended(plugin, error);
  } catch (const std::system_error&) {
    // operation_aborted: the host cancelled this receive when it killed the plugin.
    if (!capnsplice::is_operation_aborted(std::current_exception()) ||
        plugin.fate != Fate::killed) {
      throw;
    }
  }
  plugin.reading = false;
}

void Host::take_answer(Plugin& plugin, capnsplice::ReceivedMessage& message) {
  auto response = message.root<example::Response>();
  auto request = plugin.in_flight.find(response.getId());
  if (request == plugin.in_flight.end() || response.getChecksum() != request->second.checksum) {
    throw std::runtime_error("plugin " + std::to_string(plugin.index) + " answered request " +
                             std::to_string(response.getId()) + " wrongly");
  }
  plugin.in_flight.erase(request);
  if (++plugin.answered == kRequestsEach) {
    plugin.fate = Fate::finished;
    // Nothing is unsent (every request was answered), so this never waits. The plugin
    // reads end of stream and exits; read_answers() then sees PeerClosed.
    plugin.channel.channel().close_sending(capnsplice::Deadline::immediate());
  }
}

/// PeerClosed or TruncatedMessage: expected after the host closed the channel (or
/// killed the plugin), a crash otherwise.
void Host::channel_ended(Plugin& plugin, const capnsplice::Error& error) {
  if (plugin.fate != Fate::serving) return;
  plugin.fate = Fate::crashed;
  plugin.what_happened = capnsplice::to_string(error.code());
  plugin.channel.cancel();  // its sends fail anyway: the pipe has no reader
  std::printf("host: %4lld ms: plugin %d crashed (%s), %d of %d requests answered\n",
              ms(Clock::now() - started_), plugin.index, plugin.what_happened.c_str(),
              plugin.answered, plugin.sent);
}

/// The exit descriptor (a pidfd) becomes readable when the process ends; waiting for it
/// with Asio reaps the plugin without blocking the loop.
void Host::watch_exit(Plugin& plugin) {
  if (!plugin.exit_watch.is_open()) return;  // no pidfd: tick() polls try_wait()
  plugin.exit_watch.async_wait(asio::posix::stream_descriptor::wait_read,
                               [&plugin](boost::system::error_code error) {
                                 if (!error) plugin.exit_status = plugin.process.try_wait();
                               });
}

void Host::tick() {
  const Clock::time_point now = Clock::now();
  const bool judge = now - last_tick_ <= kLateTick || !judged_last_tick_;
  judged_last_tick_ = judge;
  record_gap(now);
  for (Plugin& plugin : plugins_) {
    if (plugin.fate == Fate::serving) {
      if (auto why = judge ? why_hung(plugin, now) : std::nullopt) {
        kill(plugin, *why);
      } else {
        top_up(plugin);
      }
    }
    if (!plugin.exit_watch.is_open() && !plugin.exit_status) {
      plugin.exit_status = plugin.process.try_wait();
    }
  }
  if (settled()) return;  // no more ticks: io.run() returns once the last handlers ran
  if (now - started_ > kGiveUpAfter) {
    gave_up_ = true;
    std::printf("host: gave up after %lld ms\n", ms(now - started_));
    io_.stop();  // the plugins' handles kill and reap them when the host is destroyed
    return;
  }
  ticker_.expires_at(now + kTick);
  ticker_.async_wait([this](boost::system::error_code error) {
    if (!error) tick();
  });
}

void Host::record_gap(Clock::time_point now) {
  if (ticks_++ > 0) {  // the first tick comes from start(), not from the timer
    const Clock::duration gap = now - last_tick_;
    gaps_.push_back(gap);
    if (gap > longest_gap_) {
      longest_gap_ = gap;
      longest_gap_at_ = now;
    }
  }
  last_tick_ = now;
}

/// The host's rule: why `plugin` counts as hung, or nothing when it does not.
std::optional<std::string> Host::why_hung(Plugin& plugin, Clock::time_point now) {
  if (!plugin.in_flight.empty()) {
    const Clock::duration waited = now - plugin.in_flight.begin()->second.sent_at;
    const auto limit = plugin.answered == 0 ? kMaxWaitForFirstAnswer : kMaxWait;
    if (waited > limit) return "no answer for " + std::to_string(ms(waited)) + " ms";
  }
  const std::size_t unsent = plugin.channel.channel().unsent_bytes();
  if (unsent > kMaxUnsentBytes) return std::to_string(unsent / capnsplice::KiB) + " KiB unsent";
  return std::nullopt;
}

void Host::kill(Plugin& plugin, const std::string& why) {
  plugin.fate = Fate::killed;
  plugin.what_happened = why;
  plugin.process.kill();    // SIGKILL, through the pidfd; watch_exit() reaps it
  plugin.channel.cancel();  // its receive and sends complete with operation_aborted
  std::printf("host: %4lld ms: plugin %d is hung (%s), %d of %d requests answered: killed\n",
              ms(Clock::now() - started_), plugin.index, why.c_str(), plugin.answered, plugin.sent);
}

bool Host::settled() const {
  return std::all_of(plugins_.begin(), plugins_.end(), [](const Plugin& plugin) {
    return plugin.fate != Fate::serving && !plugin.reading && plugin.exit_status;
  });
}

bool Host::as_planned(const Plugin& plugin) const {
  if (!plugin.exit_status) return false;
  switch (plugin.index) {
    case kCrashing:
      return plugin.fate == Fate::crashed && !plugin.exit_status->success();
    case kStalling:
      return plugin.fate == Fate::killed && plugin.exit_status->killed() &&
             plugin.exit_status->signal() == SIGKILL;
    default:
      return plugin.fate == Fate::finished && plugin.answered == kRequestsEach &&
             plugin.exit_status->success();
  }
}

bool Host::report() {
  bool all_as_planned = !gave_up_;
  for (const Plugin& plugin : plugins_) {
    static constexpr const char* kFates[] = {"still serving", "finished", "crashed",
                                             "killed by the host"};
    std::string fate = kFates[static_cast<int>(plugin.fate)];
    if (!plugin.what_happened.empty()) fate += " (" + plugin.what_happened + ")";
    std::printf("host: plugin %2d: %3d/%3d answered, %s, %s\n", plugin.index, plugin.answered,
                plugin.sent, fate.c_str(),
                plugin.exit_status ? plugin.exit_status->describe().c_str() : "still running");
    all_as_planned = all_as_planned && as_planned(plugin);
  }
  // The gaps include the time this thread waited for a CPU: on a machine with fewer
  // cores than busy plugins, the longest is the scheduler's doing as much as the loop's.
  std::sort(gaps_.begin(), gaps_.end());
  const Clock::duration median = gaps_.empty() ? Clock::duration() : gaps_[gaps_.size() / 2];
  std::printf(
      "host: %d ticks in %lld ms, 10 ms apart: median gap %.1f ms, longest %.1f ms"
      " (at %lld ms)\n",
      ticks_, ms(last_tick_ - started_), millis(median), millis(longest_gap_),
      ms(longest_gap_at_ - started_));
  return all_as_planned;
}

}  // namespace

int main() {
  try {
    asio::io_context io;
    Host host(io);
    host.start();
    io.run();  // one thread: every plugin's sends, receives and exit, and the tick
    const bool done = host.report();
    std::printf("host: %s\n", done ? "done" : "something unexpected happened");
    return done ? 0 : 1;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "host: %s\n", error.what());
    return 1;
  }
}
