#include "receive_ring.h"

#include <utility>

namespace capnsplice::detail {

std::uint64_t ReceiveRing::lease(std::uint64_t begin, std::uint64_t end) {
  std::lock_guard lock(mutex_);
  parse_ = end;
  leases_.push_back({begin, false});
  return first_id_ + leases_.size() - 1;
}

void ReceiveRing::release(std::uint64_t lease_id) {
  std::lock_guard lock(mutex_);
  leases_[static_cast<std::size_t>(lease_id - first_id_)].released = true;
  while (!leases_.empty() && leases_.front().released) {
    leases_.pop_front();
    ++first_id_;
  }
}

FrameBuffer ReceiveRing::take_frame_buffer(std::size_t bytes) {
  {
    std::lock_guard lock(mutex_);
    if (spare_.bytes >= bytes) return std::exchange(spare_, FrameBuffer{});
  }
  const std::size_t words = (bytes + sizeof(capnp::word) - 1) / sizeof(capnp::word);
  return {std::unique_ptr<capnp::word[]>(new capnp::word[words]), words * sizeof(capnp::word)};
}

void ReceiveRing::give_back(FrameBuffer buffer) {
  std::lock_guard lock(mutex_);
  if (buffer.bytes > spare_.bytes) spare_ = std::move(buffer);
}

std::uint64_t ReceiveRing::oldest_leased_or(std::uint64_t parse) {
  std::lock_guard lock(mutex_);
  return leases_.empty() ? parse : leases_.front().begin;
}

std::uint64_t ReceiveRing::start_read(std::uint64_t parse, std::uint64_t head) {
  schedule();
  std::lock_guard lock(mutex_);
  parse_ = parse;
  head_ = head;
  reading_ = true;
  ++reads_;
  return leases_.empty() ? parse : leases_.front().begin;
}

void ReceiveRing::filled_to(std::uint64_t head) {
  std::lock_guard lock(mutex_);
  head_ = head;
  reading_ = false;
}

bool ReceiveRing::trim_if_idle() noexcept {
  std::unique_lock lock(mutex_, std::try_to_lock);
  if (!lock.owns_lock()) return true;  // the receiving thread is at work: not idle
  if (!idle_.quiet_for(reads_, kIdleTrimAfter)) return true;
  if (reading_ || !leases_.empty() || parse_ != head_) return true;  // bytes in use
  memory_.discard(0, memory_.size());
  spare_ = FrameBuffer{};
  return false;
}

}  // namespace capnsplice::detail
