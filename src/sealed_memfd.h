// Memfds that one end maps read-write and hands its peer to map read-only (internal): the
// shared-memory arenas (shared_arena.h) and the doorbell (doorbell.h). The release ring
// (release_ring.h), which both ends write, is sealed the same way but for the write seal.
//
// The owner seals the memfd once its own writable mapping exists:
//   F_SEAL_SHRINK | F_SEAL_GROW   it cannot shrink under the peer's reads (SIGBUS);
//   F_SEAL_FUTURE_WRITE           only mappings made before the seal can write: the
//                                 peer's descriptor (the same open file) cannot be used
//                                 to write the owner's pages;
//   F_SEAL_SEAL                   nobody can change the seals.
// The peer refuses a memfd without the first and the third.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>

#include <cstddef>
#include <string_view>

#include "capnsplice/unique_fd.h"

namespace capnsplice::detail {

/// What the owner seals its memfd with.
inline constexpr int kOwnerSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL;

/// What the peer requires.
inline constexpr int kPeerRequiredSeals = F_SEAL_SHRINK | F_SEAL_FUTURE_WRITE;

/// Checks a memfd the peer sent: a regular file of exactly `bytes`, with `required`
/// seals. Throws ProtocolViolation naming `what` ("arena", "doorbell") and what is wrong,
/// SystemError when fstat fails.
void require_peer_memfd(int fd, std::size_t bytes, std::string_view what,
                        std::string_view context, int required = kPeerRequiredSeals);

/// A small memfd of this end's, mapped read-write.
struct OwnMemfdMapping {
  UniqueFd memfd;
  void* address = nullptr;
};

/// Makes a memfd of `bytes`, maps it read-write (shared) and only then seals it with
/// `seals`. Throws SystemError naming `what`, with nothing left mapped or open.
OwnMemfdMapping make_sealed_memfd_mapping(std::size_t bytes, int seals, std::string_view what,
                                          std::string_view context);

/// One mapping of a memfd page laid out as `Layout` (the doorbell's, a release ring's),
/// this end's or the peer's; unmapped when destroyed.
template <typename Layout, std::size_t kBytes>
class MemfdPage {
 public:
  static_assert(sizeof(Layout) <= kBytes);
  explicit MemfdPage(void* address) noexcept : page_(static_cast<Layout*>(address)) {}
  ~MemfdPage() { ::munmap(page_, kBytes); }
  MemfdPage(const MemfdPage&) = delete;
  MemfdPage& operator=(const MemfdPage&) = delete;

 protected:
  Layout* page_;
};

/// Maps a peer's memfd of `bytes` (checked by require_peer_memfd with `required`) with
/// `protection` (PROT_READ, or PROT_READ | PROT_WRITE). Throws as require_peer_memfd,
/// and SystemError when mmap fails.
void* map_peer_memfd(int fd, std::size_t bytes, int required, int protection,
                     std::string_view what, std::string_view context);

}  // namespace capnsplice::detail
