// The control link of a channel end (internal): a SOCK_SEQPACKET socket beside the pipes.
//
// The pipes carry only Cap'n Proto frames, so plain Cap'n Proto peers can use them. What
// the shared-memory path needs besides travels here, as fixed 24-byte records:
//
//   kind            arena  value          descriptor   meaning
//   AcceptsShared   -      -              -            "this end reads shared-memory messages"
//   Arena           id     capacity       the memfd    a sending arena, sealed, to map
//   Release         id     message id     -            "done with this message": free it
//   Retire          id     -              -            "no descriptor names this arena
//                                                       again": unmap it once idle
//   ArenaLost       id     -              -            "I cannot read this arena (its
//                                                       descriptor did not reach me, or I
//                                                       could not map it)": make a new
//                                                       one once this one is idle
//   Doorbell        -      page bytes     the memfd    "I bump this counter after every
//                                                       write": a spinning receiver may
//                                                       watch it (doorbell.h)
//   ReleaseRing     id     page bytes     the memfd    "report releases of arena id's
//                                                       messages here" (release_ring.h);
//                                                       sent just before its Arena record
//   Wake            -      -              -            "I posted a release in the ring
//                                                       while you slept": nothing else
//   Descriptors     count  sequence       the fds      a message's descriptors, ahead of
//                                                       its frame (descriptor_inbox.h)
//   AcceptsDescriptors -   most per msg   -            "this end takes descriptors"
//
// A sender uses the shared-memory path only after its peer said AcceptsShared, so a
// peer that ignores this socket (plain Cap'n Proto on the pipes) never sees a
// descriptor. One link serves both directions of an end: the sender reads Release
// records and the peer's AcceptsShared, the receiver reads Arena records; whichever
// needs something reads everything pending and files it (pump).
//
// Records are small and bounded: a sender holds at most kMaxHeldSharedMessages
// messages un-released, so Release records always fit in the socket buffer (278
// records measured with the default 212 KiB) and sending one never has to wait. Most
// releases do not come here at all but through the arena's release ring (release_ring.h);
// Release records are for a receiver without one, or one that found it full.
//
// The peer is not trusted to keep to this. A link keeps the descriptor of at most one
// Arena record, the latest, until it is taken: a record with a higher id replaces it
// (the replaced descriptor is closed at once), one whose id is not higher is dropped,
// and, while a receiver wants one, the descriptor of the first Doorbell record until it
// is taken (later ones are closed on arrival), and the ReleaseRing descriptor of the
// latest arena until that arena is mapped, retired or lost; every other descriptor is closed the moment it arrives (whatever the record,
// however many per record). One pump takes at most kMaxRecordsPerPump records: a flood
// of records costs neither descriptors nor an unbounded wait.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "capnsplice/deadline.h"
#include "capnsplice/options.h"
#include "capnsplice/unique_fd.h"
#include "control_pair.h"
#include "control_record.h"
#include "descriptor_inbox.h"
#include "lazy_deque.h"

namespace capnsplice::detail {

class ControlPair;
class SendArena;

/// Shared-memory messages a sender keeps un-released at most.
inline constexpr std::size_t kMaxHeldSharedMessages = 128;

/// Release records kept for a peer whose link is full, at most. An honest sender holds at
/// most kMaxHeldSharedMessages messages un-released, so it never has more releases
/// owed; past this, the peer is not reading its link (or names messages it does not
/// hold), further releases are dropped and the next shared message is refused.
inline constexpr std::size_t kMaxUnsentReleases = 2 * kMaxHeldSharedMessages;

/// Records one pump takes at most, whatever its deadline: a peer that sends records
/// without pause cannot keep a pump (and the link's lock) for ever. Well above what an
/// honest peer has pending (kMaxHeldSharedMessages releases and two other records).
inline constexpr std::size_t kMaxRecordsPerPump = 256;

class ControlLink {
 public:
  /// Takes a non-blocking SOCK_SEQPACKET socket (one end of a socketpair).
  ControlLink(UniqueFd socket, std::string context);

