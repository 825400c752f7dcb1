#include "control_link.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "capnsplice/error.h"
#include "channel_context.h"
#include "control_pair.h"
#include "control_record.h"
#include "doorbell.h"
#include "pipe_io.h"
#include "release_ring.h"
#include "shared_arena.h"

namespace capnsplice::detail {

namespace {

using control_record::kAcceptsDescriptors;
using control_record::kAcceptsShared;
using control_record::kArena;
using control_record::kArenaLost;
using control_record::kDescriptors;
using control_record::kDescriptorsCancelled;
using control_record::kDescriptorsReleased;
using control_record::kDoorbell;
using control_record::kRelease;
using control_record::kReleaseRing;
using control_record::kRetire;
using control_record::kWake;
using control_record::Record;

/// Every descriptor `message` carries, owned here: whatever the record, a descriptor
/// nobody keeps is closed on the spot.
std::vector<UniqueFd> take_descriptors_of(msghdr& message) {
  // Owned first without allocating (the control buffer holds at most this many), so that
  // a failed allocation below closes every one of them.
  std::array<UniqueFd, kMaxDescriptorsPerMessage + 2> owned;
  std::size_t count = 0;
  for (cmsghdr* header = CMSG_FIRSTHDR(&message); header != nullptr;
       header = CMSG_NXTHDR(&message, header)) {
    if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS ||
        header->cmsg_len < CMSG_LEN(0)) {
      continue;
    }
    const std::size_t fds = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < fds && count < owned.size(); ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(header) + i * sizeof(int), sizeof fd);
      owned[count++].reset(fd);
    }
  }
  std::vector<UniqueFd> received;
  if (count == 0) return received;
  received.reserve(count);
  for (std::size_t i = 0; i < count; ++i) received.push_back(std::move(owned[i]));
  return received;
}

/// The one descriptor of a record that carries exactly one, or none (any others close).
UniqueFd only_descriptor(std::vector<UniqueFd>& received) {
  return received.size() == 1 ? std::move(received.front()) : UniqueFd();
}

}  // namespace

ControlLink::ControlLink(UniqueFd socket, std::string context)
    : socket_(std::move(socket)), context_(std::move(context)) {}

ControlLink::ControlLink(std::shared_ptr<ControlPair> pair, int side)
    : pair_(std::move(pair)), side_(side) {}

ControlLink::~ControlLink() {
  if (pair_) pair_->close(side_);
}

int ControlLink::fd() const noexcept { return pair_ ? pair_->fd(side_) : socket_.get(); }

std::string ControlLink::context() const {
  return pair_ ? channel_context(pair_->name(), "control") : context_;
}

bool ControlLink::send_record_locked(std::uint32_t kind, std::uint32_t arena,
                                     std::uint64_t value, const int* fds, std::size_t count) {
  if (peer_gone_ || send_broken_) return true;  // nobody to tell
  const int socket = this->fd();
  if (socket < 0) return false;  // a lazy pair not made: kept until it is
  Record record{kind, arena, value, 0};
  iovec iov{&record, sizeof record};
  msghdr message{};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxDescriptorsPerMessage)];
  if (count != 0) {
    const std::size_t bytes = sizeof(int) * std::min<std::size_t>(count, kMaxDescriptorsPerMessage);
    message.msg_control = control;
    message.msg_controllen = CMSG_SPACE(bytes);
    cmsghdr* header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(bytes);
    std::memcpy(CMSG_DATA(header), fds, bytes);
  }
  for (;;) {
    if (::sendmsg(socket, &message, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0) return true;
    switch (errno) {
      case EINTR:
        continue;
      case EAGAIN:
        return false;
      case EPIPE:
      case ECONNRESET:
      case ENOTCONN:
        // Nobody reads what this end says any more, but what the peer said before it
        // went is still to be read: only a pump that finds the end marks it gone.
        send_broken_ = true;
        return true;
      default:
        throw_system_error(context(), "sendmsg (control link)");
    }
  }
}

void ControlLink::announce_accepts_shared() {
  std::lock_guard lock(mutex_);
  if (pair_ && pair_->defer_announcement(side_)) return;  // the peer reads it from the pair
  announcement_unsent_ = true;
  retry_pending_records_locked();
}

