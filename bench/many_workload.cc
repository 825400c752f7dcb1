#include "many_workload.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <capnsplice/channel.h>
#include <capnsplice/unique_fd.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <thread>

#include "fresh_process.h"
#include "payload.h"
#include "process_figures.h"
#include "results.h"
#include "runner.h"

namespace bench {

namespace {

using capnsplice::UniqueFd;
using capnsplice::demo::Chunk;

/// N pairs of one kind, all made in the host before the child is forked.
class Pairs {
 public:
  virtual ~Pairs() = default;
  /// Makes one more pair. Throws when it cannot.
  virtual void add() = 0;
  /// Closes, in this process, the ends the other process keeps.
  virtual void keep(bool host_ends) = 0;
  /// Builds a Chunk of `payload_bytes` (filled) and sends it on `channel`.
  virtual void send(std::size_t channel, std::uint64_t seq, std::size_t payload_bytes) = 0;
  /// Waits for the next message on `channel`, checks it and returns its seq.
  virtual std::uint64_t receive(std::size_t channel) = 0;
};

/// The ends of both sides, in two vectors, until keep() drops one of them.
template <typename End>
class PairsOf : public Pairs {
 public:
  explicit PairsOf(std::size_t count) {
    for (std::vector<End>& side : ends_) side.reserve(count);
  }

  void keep(bool host_ends) override {
    mine_ = host_ends ? 0 : 1;
    ends_[1 - mine_].clear();
  }

 protected:
  void add_ends(End host, End child) {
    ends_[0].push_back(std::move(host));
    ends_[1].push_back(std::move(child));
  }
  End& end(std::size_t channel) { return ends_[mine_][channel]; }

 private:
  std::vector<End> ends_[2];  // the host's, the child's
  std::size_t mine_ = 0;
};

/// capnsplice: Channel::pair() with the library's defaults.
class ChannelPairs final : public PairsOf<capnsplice::Channel> {
 public:
  using PairsOf::PairsOf;

  void add() override {
    auto [host, child] = capnsplice::Channel::pair();
    add_ends(std::move(host), std::move(child));
  }

  void send(std::size_t channel, std::uint64_t seq, std::size_t payload_bytes) override {
    capnsplice::OutgoingMessage message = end(channel).new_message();
    fill_chunk(message.init_root<Chunk>(), seq, payload_bytes);
    end(channel).send(std::move(message));
  }

  std::uint64_t receive(std::size_t channel) override {
    return check_chunk(end(channel).receive().root<Chunk>());
  }
};

/// Plain Cap'n Proto over one blocking AF_UNIX socketpair per channel (kernel defaults),
/// framed as the capnp-socketpair transport frames it.
class SocketPairs final : public PairsOf<UniqueFd> {
 public:
  using PairsOf::PairsOf;

  void add() override {
    int ends[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends) != 0) {
      throw std::runtime_error(std::string("socketpair: ") + std::strerror(errno));
    }
    add_ends(UniqueFd(ends[0]), UniqueFd(ends[1]));
  }

  void send(std::size_t channel, std::uint64_t seq, std::size_t payload_bytes) override {
    capnp::MallocMessageBuilder message;
    fill_chunk(message.initRoot<Chunk>(), seq, payload_bytes);
    capnp::writeMessageToFd(end(channel).get(), message);
  }

