// memcpy: the ceiling for any path that copies each byte once. Not a transport: one
// thread copies the payload from a source buffer to a destination buffer with one
// memcpy per message. The source is filled once, not per message, so this is the
// copy alone; the seq is handed over directly, and three bytes are checked as usual.
//
// Both buffers start on a page boundary. Two vectors allocated one after the other sat
// 16 bytes apart modulo 4 KiB, and on this machine's AMD EPYC a `rep movsb` copy between
// buffers that close modulo 4 KiB runs at 3 GB/s instead of 50-90 GB/s (4K aliasing):
// the "ceiling" was then below the transports it bounds.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "transport.h"

namespace bench {

namespace {

constexpr std::byte kFill{0x5a};

constexpr std::size_t kPage = 4096;

/// The buffers both "sides" share; they exist only in the child that runs both.
struct CopyBuffers {
  std::vector<std::byte> storage;  // both buffers, page-aligned within it
  std::span<std::byte> source;
  std::span<std::byte> destination;
  std::uint64_t seq = 0;  // of the message in `destination`

  /// Two page-aligned buffers of `bytes`, whole pages apart.
  void make(std::size_t bytes) {
    const std::size_t padded = (bytes + kPage - 1) / kPage * kPage;
    storage.assign(2 * padded + kPage, std::byte{0});
    const auto address = reinterpret_cast<std::uintptr_t>(storage.data());
    std::byte* first = storage.data() + ((kPage - address % kPage) % kPage);
    source = std::span(first, bytes);
    destination = std::span(first + padded, bytes);
    std::fill(source.begin(), source.end(), kFill);
  }
};

class MemcpySender final : public Endpoint {
 public:
  explicit MemcpySender(CopyBuffers& buffers) : buffers_(buffers) {}

  void send(std::uint64_t seq, std::size_t payload_bytes) override {
    std::memcpy(buffers_.destination.data(), buffers_.source.data(), payload_bytes);
    buffers_.seq = seq;
  }

  std::uint64_t receive(WaitMode) override { throw std::logic_error("memcpy: sender only"); }

 private:
  CopyBuffers& buffers_;
};

class MemcpyReceiver final : public Endpoint {
 public:
  explicit MemcpyReceiver(CopyBuffers& buffers) : buffers_(buffers) {}

  void send(std::uint64_t, std::size_t) override {
    throw std::logic_error("memcpy: receiver only");
  }

  std::uint64_t receive(WaitMode) override {
    const std::span<const std::byte> bytes = buffers_.destination;
    if (bytes.front() != kFill || bytes[bytes.size() / 2] != kFill || bytes.back() != kFill) {
      throw std::runtime_error("memcpy: message " + std::to_string(buffers_.seq) + " damaged");
    }
    return buffers_.seq;
  }

 private:
  CopyBuffers& buffers_;
};

class MemcpyLink final : public Link {
 public:
  explicit MemcpyLink(const LinkParams& params) : payload_bytes_(params.payload_bytes) {}

  std::unique_ptr<Endpoint> open(Side side) override {
    if (buffers_.storage.empty()) buffers_.make(payload_bytes_);  // in the child only
    if (side == Side::a) return std::make_unique<MemcpySender>(buffers_);
    return std::make_unique<MemcpyReceiver>(buffers_);
  }

 private:
  std::size_t payload_bytes_;
  CopyBuffers buffers_;
};

}  // namespace

Transport memcpy_transport() {
  return {.name = "memcpy",
          .description =
              "the ceiling: one memcpy per message of a prefilled payload, one "
              "thread, one process (throughput and RSS only)",
          .supports_spin = false,
          .in_one_process = true,
          .supports_round_trip = false,
          .make_link = make_link_of<MemcpyLink>};
}

}  // namespace bench