  /// End `side` (0 or 1) of `pair`, whose socket is made when either end first needs it
  /// (control_pair.h): until then this link has nothing to read and sends nothing.
  ControlLink(std::shared_ptr<ControlPair> pair, int side);
  ~ControlLink();

  ControlLink(const ControlLink&) = delete;
  ControlLink& operator=(const ControlLink&) = delete;

  /// The socket, -1 while a lazy pair is not made.
  int fd() const noexcept;

  // --- Saying things (any thread) ----------------------------------------------------

  /// Tells the peer this end reads shared-memory messages. Never waits: when the link
  /// cannot take the record now (a peer that fills it and never reads), it is sent by a
  /// later pump or release instead; until then the peer sends everything by pipe.
  void announce_accepts_shared();

  /// Sends a sending arena (its memfd) to the peer, after its release ring (`ring_memfd`,
  /// when not -1), waiting for room on the link until `deadline` and 5 s at most (a peer
  /// that stopped reading its link); then Timeout.
  void send_arena(std::uint32_t arena_id, std::uint64_t capacity, int memfd, int ring_memfd,
                  Deadline deadline);

  /// Tells the peer it may free `message_id` in its arena. Never blocks or throws: if
  /// the peer is gone the record is dropped, as nothing is held for a dead peer; past
  /// kMaxUnsentReleases owed, too (releases_overflowed()).
  void send_release(std::uint32_t arena_id, std::uint64_t message_id) noexcept;

  /// Wakes a sender that sleeps until a release is posted in its ring (release_ring.h).
  /// Best effort, like send_release: a sender that misses it looks again within 1 ms.
  void send_wake() noexcept;

  /// Release records taken from the peer so far (for SenderStats).
  std::uint64_t releases_received() const noexcept {
    return releases_received_.load(std::memory_order_relaxed);
  }

  /// True once more than kMaxUnsentReleases release records could not be sent: the
  /// peer does not read its control link.
  bool releases_overflowed() const noexcept {
    return releases_overflowed_.load(std::memory_order_relaxed);
  }

  /// Offers the peer this end's doorbell (doorbell.h), making a lazy pair's socket. Never
  /// waits: false when the link cannot take the record now (the caller offers again
  /// later). Throws SystemError when the socket cannot be made or written.
  bool offer_doorbell(int memfd);

  /// Tells the peer this end takes descriptors within `limits` (per message, and
  /// waiting in all: what the peer's sender may have in flight), and files the
  /// Descriptors records that come by them. Never waits, like announce_accepts_shared().
  void announce_accepts_descriptors(const ReceiveLimits& limits);

  /// What the peer said it takes; none while it has not said so (reads what is pending;
  /// a plain Cap'n Proto peer never does). With a lazy pair whose peer said so, makes the
  /// pair: the caller is about to send a record.
  std::optional<DescriptorLimits> peer_descriptor_limits();

  /// Sends the descriptors of the message numbered `sequence`, ahead of its frame, once
  /// the peer has room for them (no more in flight than it holds waiting: it reports
  /// what it released) and the link has room, waiting for both until `deadline`; then
  /// Timeout, nothing sent. Waits without the link's lock, reading what comes.
  void send_descriptors(std::uint64_t sequence, const std::vector<UniqueFd>& fds,
                        Deadline deadline);

  /// The message numbered `sequence` will not be sent after all: the peer closes its
  /// descriptors and counts them released. Never blocks or throws (kept for later when
  /// the link is full; dropped when the peer is gone).
  void cancel_descriptors(std::uint64_t sequence, std::uint32_t count) noexcept;

  /// A report of released descriptors found the link full: the peer's sender may be
  /// waiting for it. Lock-free; a receiver about to sleep calls retry_release_report()
  /// and sleeps at most 1 ms while this stays true.
  bool release_report_pending() const noexcept {
    return release_report_pending_.load(std::memory_order_relaxed);
  }
  void retry_release_report() noexcept;

  /// The `count` descriptors that came for the message numbered `sequence` (reads what
  /// is pending; the peer sent them before the frame, so this never waits). Throws
  /// ProtocolViolation when none came or they were refused (DescriptorInbox::take), and
  /// MalformedFrame when the peer never sent any record of descriptors; `context` (the
  /// receiver's) prefixes them.
  std::vector<UniqueFd> take_descriptors(std::uint64_t sequence, std::uint32_t count,
                                         const std::string& context);

