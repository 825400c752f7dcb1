// boost-mq: Boost.Interprocess message_queue, one queue per direction.
//
// The sender flattens each message (capnp::messageToFlatArray) and sends the bytes;
// the receiver copies them out of the queue into an aligned buffer and opens them
// with capnp::FlatArrayMessageReader. Busy-poll mode loops on try_receive().
#include <boost/interprocess/ipc/message_queue.hpp>
#include <string>

#include "payload.h"
#include "transport.h"
#include "transports/flat_array.h"

namespace bench {

namespace {

namespace ipc = boost::interprocess;

class BoostMqEndpoint final : public Endpoint {
 public:
  BoostMqEndpoint(const std::string& outgoing, const std::string& incoming, std::size_t frame_bytes)
      : outgoing_(ipc::open_only, outgoing.c_str()),
        incoming_(ipc::open_only, incoming.c_str()),
        frame_bytes_(frame_bytes) {}

  void send(std::uint64_t seq, std::size_t payload_bytes) override {
    const kj::Array<capnp::word> flat = build_flat_chunk(seq, payload_bytes);
    const auto bytes = flat.asBytes();
    outgoing_.send(bytes.begin(), bytes.size(), /*priority=*/0);
  }

  std::uint64_t receive(WaitMode mode) override {
    kj::ArrayPtr<capnp::word> space = buffer_.reserve(frame_bytes_);
    const std::size_t space_bytes = space.size() * sizeof(capnp::word);
    ipc::message_queue::size_type received = 0;
    unsigned int priority = 0;
    if (mode == WaitMode::spin) {
      while (!incoming_.try_receive(space.begin(), space_bytes, received, priority)) {
      }
    } else {
      incoming_.receive(space.begin(), space_bytes, received, priority);
    }
    return check_flat_chunk(buffer_.words(received));
  }

 private:
  ipc::message_queue outgoing_;
  ipc::message_queue incoming_;
  std::size_t frame_bytes_;
  AlignedBuffer buffer_;
};

class BoostMqLink final : public Link {
 public:
  explicit BoostMqLink(const LinkParams& params)
      : a_to_b_(params.unique_name + "-a-to-b"),
        b_to_a_(params.unique_name + "-b-to-a"),
        frame_bytes_(max_frame_bytes(params.payload_bytes)) {
    for (const std::string& name : {a_to_b_, b_to_a_}) {
      ipc::message_queue::remove(name.c_str());
      // Created here so both children can open it; the parent unmaps it right away.
      ipc::message_queue(ipc::create_only, name.c_str(), queue_depth(frame_bytes_, 4, 1024),
                         frame_bytes_);
    }
  }

  ~BoostMqLink() override {
    ipc::message_queue::remove(a_to_b_.c_str());
    ipc::message_queue::remove(b_to_a_.c_str());
  }

  std::unique_ptr<Endpoint> open(Side side) override {
    return side == Side::a ? std::make_unique<BoostMqEndpoint>(a_to_b_, b_to_a_, frame_bytes_)
                           : std::make_unique<BoostMqEndpoint>(b_to_a_, a_to_b_, frame_bytes_);
  }

 private:
  std::string a_to_b_, b_to_a_;
  std::size_t frame_bytes_;
};

}  // namespace

Transport boost_mq_transport() {
  return {.name = "boost-mq",
          .description =
              "Boost.Interprocess message_queue (~4 MiB of slots per direction) "
              "of messageToFlatArray bytes; +spin loops on try_receive()",
          .make_link = make_link_of<BoostMqLink>};
}

}  // namespace bench
