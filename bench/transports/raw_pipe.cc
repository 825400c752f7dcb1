// raw-pipe: bare bytes over a pipe, no message format: the floor for a pipe round trip.
#include <vector>

#include "payload.h"
#include "transports/fd_link.h"

namespace bench {

namespace {

class RawPipeEndpoint final : public Endpoint {
 public:
  /// Every message of a run has the same size: the reader knows it in advance, as in
  /// a fixed-size protocol.
  RawPipeEndpoint(SideFds fds, std::size_t payload_bytes)
      : fds_(std::move(fds)), payload_bytes_(payload_bytes) {}

  void send(std::uint64_t seq, std::size_t /*payload_bytes*/) override {
    outgoing_.resize(payload_bytes_);  // on first use only: a side that never sends stays small
    fill_raw_payload(outgoing_, seq);
    write_all(fds_.write.get(), outgoing_);
  }

  std::uint64_t receive(WaitMode mode) override {
    incoming_.resize(payload_bytes_);
    wait_readable(fds_.read.get(), mode);
    read_exact(fds_.read.get(), incoming_);
    return check_raw_payload(incoming_);
  }

 private:
  SideFds fds_;
  std::size_t payload_bytes_;
  std::vector<std::byte> outgoing_;
  std::vector<std::byte> incoming_;
};

}  // namespace

Transport raw_pipe_transport() {
  return {.name = "raw-pipe",
          .description =
              "write()/read() of the bare payload over two pipes of 1 MiB (no "
              "framing, no Cap'n Proto); +spin polls the pipe",
          .make_link = [](const LinkParams& params) {
            return make_pipe_link(default_pipe_capacity(), [params](SideFds fds) {
              return std::unique_ptr<Endpoint>(
                  std::make_unique<RawPipeEndpoint>(std::move(fds), params.payload_bytes));
            });
          }};
}

}  // namespace bench