void ControlLink::retry_pending_records_locked() {
  if (announcement_unsent_ && send_record_locked(kAcceptsShared, 0, 0, -1)) {
    announcement_unsent_ = false;
  }
  if (descriptor_announcement_unsent_ &&
      send_record_locked(kAcceptsDescriptors, descriptor_limits_.max_descriptors_per_message,
                         descriptor_limits_.max_descriptors_waiting, -1)) {
    descriptor_announcement_unsent_ = false;
  }
  while (!unsent_cancels_.empty() &&
         send_record_locked(kDescriptorsCancelled, 0, unsent_cancels_.front(), -1)) {
    unsent_cancels_.pop_front();
  }
  report_released_descriptors_locked();
  if (loss_unsent_ && send_record_locked(kArenaLost, lost_arena_, 0, -1)) loss_unsent_ = false;
  // Releases the link could not take: the ring sends most releases now, so the next
  // send_release() may never come. A link that fails here fails the pump or send that
  // found it anyway; the releases cannot reach the peer.
  try {
    while (!unsent_releases_.empty()) {
      const auto [arena, id] = unsent_releases_.front();
      if (!send_record_locked(kRelease, arena, id, -1)) return;  // kept for the next call
      unsent_releases_.pop_front();
    }
  } catch (const Error&) {
    unsent_releases_.clear();
  }
}

void ControlLink::lose_arena(std::uint32_t arena_id, int error, std::string why) {
  std::lock_guard lock(mutex_);
  lose_arena_locked(arena_id, error, std::move(why));
}

void ControlLink::lose_arena_locked(std::uint32_t arena_id, int error, std::string why) {
  lost_arena_ = arena_id;
  lost_arena_error_ = error;
  lost_arena_why_ = std::move(why);
  if (unclaimed_ring_arena_ <= arena_id) unclaimed_ring_.reset();
  if (arena_id > latest_arena_.load(std::memory_order_relaxed)) {
    latest_arena_.store(arena_id, std::memory_order_release);
    unclaimed_arena_ = ReceivedArena{};
  }
  loss_unsent_ = true;  // kept until the link takes it: the peer must move on
  retry_pending_records_locked();
}

void ControlLink::send_arena(std::uint32_t arena_id, std::uint64_t capacity, int memfd,
                             int ring_memfd, Deadline deadline) {
  std::lock_guard lock(mutex_);
  constexpr std::chrono::seconds kLongest{5};
  if (deadline.is_never() || deadline.remaining() > kLongest) deadline = Deadline::after(kLongest);
  if (pair_ && !pair_->make()) {  // peer_accepts_shared() made it: only a broken pair fails
    throw Error(ErrorCode::Timeout, context(), "the control link could not be made");
  }
  const auto send = [&](std::uint32_t kind, std::uint64_t value, int descriptor) {
    while (!send_record_locked(kind, arena_id, value, descriptor)) {
      if (wait_for(fd(), POLLOUT, deadline) == WaitResult::timed_out) {
        throw Error(ErrorCode::Timeout, context(),
                    "the peer does not read its control link; the arena was not sent");
      }
    }
  };
  // The ring first: the peer takes it with the arena, which it reads after it.
  if (ring_memfd >= 0) send(kReleaseRing, kReleaseRingBytes, ring_memfd);
  send(kArena, capacity, memfd);
}

void ControlLink::send_wake() noexcept {
  std::lock_guard lock(mutex_);
  try {
    static_cast<void>(send_record_locked(kWake, 0, 0, -1));
  } catch (const Error&) {  // the link is broken: the sender finds the peer gone
  }
}

UniqueFd ControlLink::take_release_ring(std::uint32_t arena_id) {
  std::lock_guard lock(mutex_);
  if (unclaimed_ring_arena_ != arena_id) {
    if (unclaimed_ring_arena_ < arena_id) unclaimed_ring_.reset();  // its arena never came
    return {};
  }
  return std::move(unclaimed_ring_);
}

