#include "release_ring.h"

#include <sys/mman.h>

namespace capnsplice::detail {

namespace {

/// Both ends write the page, so no write seal; the rest as for an arena.
constexpr int kRingSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

}  // namespace

std::unique_ptr<ReleaseCollector> ReleaseCollector::make(std::string_view context) {
  OwnMemfdMapping page =
      make_sealed_memfd_mapping(kReleaseRingBytes, kRingSeals, "release ring", context);
  return std::make_unique<ReleaseCollector>(page.address, std::move(page.memfd));
}

bool ReleaseCollector::ask_for_wake() noexcept {
  // With post(): each side stores, then loads the other's word, both sequentially
  // consistent, so at least one of them sees the other's store: either this finds the
  // new id, or the poster finds `waiting` and sends a Wake record.
  waiting_ = true;
  page_->waiting.store(1, std::memory_order_seq_cst);
  return broken_ || page_->posted.load(std::memory_order_seq_cst) == collected_;
}

std::unique_ptr<ReleasePoster> ReleasePoster::map(UniqueFd memfd, std::string_view context) {
  auto poster = std::make_unique<ReleasePoster>(
      map_peer_memfd(memfd.get(), kReleaseRingBytes, F_SEAL_SHRINK, PROT_READ | PROT_WRITE,
                     "release ring", context));
  poster->page_->attached.store(1, std::memory_order_release);
  return poster;
}

ReleasePoster::ReleasePoster(void* address) noexcept
    : ReleaseRingMapping(address), fork_generation_(fork_generation()) {}

ReleasePoster::Posted ReleasePoster::post(std::uint64_t message_id) noexcept {
  if (fork_generation() != fork_generation_) return Posted::no_room;
  std::lock_guard lock(mutex_);
  // What the sender says it took is only believed as far as it is possible.
  const std::uint64_t collected = page_->collected.load(std::memory_order_acquire);
  if (collected > posted_ || posted_ - collected >= kReleaseRingSlots) return Posted::no_room;
  page_->ids[posted_ % kReleaseRingSlots].store(message_id, std::memory_order_relaxed);
  ++posted_;
  page_->posted.store(posted_, std::memory_order_seq_cst);
  // One Wake per sleep: the posts after it find `waiting` cleared (a sender that slept
  // through 128 releases got 128 records).
  return page_->waiting.exchange(0, std::memory_order_seq_cst) != 0 ? Posted::wake_peer
                                                                     : Posted::posted;
}

}  // namespace capnsplice::detail
