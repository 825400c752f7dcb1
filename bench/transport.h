// bench/transport.h — what every transport under test provides.
//
// A transport is described by a Transport entry (transports/registry.cc holds the
// table). For each measurement the parent process asks it for a Link: the connected
// resources (pipes, queues, socket names) made *before* forking, so both children
// inherit them. Each child then opens its Side of the link as an Endpoint and runs
// a workload (workloads.h) that only calls Endpoint::send() and Endpoint::receive().
//
//   parent:   link = transport.make_link(params)    fork A, fork B     ~link (cleanup)
//   child A:  auto a = link->open(Side::a);  a->send(...) / a->receive(...)
//   child B:  auto b = link->open(Side::b);  ...
//
// Adding a transport: one file in transports/ defining a Transport, one line in the
// table in transports/registry.cc, one line in CMakeLists.txt.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace bench {

/// How a receiver waits for the next message.
enum class WaitMode {
  block,  ///< the transport's normal receive (may spin briefly inside, then sleep)
  spin,   ///< busy-poll: non-blocking attempts in a loop, never sleeps
};

/// The two ends of a link. In the throughput workload A sends and B receives; in the
/// round-trip workload A pings and B answers.
enum class Side { a, b };

/// One end of a link, used by exactly one process.
class Endpoint {
 public:
  virtual ~Endpoint() = default;

  /// Builds one message whose payload has `payload_bytes` bytes, fills the payload
  /// completely (payload.h says with what) and sends it.
  virtual void send(std::uint64_t seq, std::size_t payload_bytes) = 0;

  /// In a one-way stream: like send(), but the transport may hold the message back to
  /// write it together with the ones that follow (its batching, where it has one). The
  /// stream ends with a send(), which writes everything held first.
  virtual void stream(std::uint64_t seq, std::size_t payload_bytes) { send(seq, payload_bytes); }

  /// Waits for the next message, checks its payload (payload.h) and returns its
  /// sequence number. Throws on a damaged message or a closed peer.
  virtual std::uint64_t receive(WaitMode mode) = 0;

  /// Large-message latency (transports with supports_large_messages): builds and fills
  /// a Bulk message of `payload_bytes` now, so that send_prepared() times only its
  /// sending; receive_bulk() takes one and returns its seq once the whole message is in
  /// hand (payload.h: bulk_arrived; the moment the clock stops); check_bulk() then
  /// checks a few bytes of each of its parts.
  virtual void prepare_bulk(std::uint64_t /*seq*/, std::size_t /*payload_bytes*/) {
    throw std::logic_error("this transport does not measure large messages");
  }
  virtual void send_prepared() { throw std::logic_error("nothing prepared"); }
  virtual std::uint64_t receive_bulk(WaitMode /*mode*/) {
    throw std::logic_error("this transport does not measure large messages");
  }
  virtual void check_bulk() {}

  /// For transports with more than one way to send: how this side's messages went, e.g.
  /// "vmsplice 99.9% · copy 0.1%". Empty for the others.
  virtual std::string paths_taken() { return {}; }
};

/// What a link must be able to carry.
struct LinkParams {
  /// The largest payload of the measurement, in bytes.
  std::size_t payload_bytes = 0;
  /// Unique among the links of this run, for names in /dev/shm or /tmp.
  std::string unique_name;
};

/// The shared resources of one measurement, made in the parent before forking.
class Link {
 public:
  virtual ~Link() = default;

  /// In a child: opens `side` and releases everything that belongs to the other side
  /// in this process (so end of stream is seen when the peer exits). Called once per
  /// child — or twice, once per side, for transports that run in one process.
  virtual std::unique_ptr<Endpoint> open(Side side) = 0;

  /// In the parent, once both children are forked: drops what the parent holds so
  /// that only the children keep the link's descriptors open. Named resources are
  /// removed by the destructor, after the children exited.
  virtual void release_in_parent() {}
};

/// One entry of the transport table.
struct Transport {
  /// The name in tables, in the CSV and on the command line.
  std::string name;
  /// One line for --help.
  std::string description;
  /// False where busy-polling has no meaning (the round-trip workload then runs
  /// only in blocking mode).
  bool supports_spin = true;
  /// True for a transport that always busy-polls (shm-spin): its round trip runs only as
  /// the "+spin" row.
  bool only_spins = false;
  /// True for the memcpy ceiling: both sides run in one thread of one process.
  bool in_one_process = false;
  /// False for transports that have no round trip to measure (memcpy).
  bool supports_round_trip = true;
  /// True for transports in the large-message latency workload (capnsplice's paths and
  /// capnp over a socketpair): their endpoints implement prepare_bulk() and friends.
  bool supports_large_messages = false;
  std::function<std::unique_ptr<Link>(const LinkParams& params)> make_link;
};

/// The usual make_link: a `LinkType` constructed from the parameters.
template <typename LinkType>
std::unique_ptr<Link> make_link_of(const LinkParams& params) {
  return std::make_unique<LinkType>(params);
}

/// Every transport, in table order.
const std::vector<Transport>& all_transports();

/// The transport whose ratios the tables print (capnp over a socketpair).
inline constexpr const char* kBaselineTransport = "capnp-socketpair";

}  // namespace bench
