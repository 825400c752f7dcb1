// The control link of a channel end (internal): a SOCK_SEQPACKET socket beside the pipes.
//
// The pipes carry only Cap'n Proto frames, so plain Cap'n Proto peers can use them. What
// the shared-memory path needs besides travels here, as fixed 24-byte records:
//
//   kind            arena  value          descriptor   meaning
//   AcceptsShared   -      -              -            "this end reads shared-memory messages"
//   Arena           id     capacity       the memfd    a sending arena, sealed, to map
//   Release         id     message id     -            "done with this message": free it
//
// A sender uses the shared-memory path only after its peer said AcceptsShared, so a
// peer that ignores this socket (plain Cap'n Proto on the pipes) never sees a
// descriptor. One link serves both directions of an end: the sender reads Release
// records and the peer's AcceptsShared, the receiver reads Arena records; whichever
// needs something reads everything pending and files it (pump).
//
// Records are small and bounded: a sender holds at most kMaxHeldSharedMessages
// messages un-released, so Release records always fit in the socket buffer (278
// records measured with the default 212 KiB) and sending one never has to wait.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "capnsplice/deadline.h"
#include "capnsplice/unique_fd.h"

namespace capnsplice::detail {

class SendArena;

/// Shared-memory messages a sender keeps un-released at most.
inline constexpr std::size_t kMaxHeldSharedMessages = 128;

class ControlLink {
 public:
  /// Takes a non-blocking SOCK_SEQPACKET socket (one end of a socketpair).
  ControlLink(UniqueFd socket, std::string context);

  int fd() const noexcept { return socket_.get(); }

  // --- Saying things (any thread) ----------------------------------------------------

  /// Tells the peer this end reads shared-memory messages.
  void announce_accepts_shared();

  /// Sends a sending arena (its memfd) to the peer.
  void send_arena(std::uint32_t arena_id, std::uint64_t capacity, int memfd);

  /// Tells the peer it may free `message_id` in its arena. Never blocks or throws: if
  /// the peer is gone the record is dropped, as nothing is held for a dead peer.
  void send_release(std::uint32_t arena_id, std::uint64_t message_id) noexcept;

  // --- Hearing things ----------------------------------------------------------------

  /// Whether the peer said it reads shared-memory messages (reads what is pending).
  bool peer_accepts_shared();

  /// Where Release records go: the arena of this end's sender.
  void attach_send_arena(std::weak_ptr<SendArena> arena);

  /// Reads every pending record; with a deadline that is not immediate, first waits
  /// until one arrives or the deadline passes. Releases go to the attached arena.
  void pump(Deadline deadline);

  /// The memfd of the peer's arena `arena_id` and its capacity, once the peer sent it
  /// (it does before any descriptor naming it). Throws MalformedFrame when the peer
  /// never sends it before `deadline`.
  std::pair<UniqueFd, std::uint64_t> take_arena(std::uint32_t arena_id, Deadline deadline);

  /// True once a pump saw the peer close its end of the link (it exited or closed the
  /// channel).
  bool peer_gone();

 private:
  struct ReceivedArena {
    UniqueFd memfd;
    std::uint64_t capacity;
  };

  void pump_locked(Deadline deadline);
  /// Sends one record (and a descriptor); false when the socket buffer is full.
  bool send_record_locked(std::uint32_t kind, std::uint32_t arena, std::uint64_t value,
                          int fd);

  UniqueFd socket_;
  const std::string context_;
  std::mutex mutex_;
  bool peer_accepts_shared_ = false;
  bool peer_gone_ = false;
  std::map<std::uint32_t, ReceivedArena> arenas_;
  std::weak_ptr<SendArena> send_arena_;
  std::deque<std::pair<std::uint32_t, std::uint64_t>> unsent_releases_;
};

}  // namespace capnsplice::detail