  /// Tells the peer that no descriptor will name `arena_id` again. Best effort, like
  /// send_release: a peer that misses it keeps the arena mapped until the next one.
  void send_retire(std::uint32_t arena_id) noexcept;

  // --- Hearing things ----------------------------------------------------------------

  /// Whether the peer said it reads shared-memory messages (reads what is pending). With
  /// a lazy pair that is not made yet, makes it when the peer said so: the caller is
  /// about to use the link.
  bool peer_accepts_shared();

  /// Where Release records go: the arena of this end's sender.
  void attach_send_arena(std::weak_ptr<SendArena> arena);

  /// Reads the pending records, at most kMaxRecordsPerPump; with a deadline that is not
  /// immediate, first waits until one arrives or the deadline passes, and stops once it
  /// has passed even if records keep coming. Releases go to the attached arena.
  void pump(Deadline deadline);

  /// Sleeps until a record may have arrived, 1 ms or `deadline` at the most, without
  /// taking the link's lock (this end's other thread may need it to send releases the
  /// peer waits for). Another thread may pump the record first, so callers look again
  /// and call this in a loop.
  void nap_for_records(Deadline deadline) const;

  /// The memfd of the peer's arena `arena_id` and its capacity. The peer sends an arena
  /// before any descriptor naming it, so this reads what is pending and never waits.
  /// Only the latest arena the peer announced is handed out, once: an honest sender
  /// names no other (SharedSender replaces only idle arenas). Throws ProtocolViolation
  /// when `arena_id` is an older arena, the latest one already taken, or one the peer
  /// has not sent, and SystemError (EMFILE, ENOMEM) for one this end lost (lose_arena).
  std::pair<UniqueFd, std::uint64_t> take_arena(std::uint32_t arena_id);

  /// The memfd of the release ring the peer sent for its arena `arena_id`, once (invalid
  /// when none came). Call it after take_arena(arena_id), which read the record.
  UniqueFd take_release_ring(std::uint32_t arena_id);

  /// The memfd of the peer's doorbell, once (reads what is pending, never waits; invalid
  /// when none came). Only the first doorbell the peer offers is kept.
  UniqueFd take_doorbell();

  /// A receiver of this end wants the peer's doorbell: until this (and after
  /// refuse_doorbells()), a Doorbell record's descriptor is closed on arrival.
  void want_doorbell() noexcept;
  void refuse_doorbells() noexcept;

  /// The highest arena id the peer announced so far (0: none), as of the last pump.
  /// Lock-free, so a receiver can check each message against it.
  std::uint32_t latest_arena() const noexcept {
    return latest_arena_.load(std::memory_order_acquire);
  }

  /// The highest arena id the peer retired (0: none), as of the last pump.
  std::uint32_t retired_arena() const noexcept {
    return retired_arena_.load(std::memory_order_acquire);
  }

  /// Marks the peer's arena `arena_id` as one this end cannot read (`why`, with `error`):
  /// one it took but could not map; pumps do the same for an Arena record whose
  /// descriptor the kernel could not hand over (out of descriptors: MSG_CTRUNC). Every
  /// message naming it then fails with SystemError, and the peer is told (ArenaLost, kept
  /// until the link takes it) so that it moves to a new arena.
  void lose_arena(std::uint32_t arena_id, int error, std::string why);

  /// True once a pump saw the peer close its end of the link (it exited or closed the
  /// channel). Lock-free.
  bool peer_gone() const noexcept { return peer_gone_seen_.load(std::memory_order_relaxed); }

 private:
  struct ReceivedArena {
    UniqueFd memfd;
    std::uint64_t capacity = 0;
  };