void ControlLink::send_release(std::uint32_t arena_id, std::uint64_t message_id) noexcept {
  std::lock_guard lock(mutex_);
  if (unsent_releases_.size() >= kMaxUnsentReleases) {
    releases_overflowed_.store(true, std::memory_order_relaxed);
  } else {
    unsent_releases_.emplace_back(arena_id, message_id);
  }
  try {
    retry_pending_records_locked();
  } catch (const Error&) {  // the link is broken: the peer can no longer be told
  }
}

bool ControlLink::offer_doorbell(int memfd) {
  std::lock_guard lock(mutex_);
  if (pair_ && !pair_->make()) return false;
  return send_record_locked(kDoorbell, 0, kDoorbellBytes, memfd);
}

UniqueFd ControlLink::take_doorbell() {
  std::lock_guard lock(mutex_);
  if (!doorbell_filed_) pump_locked(Deadline::immediate());
  return std::move(unclaimed_doorbell_);
}

void ControlLink::want_doorbell() noexcept {
  std::lock_guard lock(mutex_);
  doorbell_wanted_ = true;
}

void ControlLink::refuse_doorbells() noexcept {
  std::lock_guard lock(mutex_);
  doorbell_wanted_ = false;
  unclaimed_doorbell_.reset();
}

void ControlLink::send_retire(std::uint32_t arena_id) noexcept {
  std::lock_guard lock(mutex_);
  try {
    static_cast<void>(send_record_locked(kRetire, arena_id, 0, -1));
  } catch (const Error&) {  // the link is broken: the peer unmaps when it goes
  }
}

void ControlLink::publish_peer_state_locked() noexcept {
  peer_gone_seen_.store(peer_gone_, std::memory_order_relaxed);
  peer_reads_shared_.store(peer_accepts_shared_ && !peer_gone_, std::memory_order_relaxed);
}

bool ControlLink::peer_accepts_shared() {
  // Asked for every object a sender might put in the arena: once the answer is yes, no
  // lock until a pump finds the peer gone.
  if (peer_reads_shared_.load(std::memory_order_relaxed)) return true;
  std::lock_guard lock(mutex_);
  if (!peer_accepts_shared_ && pair_ && pair_->announced(1 - side_)) {
    // The peer said so before the pair was made, in the pair instead of a record; the
    // caller is about to send an arena: the link is needed now.
    if (!pair_->make()) return false;
    peer_accepts_shared_ = true;
    publish_peer_state_locked();
  }
  if (!peer_accepts_shared_) pump_locked(Deadline::immediate());
  return peer_accepts_shared_ && !peer_gone_;
}

void ControlLink::announce_accepts_descriptors(const ReceiveLimits& limits) {
  std::lock_guard lock(mutex_);
  descriptor_limits_ = limits;
  // An honest sender keeps no more records in flight than descriptors: within what the
  // inbox files.
  descriptor_limits_.max_descriptors_waiting = static_cast<std::uint32_t>(
      std::min<std::size_t>(limits.max_descriptors_waiting, kMaxFiledRecords));
  const DescriptorLimits said{limits.max_descriptors_per_message,
                              descriptor_limits_.max_descriptors_waiting};
  if (pair_ && pair_->defer_descriptor_announcement(side_, said)) return;
  descriptor_announcement_unsent_ = true;
  retry_pending_records_locked();
}

void ControlLink::file_descriptor_record_locked(const Record& record,
                                                std::vector<UniqueFd> descriptors,
                                                bool truncated) {
  switch (record.kind) {
    case kDescriptors:
      inbox_.file(record.value, record.arena, std::move(descriptors), truncated,
                  descriptor_limits_);
      break;
    case kAcceptsDescriptors:
      peer_descriptor_limits_ = DescriptorLimits{
          std::min(record.arena, kMaxDescriptorsPerMessage),
          static_cast<std::uint32_t>(std::min<std::uint64_t>(record.value, kMaxFiledRecords))};
      break;
    case kDescriptorsReleased:
      // A running total: an older or lying report never takes back what was released.
      peer_released_ = std::min(std::max(peer_released_, record.value), descriptors_sent_);
      break;
    case kDescriptorsCancelled:
      inbox_.cancel(record.value);
      break;
    default:
      break;
  }
}

