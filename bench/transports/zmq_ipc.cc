// zmq-ipc: ZeroMQ PAIR sockets over ipc:// (a Unix socket), one message per frame.
//
// The sender flattens each message and hands the array to zmq without another copy
// (zmq_msg_init_data frees it once sent); the receiver opens zmq's buffer in place
// with capnp::FlatArrayMessageReader, copying to an aligned buffer only when zmq's
// data is not 8-byte aligned. Busy-poll mode loops on zmq_msg_recv(ZMQ_DONTWAIT).
// Contexts are made in the children: a zmq context does not survive fork().
#include <unistd.h>
#include <zmq.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "payload.h"
#include "transport.h"
#include "transports/flat_array.h"

namespace bench {

namespace {

[[noreturn]] void throw_zmq(const char* call) {
  throw std::runtime_error(std::string(call) + ": " + zmq_strerror(zmq_errno()));
}

/// A zmq_msg_t that is always closed.
struct ZmqMessage {
  zmq_msg_t msg;
  ZmqMessage() { zmq_msg_init(&msg); }
  ~ZmqMessage() { zmq_msg_close(&msg); }
  ZmqMessage(const ZmqMessage&) = delete;
  ZmqMessage& operator=(const ZmqMessage&) = delete;
};

class ZmqEndpoint final : public Endpoint {
 public:
  ZmqEndpoint(Side side, const std::string& address, std::size_t frame_bytes)
      : context_(zmq_ctx_new()), socket_(zmq_socket(context_, ZMQ_PAIR)) {
    if (socket_ == nullptr) throw_zmq("zmq_socket");
    // zmq's default of 1000 messages would queue 16 GiB of 16 MiB messages.
    const int high_water_mark = static_cast<int>(queue_depth(frame_bytes, 2, 1000));
    // Closing waits until every queued message went out, however long the receiver takes
    // (a finite linger drops the rest, end-of-run message included); the parent's
    // timeout bounds the wait if the receiver is gone.
    const int linger_ms = -1;
    zmq_setsockopt(socket_, ZMQ_SNDHWM, &high_water_mark, sizeof high_water_mark);
    zmq_setsockopt(socket_, ZMQ_RCVHWM, &high_water_mark, sizeof high_water_mark);
    zmq_setsockopt(socket_, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    const int status = side == Side::a ? zmq_bind(socket_, address.c_str())
                                       : zmq_connect(socket_, address.c_str());
    if (status != 0) throw_zmq(side == Side::a ? "zmq_bind" : "zmq_connect");
  }

  ~ZmqEndpoint() override {
    zmq_close(socket_);
    zmq_ctx_term(context_);
  }

  void send(std::uint64_t seq, std::size_t payload_bytes) override {
    auto* flat = new kj::Array<capnp::word>(build_flat_chunk(seq, payload_bytes));
    ZmqMessage message;
    zmq_msg_init_data(
        &message.msg, flat->begin(), flat->size() * sizeof(capnp::word),
        [](void*, void* owner) { delete static_cast<kj::Array<capnp::word>*>(owner); }, flat);
    while (zmq_msg_send(&message.msg, socket_, 0) < 0) {
      if (zmq_errno() != EINTR) throw_zmq("zmq_msg_send");
    }
  }

  std::uint64_t receive(WaitMode mode) override {
    ZmqMessage message;
    const int flags = mode == WaitMode::spin ? ZMQ_DONTWAIT : 0;
    while (zmq_msg_recv(&message.msg, socket_, flags) < 0) {
      if (zmq_errno() != EAGAIN && zmq_errno() != EINTR) throw_zmq("zmq_msg_recv");
    }
    const void* data = zmq_msg_data(&message.msg);
    const std::size_t bytes = zmq_msg_size(&message.msg);
    if (reinterpret_cast<std::uintptr_t>(data) % alignof(capnp::word) == 0) {
      return check_flat_chunk(
          kj::arrayPtr(static_cast<const capnp::word*>(data), bytes / sizeof(capnp::word)));
    }
    std::memcpy(buffer_.reserve(bytes).begin(), data, bytes);
    return check_flat_chunk(buffer_.words(bytes));
  }

 private:
  void* context_;
  void* socket_;
  AlignedBuffer buffer_;
};

class ZmqLink final : public Link {
 public:
  explicit ZmqLink(const LinkParams& params)
      : path_("/tmp/" + params.unique_name + ".ipc"),
        frame_bytes_(max_frame_bytes(params.payload_bytes)) {}

  ~ZmqLink() override { ::unlink(path_.c_str()); }

  std::unique_ptr<Endpoint> open(Side side) override {
    return std::make_unique<ZmqEndpoint>(side, "ipc://" + path_, frame_bytes_);
  }

 private:
  std::string path_;
  std::size_t frame_bytes_;
};

}  // namespace

Transport zmq_ipc_transport() {
  return {.name = "zmq-ipc",
          .description =
              "ZeroMQ PAIR over ipc:// of messageToFlatArray bytes (zero-copy "
              "send, HWM ~4 MiB); +spin loops on ZMQ_DONTWAIT",
          .make_link = make_link_of<ZmqLink>};
}

}  // namespace bench