  std::uint64_t receive(std::size_t channel) override {
    capnp::StreamFdMessageReader message(end(channel).get(), bench_reader_options());
    return check_chunk(message.getRoot<Chunk>());
  }
};

struct Implementation {
  std::string name;
  std::unique_ptr<Pairs> (*make)(std::size_t count);
};

const std::vector<Implementation>& implementations() {
  static const std::vector<Implementation> all = {
      {"capnsplice",
       [](std::size_t n) -> std::unique_ptr<Pairs> { return std::make_unique<ChannelPairs>(n); }},
      {"capnp-socketpair",
       [](std::size_t n) -> std::unique_ptr<Pairs> { return std::make_unique<SocketPairs>(n); }},
  };
  return all;
}

/// The child: takes the stream in the order it was sent and checks every seq; answers
/// the end of the warm-up round and the end of the run (with the count) on channel 0,
/// then waits for the host's goodbye there.
void serve_child(Pairs& pairs, std::size_t channels) {
  for (std::uint64_t seq = 0;; ++seq) {
    const std::uint64_t got = pairs.receive(seq % channels);
    if (got == kEndOfRun) {
      pairs.send(0, seq, 0);
      break;
    }
    if (got != seq) {
      throw std::runtime_error("message " + std::to_string(seq) + " arrived as " +
                               std::to_string(got));
    }
    if (seq + 1 == channels) pairs.send(0, seq, 0);  // the warm-up round is in
  }
  if (pairs.receive(0) != kEndOfRun) throw std::runtime_error("no goodbye from the host");
}

/// One warm-up round (a message on every channel, answered), then the measured stream.
void stream(Pairs& pairs, const ManyPlan& plan, ManyOutcome& outcome) {
  const std::size_t channels = plan.channels;
  std::uint64_t seq = 0;
  for (; seq < channels; ++seq) pairs.send(seq, seq, plan.payload_bytes);
  if (pairs.receive(0) != channels - 1) throw std::runtime_error("the warm-up went wrong");
  const Clock::time_point start = Clock::now();
  const Clock::time_point end = start + plan.stream;
  for (; Clock::now() < end; ++seq) pairs.send(seq % channels, seq, plan.payload_bytes);
  pairs.send(seq % channels, kEndOfRun, 0);
  const std::uint64_t received = pairs.receive(0);
  outcome.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (received != seq) {
    throw std::runtime_error("the child received " + std::to_string(received) + " of " +
                             std::to_string(seq) + " messages");
  }
  outcome.messages = seq - channels;
}

double microseconds_since(Clock::time_point start) {
  return std::chrono::duration<double, std::micro>(Clock::now() - start).count();
}

/// In a fresh host process: makes the pairs, forks the child, streams, idles.
ManyOutcome run_host(const Implementation& implementation, const ManyPlan& plan) {
  raise_descriptor_limit();  // the child inherits it
  ManyOutcome outcome;
  const auto snapshot = [](double& rss_mib, int& fds) {
    rss_mib = status_mib("VmRSS:");
    fds = open_fds();
  };
  // Read twice: the first reading faults in the code and buffers that reading takes.
  snapshot(outcome.rss_before_mib, outcome.fds_before);
  snapshot(outcome.rss_before_mib, outcome.fds_before);
  const std::unique_ptr<Pairs> pairs = implementation.make(plan.channels);
  const Clock::time_point began = Clock::now();
  for (std::size_t made = 0; made < plan.channels; ++made) {
    try {
      pairs->add();
    } catch (const std::exception& error) {
      throw std::runtime_error("pair " + std::to_string(made + 1) + " of " +
                               std::to_string(plan.channels) + ": " + error.what());
    }
    if (made == 0) outcome.create_first_us = microseconds_since(began);
  }
  outcome.create_us_per_pair = microseconds_since(began) / static_cast<double>(plan.channels);
  SharedWithChildren<ChildError> child_error;
  ChildProcess child = ChildProcess::spawn([&] {
    return run_reporting_error(
        [&] {
          pairs->keep(false);
          serve_child(*pairs, plan.channels);
        },
        *child_error);
  });
  pairs->keep(true);
  snapshot(outcome.rss_created_mib, outcome.fds_created);
  try {
    stream(*pairs, plan, outcome);
    int fds_streamed = 0;
    snapshot(outcome.rss_streamed_mib, fds_streamed);
    std::this_thread::sleep_for(plan.idle);
    snapshot(outcome.rss_idle_mib, outcome.fds_idle);
    pairs->send(0, kEndOfRun, 0);  // goodbye
  } catch (...) {
    // A child that failed first is the cause: its reason, not the host's "peer closed".
    wait_for_event(std::span(&child, 1), -1, Clock::now() + std::chrono::milliseconds(200));
    if (!child.running()) wait_for_success(child, *child_error, std::chrono::seconds(1));
    throw;
  }
  wait_for_success(child, *child_error, std::chrono::seconds(10));
  outcome.fds_created -= 1;  // the child's pidfd
  outcome.fds_idle -= 1;
  return outcome;
}

void record(const std::string& name, const ManyPlan& plan, const ManyOutcome& outcome,
            Results& results) {
  const auto add = [&](const char* figure, double value) {
    results.add(name, plan.payload_bytes, many_metric(figure, plan.channels), value);
  };
  const auto channels = static_cast<double>(plan.channels);
  const double per_second = static_cast<double>(outcome.messages) / outcome.seconds;
  add(many_figure::kMessagesPerSecond, per_second);
  add(many_figure::kPayloadMBps, per_second * static_cast<double>(plan.payload_bytes) / 1e6);
  add(many_figure::kRssCreated, outcome.rss_created_mib);
  add(many_figure::kRssStreamed, outcome.rss_streamed_mib);
  add(many_figure::kRssIdle, outcome.rss_idle_mib);
  add(many_figure::kRssPerPairIdle,
      (outcome.rss_idle_mib - outcome.rss_before_mib) * 1024 / channels);
  add(many_figure::kFdsPerPair, (outcome.fds_created - outcome.fds_before) / channels);
  add(many_figure::kFdsPerPairIdle, (outcome.fds_idle - outcome.fds_before) / channels);
  add(many_figure::kCreateUs, outcome.create_us_per_pair);
  add(many_figure::kCreateFirstUs, outcome.create_first_us);
}

}  // namespace

std::string many_metric(const char* figure, std::size_t channels) {
  return "many_" + std::string(figure) + "_n" + std::to_string(channels);
}

const std::vector<std::string>& many_implementations() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> all;
    for (const Implementation& implementation : implementations())
      all.push_back(implementation.name);
    return all;
  }();
  return names;
}

void run_many_workload(const std::vector<std::size_t>& channel_counts,
                       const std::vector<std::size_t>& payload_sizes, const ManyPlan& base,
                       std::chrono::seconds timeout, Results& results) {
  run_count_sweep(
      {"many", "channels", "messages"}, many_implementations(), channel_counts, payload_sizes,
      [&](std::size_t way, std::size_t channels, std::size_t size) {
        const Implementation& implementation = implementations()[way];
        ManyPlan plan = base;
        plan.channels = channels;
        plan.payload_bytes = size;
        record(implementation.name, plan,
               run_in_fresh_process<ManyOutcome>([&] { return run_host(implementation, plan); },
                                                 timeout),
               results);
      },
      results);
}

}  // namespace bench
