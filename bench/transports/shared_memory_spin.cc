// shm-spin: the ceiling of two processes talking without the kernel. Each direction is a
// ring of slots in memory both processes map; the producer and the consumer each own one
// cache line (head, tail) and spin on the other's. No system call, no framing, no
// wake-up: it always busy-polls, so its round trip is a "+spin" row only.
//
//   region:  [ ring a→b: head | tail | slot 0 | slot 1 | ... ][ ring b→a: ... ]
//            each slot holds one payload (first 8 bytes: the seq, payload.h)
//
// A peer that dies leaves the other spinning until the measurement's timeout ends it.
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <span>
#include <stdexcept>

#include "payload.h"
#include "transport.h"

namespace bench {

namespace {

constexpr std::size_t kCacheLine = 64;
constexpr std::uint64_t kSlots = 8;

struct alignas(kCacheLine) Cursor {
  std::atomic<std::uint64_t> value{0};
};

/// One direction: written by one side, read by the other.
struct RingHeader {
  Cursor head;  // messages published by the producer
  Cursor tail;  // messages the consumer is done with
};

void relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

class Ring {
 public:
  Ring(std::byte* base, std::size_t slot_bytes)
      : header_(reinterpret_cast<RingHeader*>(base)),
        slots_(base + sizeof(RingHeader)),
        slot_bytes_(slot_bytes) {}

  static std::size_t bytes_for(std::size_t slot_bytes) {
    return sizeof(RingHeader) + kSlots * slot_bytes;
  }

  /// Waits for a free slot, fills it and publishes it.
  void produce(std::uint64_t seq, std::size_t payload_bytes) {
    const std::uint64_t head = header_->head.value.load(std::memory_order_relaxed);
    while (head - header_->tail.value.load(std::memory_order_acquire) == kSlots) relax();
    fill_raw_payload(std::span(slot(head), payload_bytes), seq);
    header_->head.value.store(head + 1, std::memory_order_release);
  }

  /// Waits for a published slot, checks it and gives it back; returns its seq.
  std::uint64_t consume(std::size_t payload_bytes) {
    const std::uint64_t tail = header_->tail.value.load(std::memory_order_relaxed);
    while (header_->head.value.load(std::memory_order_acquire) == tail) relax();
    const std::uint64_t seq = check_raw_payload(std::span(slot(tail), payload_bytes));
    header_->tail.value.store(tail + 1, std::memory_order_release);
    return seq;
  }

 private:
  std::byte* slot(std::uint64_t index) const { return slots_ + (index % kSlots) * slot_bytes_; }

  RingHeader* header_;
  std::byte* slots_;
  std::size_t slot_bytes_;
};

class SpinEndpoint final : public Endpoint {
 public:
  SpinEndpoint(Ring out, Ring in, std::size_t payload_bytes)
      : out_(out), in_(in), payload_bytes_(payload_bytes) {}

  void send(std::uint64_t seq, std::size_t /*payload_bytes*/) override {
    out_.produce(seq, payload_bytes_);
  }
  std::uint64_t receive(WaitMode /*mode*/) override { return in_.consume(payload_bytes_); }

 private:
  Ring out_;
  Ring in_;
  std::size_t payload_bytes_;
};

class SpinLink final : public Link {
 public:
  explicit SpinLink(const LinkParams& params)
      : payload_bytes_(params.payload_bytes),
        slot_bytes_((std::max<std::size_t>(params.payload_bytes, 8) + kCacheLine - 1) /
                    kCacheLine * kCacheLine),
        ring_bytes_(Ring::bytes_for(slot_bytes_)) {
    // Made before the fork, so both children share it; pages come as they are touched.
    void* memory = ::mmap(nullptr, 2 * ring_bytes_, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) throw std::runtime_error("shm-spin: mmap of the rings failed");
    region_ = static_cast<std::byte*>(memory);
  }
  ~SpinLink() override { ::munmap(region_, 2 * ring_bytes_); }
  SpinLink(const SpinLink&) = delete;
  SpinLink& operator=(const SpinLink&) = delete;

  std::unique_ptr<Endpoint> open(Side side) override {
    Ring a_to_b(region_, slot_bytes_);
    Ring b_to_a(region_ + ring_bytes_, slot_bytes_);
    if (side == Side::a) return std::make_unique<SpinEndpoint>(a_to_b, b_to_a, payload_bytes_);
    return std::make_unique<SpinEndpoint>(b_to_a, a_to_b, payload_bytes_);
  }

 private:
  std::size_t payload_bytes_;
  std::size_t slot_bytes_;
  std::size_t ring_bytes_;
  std::byte* region_ = nullptr;
};

}  // namespace

Transport shared_memory_spin_transport() {
  return {.name = "shm-spin",
          .description =
              "the ceiling between two processes: a ring of slots per direction in shared "
              "memory, both sides spinning on a cache line (no system call, no framing; "
              "round trips as +spin only)",
          .only_spins = true,
          .make_link = make_link_of<SpinLink>};
}

}  // namespace bench
