// Memfds that one end maps read-write and hands its peer to map read-only (internal): the
// shared-memory arenas (shared_arena.h) and the doorbell (doorbell.h).
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

#include <cstddef>
#include <string_view>

namespace capnsplice::detail {

/// What the owner seals its memfd with.
inline constexpr int kOwnerSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL;

/// What the peer requires.
inline constexpr int kPeerRequiredSeals = F_SEAL_SHRINK | F_SEAL_FUTURE_WRITE;

/// Checks a memfd the peer sent: a regular file of exactly `bytes`, with
/// kPeerRequiredSeals. Throws ProtocolViolation naming `what` ("arena", "doorbell") and
/// what is wrong, SystemError when fstat fails.
void require_peer_memfd(int fd, std::size_t bytes, std::string_view what,
                        std::string_view context);

}  // namespace capnsplice::detail