  /// What errors are prefixed with: the context given, or for a lazy pair's link
  /// "channel 'name': control", made only then.
  std::string context() const;
  void pump_locked(Deadline deadline);
  /// Copies peer_gone_ and peer_accepts_shared_ to the atomics read without the lock.
  void publish_peer_state_locked() noexcept;
  /// Files an Arena record: keeps `memfd` when `arena_id` is newer than any before,
  /// closing the descriptor of an older arena not taken yet.
  void file_arena_locked(std::uint32_t arena_id, std::uint64_t capacity, UniqueFd memfd);
  /// Sends what could not be sent before (AcceptsShared, ArenaLost) if the link takes it.
  void retry_pending_records_locked();
  /// Tells the peer how many descriptors this end released, when that changed.
  void report_released_descriptors_locked() noexcept;
  /// Files what a pump read that concerns descriptors.
  void file_descriptor_record_locked(const control_record::Record& record,
                                     std::vector<UniqueFd> descriptors, bool truncated);
  void lose_arena_locked(std::uint32_t arena_id, int error, std::string why);
  /// Sends one record (and a descriptor); false when the socket buffer is full.
  bool send_record_locked(std::uint32_t kind, std::uint32_t arena, std::uint64_t value,
                          int fd) {
    return send_record_locked(kind, arena, value, &fd, fd >= 0 ? 1 : 0);
  }
  /// The same with `count` descriptors (at most kMaxDescriptorsPerMessage).
  bool send_record_locked(std::uint32_t kind, std::uint32_t arena, std::uint64_t value,
                          const int* fds, std::size_t count);

  UniqueFd socket_;                   // without `pair_`
  std::shared_ptr<ControlPair> pair_;  // lazy: the socket is pair_->fd(side_)
  const int side_ = 0;
  const std::string context_;  // without `pair_`
  std::mutex mutex_;
  bool peer_accepts_shared_ = false;
  bool announcement_unsent_ = false;  // announce_accepts_shared() found the link full
  bool descriptor_announcement_unsent_ = false;  // the same for AcceptsDescriptors
  ReceiveLimits descriptor_limits_{.max_descriptors_per_message = 0};  // as announced
  DescriptorInbox inbox_;
  std::uint64_t released_reported_ = 0;  // the inbox's released() the peer was told
  std::atomic<bool> release_report_pending_{false};  // released_reported_ is behind
  std::optional<DescriptorLimits> peer_descriptor_limits_;  // its AcceptsDescriptors
  std::uint64_t descriptors_sent_ = 0;      // in this end's Descriptors records, not cancelled
  std::uint64_t peer_released_ = 0;         // of those, what the peer reported released
  LazyDeque<std::uint64_t> unsent_cancels_;  // DescriptorsCancelled the link could not take
  std::uint32_t lost_arena_ = 0;      // an arena that cannot be read here (0: none)
  int lost_arena_error_ = 0;
  std::string lost_arena_why_;
  bool loss_unsent_ = false;  // the ArenaLost record found the link full
  bool peer_gone_ = false;     // a pump found the end of what the peer sent
  std::atomic<bool> peer_gone_seen_{false};     // peer_gone_, for lock-free reads
  std::atomic<bool> peer_reads_shared_{false};  // peer_accepts_shared_ && !peer_gone_
  bool send_broken_ = false;   // the peer no longer reads: records are not sent
  std::atomic<std::uint32_t> latest_arena_{0};  // written under `mutex_`
  std::atomic<std::uint32_t> retired_arena_{0};  // written under `mutex_`
  std::atomic<bool> releases_overflowed_{false};  // written under `mutex_`
  std::atomic<std::uint64_t> releases_received_{0};  // written under `mutex_`
  ReceivedArena unclaimed_arena_;               // of latest_arena_; no memfd once taken
  UniqueFd unclaimed_doorbell_;                 // the first Doorbell record's, until taken
  UniqueFd unclaimed_ring_;                     // the latest ReleaseRing record's, until taken
  std::uint32_t unclaimed_ring_arena_ = 0;      // the arena it is for
  bool doorbell_filed_ = false;                 // one came: later ones are closed
  bool doorbell_wanted_ = false;                // want_doorbell() and no refuse_doorbells()
  std::weak_ptr<SendArena> send_arena_;
  LazyDeque<std::pair<std::uint32_t, std::uint64_t>> unsent_releases_;
};

}  // namespace capnsplice::detail
