#include "shared_arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <ctime>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "capnsplice/error.h"
#include "capnsplice/options.h"
#include "control_link.h"
#include "sealed_memfd.h"

namespace capnsplice::detail {

namespace {

/// Lets Boost.Interprocess map a descriptor it did not open (our memfd).
struct DescriptorMapping {
  int fd;
  boost::interprocess::mapping_handle_t get_mapping_handle() const {
    return boost::interprocess::ipcdetail::mapping_handle_from_file_handle(fd);
  }
};


std::string probe_shared_memory() {
  if (const char* disabled = std::getenv(kDisableSharedMemoryVariable);
      disabled != nullptr && std::string_view(disabled) == "1") {
    return std::string("switched off by ") + kDisableSharedMemoryVariable + "=1";
  }
  UniqueFd file(::memfd_create("capnsplice-probe", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!file) return std::string("memfd_create failed: ") + std::strerror(errno);
  if (::fcntl(file.get(), F_ADD_SEALS, kOwnerSeals) != 0) {
    return std::string("this kernel cannot seal a memfd with F_SEAL_FUTURE_WRITE (Linux 5.1): ") +
           std::strerror(errno);
  }
  return {};
}

}  // namespace

std::chrono::nanoseconds coarse_now() noexcept {
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
  return std::chrono::seconds(now.tv_sec) + std::chrono::nanoseconds(now.tv_nsec);
}


bool room_for_a_peers_arena() noexcept {
  // Once per process: asked per receiver it cost every Channel::pair() two system calls.
  static const bool room = [] {
    rlimit limit{};
    if (::getrlimit(RLIMIT_AS, &limit) == 0 && limit.rlim_cur == RLIM_INFINITY) return true;
    const std::size_t reservation = arena_reservation_bytes(SenderOptions{}.arena_bytes);
    void* probe = ::mmap(nullptr, reservation, PROT_NONE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (probe == MAP_FAILED) return false;
    ::munmap(probe, reservation);
    return true;
  }();
  return room;
}

const std::string& shared_memory_unavailable_reason() {
  static const std::string reason = probe_shared_memory();
  return reason;
}

// --- SendArena -----------------------------------------------------------------------

SendArena::SendArena(std::uint32_t id, std::size_t capacity, std::string context)
    : id_(id), capacity_(round_up(capacity, page_size())), context_(std::move(context)) {
  file_.reset(::memfd_create("capnsplice-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!file_) throw_system_error(context_, "memfd_create");
  if (::ftruncate(file_.get(), static_cast<off_t>(capacity_)) != 0) {
    throw_system_error(context_, "ftruncate (arena)");
  }
  try {
    region_ = boost::interprocess::mapped_region(DescriptorMapping{file_.get()},
                                                 boost::interprocess::read_write, 0, capacity_);
    allocator_ = Allocator(boost::interprocess::create_only, region_.get_address(), capacity_);
  } catch (const boost::interprocess::interprocess_exception& error) {
    throw Error(ErrorCode::SystemError, context_,
                std::string("mapping the shared-memory arena failed: ") + error.what(),
                error.get_native_error());
  }
  // Only now: F_SEAL_FUTURE_WRITE leaves the mapping above writable and no other.
  if (::fcntl(file_.get(), F_ADD_SEALS, kOwnerSeals) != 0) {
    throw_system_error(context_, "fcntl(F_ADD_SEALS) (arena)");
  }
  try {
    ring_ = ReleaseCollector::make(context_);
  } catch (const Error&) {  // out of descriptors or memory: releases come by the link
  }
}

SendArena::~SendArena() = default;

std::optional<ArenaBlock> SendArena::allocate(std::size_t bytes, bool zeroed) {
  std::lock_guard lock(mutex_);
  return allocate_locked(bytes, zeroed);
}

std::optional<ArenaBlock> SendArena::allocate_locked(std::size_t bytes, bool zeroed) {
  void* memory = take_recently_freed(bytes);
  if (memory == nullptr) memory = allocator_.allocate(bytes == 0 ? 1 : bytes, std::nothrow);
  if (memory == nullptr && !recently_freed_.empty()) {
    // The kept blocks may be what stands between two free neighbours: merge them first.
    for (const KeptBlock& kept : recently_freed_) allocator_.deallocate(kept.memory);
    recently_freed_.clear();
    kept_bytes_ = 0;
    memory = allocator_.allocate(bytes == 0 ? 1 : bytes, std::nothrow);
  }
  if (memory == nullptr) return std::nullopt;
  if (zeroed) std::memset(memory, 0, bytes);
  auto* data = static_cast<std::byte*>(memory);
  const auto offset =
      static_cast<std::uint64_t>(data - static_cast<std::byte*>(region_.get_address()));
  bytes_in_use_ += bytes;
  ++blocks_in_use_;
  busy_peak_ = std::max(busy_peak_, bytes_in_use_);
  footprint_ =
      std::max(footprint_, round_up(static_cast<std::size_t>(offset) + bytes, page_size()));
  return ArenaBlock{data, offset, bytes};
}

void SendArena::free_locked(const ArenaBlock& block) {
  // The pages stay resident: the write seal refuses MADV_REMOVE (a hole punch). Best fit
  // hands the same places out again, so the next message finds its pages there (giving
  // them back and faulting them in again cost ~90 ms each way per 256 MiB here).
  keep_or_deallocate_locked(block);
  bytes_in_use_ -= block.bytes;
  if (--blocks_in_use_ == 0) {
    last_busy_peak_ = busy_peak_;
    busy_peak_ = 0;
    idle_since_ = coarse_now();
  }
}

void SendArena::keep_or_deallocate_locked(const ArenaBlock& block) {
  if (block.bytes > kLargestKeptBlock) {
    allocator_.deallocate(block.data);
    return;
  }
  // The oldest go back first (a ring: no shifting).
  while (recently_freed_.full() || kept_bytes_ + block.bytes > kKeptBytes) {
    allocator_.deallocate(recently_freed_.front().memory);
    kept_bytes_ -= recently_freed_.front().bytes;
    recently_freed_.pop_front();
  }
  recently_freed_.push_back({block.bytes, block.data});
  kept_bytes_ += block.bytes;
}

void* SendArena::take_recently_freed(std::size_t bytes) noexcept {
  for (auto kept = recently_freed_.rbegin(); kept != recently_freed_.rend(); ++kept) {
    if (kept->bytes == bytes) {
      void* memory = kept->memory;
      kept_bytes_ -= bytes;
      recently_freed_.erase(std::next(kept).base());
      return memory;
    }
  }
  return nullptr;
}

void SendArena::free(const ArenaBlock& block) {
  std::lock_guard lock(mutex_);
  free_locked(block);
}

void SendArena::hold_until_released(std::uint64_t message_id, ArenaBlocks blocks) {
  std::lock_guard lock(mutex_);
  for (const ArenaBlock& block : blocks) held_bytes_ += block.bytes;
  held_.emplace(message_id, std::move(blocks));
}

bool SendArena::release(std::uint64_t message_id) {
  std::lock_guard lock(mutex_);
  return release_locked(message_id);
}

SendArena::Collected SendArena::collect_releases(std::size_t keep_bytes) {
  std::lock_guard lock(mutex_);
  Collected collected;
  if (ring_) {
    // Like a Release record, each id is checked against what is held.
    ring_->collect([&](std::uint64_t id) { collected.released += release_locked(id) ? 1 : 0; });
    collected.by_ring = ring_->in_use();
  }
  collected.should_retire = should_retire_locked(keep_bytes);
  return collected;
}

SendArena::Attempt SendArena::allocate_if_room(std::size_t bytes, bool zeroed,
                                               std::size_t max_held,
                                               std::size_t max_held_bytes) {
  std::lock_guard lock(mutex_);
  Attempt attempt{std::nullopt, held_.size(), held_bytes_, bytes_in_use_};
  if (attempt.held < max_held && attempt.held_bytes < max_held_bytes) {
    attempt.block = allocate_locked(bytes, zeroed);
  }
  return attempt;
}

bool SendArena::ask_for_wake() {
  std::lock_guard lock(mutex_);
  return !ring_ || !ring_->in_use() || ring_->ask_for_wake();
}

bool SendArena::release_locked(std::uint64_t message_id) {
  auto it = held_.find(message_id);
  if (it == held_.end()) return false;
  for (const ArenaBlock& block : it->second) {
    held_bytes_ -= block.bytes;
    free_locked(block);
  }
  held_.erase(it);
  return true;
}

void SendArena::release_all() {
  std::lock_guard lock(mutex_);
  for (const auto& [id, blocks] : held_) {
    for (const ArenaBlock& block : blocks) free_locked(block);
  }
  held_.clear();
  held_bytes_ = 0;
}

std::size_t SendArena::bytes_in_use() const {
  std::lock_guard lock(mutex_);
  return bytes_in_use_;
}

std::size_t SendArena::kept_blocks() const {
  std::lock_guard lock(mutex_);
  return recently_freed_.size();
}

std::size_t SendArena::kept_bytes() const {
  std::lock_guard lock(mutex_);
  return kept_bytes_;
}

bool SendArena::idle() const {
  std::lock_guard lock(mutex_);
  return blocks_in_use_ == 0;
}

bool SendArena::should_retire_locked(std::size_t keep_bytes) const {
  return blocks_in_use_ == 0 &&
         (lost_by_peer() || (footprint_ > keep_bytes && footprint_ / 2 > last_busy_peak_));
}


bool SendArena::idle_and_resident(std::chrono::nanoseconds now,
                                  std::chrono::nanoseconds idle_for) const {
  std::lock_guard lock(mutex_);
  return blocks_in_use_ == 0 && footprint_ > 0 && now - idle_since_ >= idle_for;
}

std::size_t SendArena::footprint() const {
  std::lock_guard lock(mutex_);
  return footprint_;
}

// --- ReceiveArena --------------------------------------------------------------------

ReceiveArena::ReceiveArena(std::uint32_t id, UniqueFd file, std::size_t capacity,
                           std::string_view context)
    : id_(id), capacity_(capacity) {
  if (capacity % page_size() != 0) {
    throw Error(ErrorCode::ProtocolViolation, context,
                "the peer announced an arena of " + std::to_string(capacity) +
                    " bytes, not a whole number of pages");
  }
  require_peer_memfd(file.get(), capacity, "arena", context);
  reservation_ = MappedMemory::readable_reservation(arena_reservation_bytes(capacity), context);
  std::byte* at = reservation_.data() + kArenaGuardBytes;
  // Mapped over the middle of the reservation, which alone unmaps it all at once. A
  // mapping of its own (a mapped_region) unmapped itself first and left an arena-sized
  // hole that another thread's new mapping (an arena being made) could land in, before
  // the reservation's unmap took that mapping away too (a SIGSEGV in the soak test).
  if (::mmap(at, capacity, PROT_READ, MAP_SHARED | MAP_FIXED, file.get(), 0) == MAP_FAILED) {
    throw_system_error(context, "mmap (the peer's arena)");
  }
  data_ = at;
  // The mapping keeps the memory; the descriptor is not needed any more.
}

void ReceiveArena::attach_release_ring(UniqueFd memfd, std::string_view context) noexcept {
  if (!memfd) return;
  try {
    ring_ = ReleasePoster::map(std::move(memfd), context);
  } catch (const Error&) {  // the peer gets Release records, as if it had sent no ring
  }
}

void ReceiveArena::report_released(std::uint64_t message_id, ControlLink& link) noexcept {
  switch (ring_ ? ring_->post(message_id) : ReleasePoster::Posted::no_room) {
    case ReleasePoster::Posted::no_room:
      link.send_release(id_, message_id);
      break;
    case ReleasePoster::Posted::wake_peer:
      link.send_wake();
      break;
    case ReleasePoster::Posted::posted:
      break;
  }
}

std::optional<kj::ArrayPtr<const capnp::word>> ReceiveArena::segment(
    std::uint64_t offset, std::uint64_t words) const noexcept {
  if (offset % sizeof(capnp::word) != 0 || offset > capacity_ ||
      words > (capacity_ - offset) / sizeof(capnp::word)) {
    return std::nullopt;
  }
  return kj::arrayPtr(reinterpret_cast<const capnp::word*>(data_ + offset),
                      static_cast<std::size_t>(words));
}

}  // namespace capnsplice::detail
