// capnp-socketpair and capnp-pipe: plain Cap'n Proto stream I/O, what capnsplice replaces.
//
// Exactly the calls an application makes: a fresh MallocMessageBuilder per message,
// capnp::writeMessageToFd() to send, a capnp::StreamFdMessageReader to receive.
#include <capnp/message.h>
#include <capnp/serialize.h>

#include <optional>

#include "payload.h"
#include "transports/fd_link.h"

namespace bench {

namespace {

using capnsplice::demo::Bulk;
using capnsplice::demo::Chunk;

class CapnpStreamEndpoint final : public Endpoint {
 public:
  explicit CapnpStreamEndpoint(SideFds fds) : fds_(std::move(fds)) {}

  void send(std::uint64_t seq, std::size_t payload_bytes) override {
    capnp::MallocMessageBuilder message;
    fill_chunk(message.initRoot<Chunk>(), seq, payload_bytes);
    capnp::writeMessageToFd(fds_.write.get(), message);
  }

  std::uint64_t receive(WaitMode mode) override {
    wait_readable(fds_.read.get(), mode);
    capnp::StreamFdMessageReader message(fds_.read.get(), bench_reader_options());
    return check_chunk(message.getRoot<Chunk>());
  }

  void prepare_bulk(std::uint64_t seq, std::size_t payload_bytes) override {
    prepared_ = std::make_unique<capnp::MallocMessageBuilder>();
    auto bulk = prepared_->initRoot<Bulk>();
    bulk.setSeq(seq);
    const std::vector<std::size_t> sizes = bulk_part_sizes(payload_bytes);
    auto parts = bulk.initParts(static_cast<unsigned>(sizes.size()));
    for (unsigned i = 0; i < sizes.size(); ++i) {
      fill_part(parts.init(i, static_cast<unsigned>(sizes[i])), seq);
    }
  }

  void send_prepared() override { capnp::writeMessageToFd(fds_.write.get(), *prepared_); }

  std::uint64_t receive_bulk(WaitMode mode) override {
    wait_readable(fds_.read.get(), mode);
    received_.emplace(fds_.read.get(), bulk_reader_options());
    return bulk_arrived(received_->getRoot<Bulk>());
  }

  void check_bulk() override {
    bench::check_bulk(received_->getRoot<Bulk>());
    received_.reset();
  }

 private:
  SideFds fds_;
  std::unique_ptr<capnp::MallocMessageBuilder> prepared_;
  std::optional<capnp::StreamFdMessageReader> received_;
};

std::unique_ptr<Endpoint> make_endpoint(SideFds fds) {
  return std::make_unique<CapnpStreamEndpoint>(std::move(fds));
}

}  // namespace

Transport capnp_socketpair_transport() {
  return {.name = "capnp-socketpair",
          .description =
              "capnp::writeMessageToFd / StreamFdMessageReader over an AF_UNIX "
              "socketpair (default buffers); +spin polls the socket",
          .supports_large_messages = true,
          .make_link = [](const LinkParams&) { return make_socketpair_link(make_endpoint); }};
}

Transport capnp_pipe_transport() {
  return {.name = "capnp-pipe",
          .description =
              "the same Cap'n Proto calls over two pipes of 1 MiB; +spin polls "
              "the pipe",
          .make_link = [](const LinkParams&) {
            return make_pipe_link(default_pipe_capacity(), make_endpoint);
          }};
}

}  // namespace bench