void ControlLink::report_released_descriptors_locked() noexcept {
  const std::uint64_t released = inbox_.released();
  if (released == released_reported_) return;
  try {
    if (send_record_locked(kDescriptorsReleased, 0, released, -1)) released_reported_ = released;
  } catch (const Error&) {
    released_reported_ = released;  // the link failed: the peer cannot hear it anyway
  }
  release_report_pending_.store(released != released_reported_, std::memory_order_relaxed);
}

void ControlLink::retry_release_report() noexcept {
  std::lock_guard lock(mutex_);
  report_released_descriptors_locked();
}

std::optional<DescriptorLimits> ControlLink::peer_descriptor_limits() {
  std::lock_guard lock(mutex_);
  if (!peer_descriptor_limits_ && pair_) {
    if (auto said = pair_->announced_descriptor_limits(1 - side_)) {
      if (!pair_->make()) return std::nullopt;
      peer_descriptor_limits_ = said;
    }
  }
  if (!peer_descriptor_limits_) pump_locked(Deadline::immediate());
  if (peer_gone_) return std::nullopt;
  return peer_descriptor_limits_;
}

void ControlLink::send_descriptors(std::uint64_t sequence, const std::vector<UniqueFd>& fds,
                                   Deadline deadline) {
  std::vector<int> numbers;
  numbers.reserve(fds.size());
  for (const UniqueFd& fd : fds) numbers.push_back(fd.get());
  for (;;) {
    std::uint64_t in_flight = 0;
    std::uint32_t waiting = 0;
    {
      std::lock_guard lock(mutex_);
      pump_locked(Deadline::immediate());  // the peer's reports of what it released
      if (peer_gone_) {  // its end of the link is readable for ever: do not wait on it
        throw Error(ErrorCode::PeerClosed, context(),
                    "the peer closed its end: the message and its descriptors were not sent");
      }
      in_flight = descriptors_sent_ - peer_released_;
      waiting = peer_descriptor_limits_ ? peer_descriptor_limits_->waiting : 0;
      // Cancellations the link could not take yet go first: the peer must read them
      // before this record, which was counted as if they had.
      if (in_flight + numbers.size() <= waiting && unsent_cancels_.empty()) {
        if (send_record_locked(kDescriptors, static_cast<std::uint32_t>(numbers.size()), sequence,
                               numbers.data(), numbers.size())) {
          descriptors_sent_ += numbers.size();
          return;
        }
      }
    }
    const bool link_full = in_flight + numbers.size() <= waiting;
    if (deadline.expired()) {
      throw Error(ErrorCode::Timeout, context(),
                  link_full ? "the peer does not read its control link: the message and its "
                              "descriptors were not sent"
                            : "the peer holds " + std::to_string(in_flight) +
                                  " descriptors it has not received yet, and takes at most " +
                                  std::to_string(waiting) +
                                  " waiting: the message and its descriptors were not sent");
    }
    // Without the lock: this end's receiver may need the link meanwhile.
    if (link_full) {
      wait_for(fd(), POLLOUT, deadline.remaining() < std::chrono::milliseconds(1)
                                  ? deadline
                                  : Deadline::after(std::chrono::milliseconds(1)));
    } else {
      nap_for_records(deadline);
    }
  }
}

void ControlLink::cancel_descriptors(std::uint64_t sequence, std::uint32_t count) noexcept {
  std::lock_guard lock(mutex_);
  try {
    if (!send_record_locked(kDescriptorsCancelled, 0, sequence, -1)) {
      unsent_cancels_.push_back(sequence);
    }
  } catch (...) {
    return;  // the link failed or no memory: the peer keeps them until its end goes
  }
  // The peer reads the cancellation before any later record, so they are out of flight
  // for the next one already; it does not count them in what it reports released.
  descriptors_sent_ -= std::min<std::uint64_t>(count, descriptors_sent_ - peer_released_);
}

