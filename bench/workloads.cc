#include "workloads.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "payload.h"

namespace bench {

namespace {

/// Decides when a timed run has done enough: see WorkloadPlan.
class Budget {
 public:
  explicit Budget(const WorkloadPlan& plan)
      : plan_(plan),
        stop_at_(Clock::now() + plan.time_budget),
        give_up_at_(Clock::now() + kMinimumWaivedAfter * plan.time_budget),
        // Reading the clock costs ~25 ns: only every 32nd time for small messages.
        clock_mask_(plan.payload_bytes < 4096 ? 31 : 0) {}

  bool spent(std::uint64_t messages) const {
    const bool enough = messages >= plan_.min_messages;
    if (enough && messages * plan_.payload_bytes >= plan_.byte_budget) return true;
    if (messages == 0 || (messages & clock_mask_) != 0) return false;
    const Clock::time_point now = Clock::now();
    return (enough && now >= stop_at_) || now >= give_up_at_;
  }

 private:
  const WorkloadPlan& plan_;
  Clock::time_point stop_at_;
  Clock::time_point give_up_at_;
  std::uint64_t clock_mask_;
};

void expect_seq(std::uint64_t got, std::uint64_t want) {
  if (got != want) {
    throw std::runtime_error("expected message " + std::to_string(want) + ", got " +
                             std::to_string(got));
  }
}

WorkloadOutcome stream_send(Endpoint& endpoint, const WorkloadPlan& plan, StartBarrier& barrier) {
  std::uint64_t seq = 0;
  for (; seq < plan.warmup_messages; ++seq) endpoint.send(seq, plan.payload_bytes);
  barrier.arrive_and_wait();
  Budget budget(plan);
  std::uint64_t sent = 0;
  while (!budget.spent(sent)) {
    endpoint.stream(seq++, plan.payload_bytes);
    ++sent;
  }
  endpoint.send(kEndOfRun, plan.payload_bytes);
  return {.messages = sent};
}

WorkloadOutcome stream_receive(Endpoint& endpoint, const WorkloadPlan& plan,
                               StartBarrier& barrier) {
  std::uint64_t seq = 0;
  for (; seq < plan.warmup_messages; ++seq) expect_seq(endpoint.receive(plan.wait), seq);
  barrier.arrive_and_wait();
  WorkloadOutcome outcome;
  for (;;) {
    const std::uint64_t got = endpoint.receive(plan.wait);
    if (got == kEndOfRun) return outcome;
    outcome.last_message_at = Clock::now();
    expect_seq(got, seq++);
    ++outcome.messages;
  }
}

/// Writes `bytes` of memory of its own (allocated on the first call), as building a
/// message of that size would.
void evict_caches(std::size_t bytes, std::uint64_t seq) {
  static std::vector<std::byte> scratch;
  if (scratch.size() < bytes) scratch.resize(bytes);
  std::memset(scratch.data(), static_cast<int>(seq & 0xff), bytes);
}

/// A percentile of samples in nanoseconds, in microseconds; sorts `samples`.
template <typename Nanoseconds>
double percentile_us(std::vector<Nanoseconds>& samples, double p) {
  std::sort(samples.begin(), samples.end());
  const std::size_t rank = static_cast<std::size_t>(p * static_cast<double>(samples.size() - 1));
  return samples[rank] / 1000.0;
}

/// Summarises round-trip samples (nanoseconds) as percentiles in microseconds.
void summarise_round_trips(std::vector<std::uint32_t>& samples, WorkloadOutcome& outcome) {
  if (samples.empty()) return;
  outcome.messages = samples.size();
  outcome.rtt_p50_us = percentile_us(samples, 0.50);
  outcome.rtt_p99_us = percentile_us(samples, 0.99);
  outcome.rtt_p999_us = percentile_us(samples, 0.999);
}

/// Nanoseconds on the steady clock: what an acknowledgement's seq carries.
std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
          .count());
}

WorkloadOutcome send_large(Endpoint& endpoint, const WorkloadPlan& plan, StartBarrier& barrier) {
  std::uint64_t seq = 0;
  for (; seq < plan.warmup_messages; ++seq) {
    endpoint.prepare_bulk(seq, plan.payload_bytes);
    if (plan.evict_bytes != 0) evict_caches(plan.evict_bytes, seq);  // its pages faulted in
    endpoint.send_prepared();
    endpoint.receive(WaitMode::spin);
  }
  barrier.arrive_and_wait();
  std::vector<std::uint64_t> samples;  // a 1 GiB copy can take longer than 2^32 ns
  Budget budget(plan);
  while (!budget.spent(samples.size())) {
    endpoint.prepare_bulk(seq, plan.payload_bytes);  // building is not what is timed
    if (plan.evict_bytes != 0) evict_caches(plan.evict_bytes, seq);
    ++seq;
    const std::uint64_t sent_at = now_ns();
    endpoint.send_prepared();
    const std::uint64_t taken_at = endpoint.receive(WaitMode::spin);  // the receiver's clock
    samples.push_back(taken_at > sent_at ? taken_at - sent_at : 0);
  }
  endpoint.prepare_bulk(kEndOfRun, 0);
  endpoint.send_prepared();
  WorkloadOutcome outcome;
  if (samples.empty()) return outcome;
  outcome.messages = samples.size();
  outcome.one_way_p50_us = percentile_us(samples, 0.50);
  outcome.one_way_p99_us = percentile_us(samples, 0.99);
  return outcome;
}