std::vector<UniqueFd> ControlLink::take_descriptors(std::uint64_t sequence, std::uint32_t count,
                                                    const std::string& context) {
  std::lock_guard lock(mutex_);
  std::optional<std::vector<UniqueFd>> taken;
  try {
    taken = inbox_.take(sequence, count, context);
    if (!taken) {
      pump_locked(Deadline::immediate());
      taken = inbox_.take(sequence, count, context);
    }
  } catch (const Error&) {
    report_released_descriptors_locked();  // a refused record was let go of too
    throw;
  }
  report_released_descriptors_locked();
  if (taken) return std::move(*taken);
  if (!inbox_.any_filed()) {
    throw Error(ErrorCode::MalformedFrame, context,
                "a marked frame with descriptors from a peer that sent none: not Cap'n Proto "
                "framing (a message needs its root pointer in segment 0)");
  }
  throw Error(ErrorCode::ProtocolViolation, context,
              "message " + std::to_string(sequence) + " says it carries " +
                  std::to_string(count) + " descriptors that never came on the control link");
}

void ControlLink::attach_send_arena(std::weak_ptr<SendArena> arena) {
  std::lock_guard lock(mutex_);
  send_arena_ = std::move(arena);
}

void ControlLink::nap_for_records(Deadline deadline) const {
  constexpr std::chrono::milliseconds kNap{1};
  // Without a socket yet (a lazy pair) poll() ignores the entry and just sleeps.
  wait_for(fd(), POLLIN, deadline.remaining() < kNap ? deadline : Deadline::after(kNap));
}

void ControlLink::pump(Deadline deadline) {
  std::lock_guard lock(mutex_);
  pump_locked(deadline);
}

std::pair<UniqueFd, std::uint64_t> ControlLink::take_arena(std::uint32_t arena_id) {
  std::lock_guard lock(mutex_);
  // One pump takes kMaxRecordsPerPump records; an honest peer has fewer pending, but the
  // socket holds a few more.
  for (int pumps = 0; pumps < 4 && arena_id > latest_arena_.load(std::memory_order_relaxed) &&
                      !peer_gone_;
       ++pumps) {
    pump_locked(Deadline::immediate());
  }
  const std::uint32_t latest = latest_arena_.load(std::memory_order_relaxed);
  if (arena_id == latest && unclaimed_arena_.memfd) {
    return {std::move(unclaimed_arena_.memfd), unclaimed_arena_.capacity};
  }
  if (arena_id == lost_arena_) {
    throw Error(ErrorCode::SystemError, context(),
                "the peer's shared-memory arena " + std::to_string(arena_id) + " " +
                    lost_arena_why_ + ": its messages cannot be read; the peer was asked for a "
                    "new arena",
                lost_arena_error_);
  }
  std::string why;
  if (arena_id < latest) {
    why = "but the latest arena the peer announced is " + std::to_string(latest) +
          " (a sender names only its latest arena)";
  } else if (arena_id == latest) {
    why = "which was already taken from the link and could not be used";
  } else {
    why = "which the peer had not sent when it sent the descriptor";
  }
  throw Error(ErrorCode::ProtocolViolation, context(),
              "a shared-memory message names arena " + std::to_string(arena_id) + ", " + why);
}

void ControlLink::file_arena_locked(std::uint32_t arena_id, std::uint64_t capacity,
                                    UniqueFd memfd) {
  // Anything not kept closes `memfd` on return; a replaced descriptor closes here.
  if (!memfd || arena_id <= latest_arena_.load(std::memory_order_relaxed)) return;
  // A ring for an older arena that never came (its announcement timed out) is no use.
  if (unclaimed_ring_arena_ < arena_id) unclaimed_ring_.reset();
  unclaimed_arena_ = ReceivedArena{std::move(memfd), capacity};
  latest_arena_.store(arena_id, std::memory_order_release);
}

void ControlLink::pump_locked(Deadline deadline) {
  retry_pending_records_locked();
  const int socket = fd();
  if (socket < 0) return;  // a lazy pair not made: nothing was sent to this end
  // An immediate pump takes what is pending; one that may wait also stops once its
  // deadline passed, however fast records come.
  const bool may_wait = !deadline.expired();
  bool waited = false;
  // A peer that closed its end with our records unread makes the next recvmsg fail with
  // ECONNRESET once, while the records it sent before are still queued: read on, and
  // call it gone only when the queue is empty.
  bool reset = false;
  for (std::size_t taken = 0; taken < kMaxRecordsPerPump && !peer_gone_;) {
    Record record{};
    iovec iov{&record, sizeof record};
    msghdr message{};
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxDescriptorsPerMessage)];
    message.msg_control = control;
    message.msg_controllen = sizeof control;
    const ssize_t got = ::recvmsg(socket, &message, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (got < 0) {
      if (errno == EINTR) continue;
      if (errno == ECONNRESET && !reset) {
        reset = true;
        continue;
      }
      if (errno == ECONNRESET || (errno == EAGAIN && reset)) {
        peer_gone_ = true;
        publish_peer_state_locked();
        return;
      }
      if (errno != EAGAIN) throw_system_error(context(), "recvmsg (control link)");
      if (waited || deadline.expired()) return;
      waited = true;
      if (wait_for(socket, POLLIN, deadline) == WaitResult::timed_out) return;
      continue;
    }
    if (got == 0) {
      peer_gone_ = true;
      publish_peer_state_locked();
      return;
    }
    waited = true;  // something came: from now on only take what is already there
    ++taken;
    // Closed at the end of this turn unless an accepted arena keeps it. A message that is
    // not one of our records is ignored.
    std::vector<UniqueFd> descriptors = take_descriptors_of(message);
    UniqueFd received = record.kind == kDescriptors ? UniqueFd() : only_descriptor(descriptors);
    if (got == sizeof record) {
      switch (record.kind) {
        case kDescriptors:
        case kAcceptsDescriptors:
        case kDescriptorsReleased:
        case kDescriptorsCancelled:
          file_descriptor_record_locked(record, std::move(descriptors),
                                        (message.msg_flags & MSG_CTRUNC) != 0);
          break;
        case kAcceptsShared:
          peer_accepts_shared_ = true;
          publish_peer_state_locked();
          break;
        case kArena:
          if (!received && (message.msg_flags & MSG_CTRUNC) != 0 &&
              record.arena > latest_arena_.load(std::memory_order_relaxed)) {
            // The kernel dropped the descriptor: this process had none left.
            lose_arena_locked(record.arena, EMFILE,
                              "arrived while this process could take no more descriptors "
                              "(RLIMIT_NOFILE)");
            break;
          }
          file_arena_locked(record.arena, record.value, std::move(received));
          break;
        case kDoorbell:
          if (received && doorbell_wanted_ && !doorbell_filed_) {  // a later one closes at the end of the turn
            unclaimed_doorbell_ = std::move(received);
            doorbell_filed_ = true;
          }
          break;
        case kArenaLost:
          if (auto arena = send_arena_.lock(); arena && arena->id() == record.arena) {
            arena->mark_lost_by_peer();
          }
          break;
        case kRelease:
          // SendArena::release() checks the id against what it holds: a forged or
          // repeated record changes nothing.
          if (auto arena = send_arena_.lock(); arena && arena->id() == record.arena) {
            if (arena->release(record.value)) {
              releases_received_.store(releases_received_.load(std::memory_order_relaxed) + 1,
                                       std::memory_order_relaxed);
            }
          }
          break;
        case kReleaseRing:
          // For an arena not announced yet (its Arena record follows); the latest wins.
          if (received && record.value == kReleaseRingBytes &&
              record.arena > latest_arena_.load(std::memory_order_relaxed)) {
            unclaimed_ring_ = std::move(received);
            unclaimed_ring_arena_ = record.arena;
          }
          break;
        case kWake:  // it woke the sleeper already; the ring says the rest
          break;
        case kRetire:
          // Only what the peer announced can be retired; an unclaimed descriptor of it
          // will never be asked for.
          if (record.arena <= latest_arena_.load(std::memory_order_relaxed) &&
              record.arena > retired_arena_.load(std::memory_order_relaxed)) {
            retired_arena_.store(record.arena, std::memory_order_release);
            if (record.arena == latest_arena_.load(std::memory_order_relaxed)) {
              unclaimed_arena_.memfd.reset();
            }
            if (unclaimed_ring_arena_ <= record.arena) unclaimed_ring_.reset();
          }
          break;
        default:
          break;
      }
    }
    if (may_wait && deadline.expired()) return;
  }
}

}  // namespace capnsplice::detail