WorkloadOutcome receive_large(Endpoint& endpoint, const WorkloadPlan& plan, StartBarrier& barrier) {
  for (std::size_t i = 0; i < plan.warmup_messages; ++i) {
    endpoint.receive_bulk(WaitMode::spin);
    endpoint.check_bulk();
    endpoint.send(now_ns(), 0);
  }
  barrier.arrive_and_wait();
  WorkloadOutcome outcome;
  for (;;) {
    if (endpoint.receive_bulk(WaitMode::spin) == kEndOfRun) return outcome;
    const std::uint64_t taken_at = now_ns();  // the message's root is in hand
    endpoint.check_bulk();
    endpoint.send(taken_at, 0);  // the reading travels back as the answer's seq
    ++outcome.messages;
  }
}

WorkloadOutcome ping(Endpoint& endpoint, const WorkloadPlan& plan, StartBarrier& barrier) {
  std::uint64_t seq = 0;
  for (; seq < plan.warmup_messages; ++seq) {
    endpoint.send(seq, plan.payload_bytes);
    expect_seq(endpoint.receive(plan.wait), seq);
  }
  barrier.arrive_and_wait();
  std::vector<std::uint32_t> samples;
  samples.reserve(1 << 16);
  Budget budget(plan);
  while (!budget.spent(samples.size())) {
    const Clock::time_point sent_at = Clock::now();
    endpoint.send(seq, plan.payload_bytes);
    expect_seq(endpoint.receive(plan.wait), seq++);
    const auto elapsed =
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - sent_at);
    samples.push_back(
        static_cast<std::uint32_t>(std::min<std::int64_t>(elapsed.count(), UINT32_MAX)));
  }
  endpoint.send(kEndOfRun, plan.payload_bytes);
  WorkloadOutcome outcome;
  summarise_round_trips(samples, outcome);
  return outcome;
}

WorkloadOutcome pong(Endpoint& endpoint, const WorkloadPlan& plan, StartBarrier& barrier) {
  // Warm-up messages are answered before arriving: side A waits for each answer.
  std::uint64_t answered = 0;
  for (; answered < plan.warmup_messages; ++answered) {
    endpoint.send(endpoint.receive(plan.wait), plan.payload_bytes);
  }
  barrier.arrive_and_wait();
  for (;;) {
    const std::uint64_t seq = endpoint.receive(plan.wait);
    if (seq == kEndOfRun) return {.messages = answered - plan.warmup_messages};
    endpoint.send(seq, plan.payload_bytes);
    ++answered;
  }
}

}  // namespace

WorkloadOutcome run_side(Side side, Endpoint& endpoint, const WorkloadPlan& plan,
                         StartBarrier& barrier) {
  if (plan.workload == Workload::throughput) {
    return side == Side::a ? stream_send(endpoint, plan, barrier)
                           : stream_receive(endpoint, plan, barrier);
  }
  if (plan.workload == Workload::large_message) {
    return side == Side::a ? send_large(endpoint, plan, barrier)
                           : receive_large(endpoint, plan, barrier);
  }
  return side == Side::a ? ping(endpoint, plan, barrier) : pong(endpoint, plan, barrier);
}

WorkloadOutcome run_in_one_thread(Endpoint& sender, Endpoint& receiver, const WorkloadPlan& plan,
                                  StartBarrier& barrier) {
  if (plan.workload != Workload::throughput) {
    throw std::logic_error("a transport in one thread has no round trip to measure");
  }
  std::uint64_t seq = 0;
  for (; seq < plan.warmup_messages; ++seq) {
    sender.send(seq, plan.payload_bytes);
    expect_seq(receiver.receive(plan.wait), seq);
  }
  barrier.arrive_and_wait();
  Budget budget(plan);
  WorkloadOutcome outcome;
  while (!budget.spent(outcome.messages)) {
    sender.send(seq, plan.payload_bytes);
    expect_seq(receiver.receive(plan.wait), seq++);
    ++outcome.messages;
  }
  outcome.last_message_at = Clock::now();
  return outcome;
}

}  // namespace bench
