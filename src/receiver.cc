#include "capnsplice/receiver.h"

#include <poll.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <utility>

#include "capnsplice/error.h"
#include "capnsplice/frame.h"
#include "attachment.h"
#include "doorbell_watch.h"
#include "pipe_io.h"
#include "receive_wake.h"
#include "received_message_state.h"
#include "shared_receiver.h"

namespace capnsplice {
namespace detail {

/// The most one read takes out of the pipe. The kernel holds the pipe's lock for the
/// whole copy, and the sender's vmsplice waits for that lock (it spun there for a fifth
/// of its time): shorter reads let the two interleave. Measured with 64 KiB messages:
/// no cap 6.7 GB/s, 16 KiB 7.5, 32 KiB 8.1, 64 KiB 8.8, 128 KiB 8.4.
constexpr std::size_t kMaxReadBytes = std::size_t{64} * 1024;

class ReceiverCore {
 public:
  ReceiverCore(UniqueFd fd, ReceiverOptions options, std::string context,
               std::shared_ptr<ControlLink> link, const DescriptorFacts* known)
      : fd_(std::move(fd)),
        options_(options),
        context_(std::move(context)),
        doorbell_(options_.doorbell, link) {
    // A pipe end the channel made is known; any other descriptor is asked once.
    const DescriptorFacts facts = known != nullptr ? *known : probe_descriptor(fd_.get(), context_);
    splice_reads_ = reads_by_splice(facts);
    // read() on a blocking descriptor would block: ask poll() first.
    poll_before_read_ = !splice_reads_ && !facts.nonblocking();
    const ReceiveLimits& limits = options_.limits;
    reader_options_.traversalLimitInWords =
        limits.traversal_limit_words != 0 ? limits.traversal_limit_words
                                          : 4 * (limits.max_message_bytes / sizeof(capnp::word));
    reader_options_.nestingLimit = limits.nesting_limit;
    require_access_mode(facts, /*for_writing=*/false, context_);
    if (link) {
      SharedReceiver::announce(*link);
      if (limits.max_descriptors_per_message != 0) link->announce_accepts_descriptors(limits);
      link_ = std::move(link);
    }
  }

  /// A receive() blocked in another thread would go on in freed memory: wake it (it
  /// throws InvalidArgument) and wait until every call in progress has left.
  ~ReceiverCore() {
    wake_.close();
    while (callers_.load() != 0) std::this_thread::yield();
  }

  ReceiverCore(const ReceiverCore&) = delete;
  ReceiverCore& operator=(const ReceiverCore&) = delete;

  ReceivedMessage receive(Deadline deadline) {
    const CallInProgress call(callers_);
    // False once a ring was followed by a read that found nothing (a counter that moves
    // without bytes): this call then sleeps in the kernel instead of spinning again.
    bool spin_on_doorbell = true;
    bool rang = false;
    for (;;) {
      if (auto message = take_buffered()) return std::move(*message);
      if (end_of_stream_) throw_end_of_stream();
      // After a read left the pipe empty (it found nothing, or took less than it asked:
      // the usual end of a read that took a request, or a reply), wait first: poll()
      // answers at once if bytes came since, and saves a read that would most likely
      // find nothing. Read first when the doorbell rang since (bytes came), or before
      // this thread's first wait, which makes a descriptor (at the descriptor limit,
      // bytes already there still come). With the doorbell quiet, a read would fail.
      const bool read_first =
          !emptied_pipe_ || doorbell_.rang() || !ReceiveWake::this_thread_can_wait();
      if (read_first && !doorbell_.quiet()) {
        if (read_more() != ReadOutcome::would_block) {
          rang = false;
          continue;
        }
        if (rang) spin_on_doorbell = false;
      }
      if (shared_) shared_->release_retired();  // nothing to read: a good time to free
      std::chrono::nanoseconds spin = options_.spin_before_block;
      if (doorbell_.quiet()) {
        // Spin on memory, then sleep in the kernel at once (which also sees bytes from a
        // writer that does not ring).
        if (spin_on_doorbell &&
            doorbell_.spin_until_rung(spin, deadline, [this] { return wake_.should_stop(); })) {
          ++stats_.doorbell_looks;
          emptied_pipe_ = false;
          rang = doorbell_.rang();  // not a write under way: that may find the pipe empty
          continue;
        }
        spin = std::chrono::nanoseconds(0);
      } else {
        doorbell_.look_for_it(context_);
      }
      // A report of released descriptors the link could not take: the peer's sender
      // may wait for it while this end waits for its messages. Nap and try again.
      Deadline wait_until = deadline;
      if (link_ && link_->release_report_pending()) {
        link_->retry_release_report();
        if (link_->release_report_pending()) {
          constexpr std::chrono::milliseconds kNap{1};
          if (deadline.remaining() > kNap) wait_until = Deadline::after(kNap);
        }
      }
      switch (wake_.wait(fd_.get(), spin, wait_until, context_)) {
        case WaitResult::ready:
          // Read again, even with the doorbell quiet: bytes it did not ring for.
          emptied_pipe_ = false;
          if (doorbell_.quiet()) doorbell_.missed_unless_rung_since(doorbell_.seen());
          break;
        case WaitResult::timed_out:
          if (!deadline.expired()) break;  // a nap for the report above
          throw Error(ErrorCode::Timeout, context_, "no message arrived before the deadline");
        case WaitResult::interrupted:
          if (wake_.closing()) {  // it stays closing: every waiter must wake
            throw Error(ErrorCode::InvalidArgument, context_,
                        "the receiver was destroyed while this receive waited");
          }
          // The read skipped above: bytes already there come first, and the interrupt
          // stays for the next receive that blocks.
          if (std::exchange(emptied_pipe_, false) && read_more() != ReadOutcome::would_block) {
            continue;
          }
          static_cast<void>(wake_.take_interrupt());
          throw Error(ErrorCode::Interrupted, context_, "receive was interrupted");
      }
    }
  }

  void interrupt() { wake_.interrupt(); }

  /// `spinning`: try_receive_spinning().
  std::optional<ReceivedMessage> try_receive(bool spinning) {
    const CallInProgress call(callers_);
    if (auto message = take_buffered()) return message;
    bool trusted_quiet = false;
    const std::uint64_t seen = doorbell_.seen();
    if (spinning && doorbell_.quiet()) {
      if (!doorbell_.time_for_a_real_read()) {  // nothing new: no system call
        ++stats_.doorbell_looks;
        DoorbellWatch::pause();
        return std::nullopt;
      }
      trusted_quiet = true;
    }
    // One read takes at most kMaxReadBytes: go on while bytes come, so that an empty
    // result means nothing more is ready, even for a frame larger than one read.
    while (!end_of_stream_ && read_more() == ReadOutcome::data) {
      if (std::exchange(trusted_quiet, false)) doorbell_.missed_unless_rung_since(seen);
      if (auto message = take_buffered()) return message;
    }
    if (auto message = take_buffered()) return message;
    // A clean end of stream is an answer, not a failure: at_end() says which it was.
    if (end_of_stream_ && !at_end()) throw_end_of_stream();
    if (shared_) shared_->release_retired();
    doorbell_.look_for_it(context_);
    if (link_ && link_->release_report_pending()) link_->retry_release_report();
    return std::nullopt;
  }

  /// No byte of a frame is pending: the ring is parsed to its end, and an own frame (one
  /// started when held messages filled the ring) has received nothing yet.
  bool at_end() const noexcept { return end_of_stream_ && unread_bytes() == 0; }

  bool emptied_pipe() const noexcept { return emptied_pipe_; }

  bool has_buffered_message() {
    if (own_) return own_->probe.header_complete && own_->have == own_->needed;
    const std::size_t available = static_cast<std::size_t>(head_ - parse_);
    if (available < 8) return false;
    try {
      FrameProbe probe = probe_at(ring_->at(parse_), available);
      return probe.header_complete && available >= probe.bytes_needed;
    } catch (const Error&) {
      return true;  // receive() has an error to report right away
    }
  }

  int fd() const noexcept { return fd_.get(); }
  ReceiverStats stats() const {
    ReceiverStats result = stats_;
    result.doorbell = doorbell_.active();
    return result;
  }

 private:
  enum class ReadOutcome { data, end_of_stream, would_block };

  /// Counts a receive or try_receive in progress, for the destructor.
  class CallInProgress {
   public:
    explicit CallInProgress(std::atomic<int>& callers) : callers_(callers) { ++callers_; }
    ~CallInProgress() { --callers_; }
    CallInProgress(const CallInProgress&) = delete;
    CallInProgress& operator=(const CallInProgress&) = delete;

   private:
    std::atomic<int>& callers_;
  };

  /// A frame assembled outside the ring: too large for it, or the ring is full of
  /// messages the application still holds.
  struct OwnFrame {
    FrameBuffer buffer;
    std::size_t have = 0;    // bytes received so far
    std::size_t needed = 0;  // bytes to have before probing again (or the whole frame)
    FrameProbe probe;

    std::byte* bytes() const noexcept { return buffer.data(); }
  };

  /// probe_frame() with this receiver's limits; marked frames (shared-memory
  /// descriptors) are accepted only with a control link to follow them.
  FrameProbe probe_at(const std::byte* frame, std::size_t available) const {
    return probe_frame(frame, available, options_.limits, context_,
                       link_ ? MarkedFrames::accepted : MarkedFrames::refused);
  }
  std::optional<ReceivedMessage> take_buffered();
  ReadOutcome read_more();
  void start_own_frame(const FrameProbe& probe);
  void grow_own_frame(std::size_t bytes);
  void compact_if_idle();
  ReceivedMessage make_message(std::unique_ptr<ReceivedMessageState> state, const std::byte* frame,
                               const FrameProbe& probe);
  [[noreturn]] void throw_end_of_stream() const;
  std::size_t unread_bytes() const noexcept {
    return own_ ? own_->have : static_cast<std::size_t>(head_ - parse_);
  }

  UniqueFd fd_;
  ReceiveWake wake_;  // interrupt() and the destructor wake a receive() with it
  std::atomic<int> callers_{0};  // receive/try_receive calls in progress
  ReceiverOptions options_;
  std::string context_;
  bool splice_reads_;  // vmsplice (read direction) rather than read()
  bool poll_before_read_;
  capnp::ReaderOptions reader_options_;
  std::shared_ptr<ReceiveRing> ring_;
  std::uint64_t parse_ = 0;  // start of the next frame
  std::uint64_t head_ = 0;   // end of the bytes read
  /// Only while a frame is assembled outside the ring (large ones): a pointer, not the
  /// frame, in every receiver (Channel::pair() makes two per pair).
  std::unique_ptr<OwnFrame> own_;
  std::shared_ptr<ControlLink> link_;  // with it, marked frames are accepted
  /// Follows the descriptors of marked frames; made with the first one (most channel
  /// ends never receive one, and Channel::pair() makes two ends per pair).
  std::unique_ptr<SharedReceiver> shared_;
  bool end_of_stream_ = false;
  // The last read found the pipe empty or took all there was; receive() clears it when a
  // wait says bytes came or the doorbell rang.
  bool emptied_pipe_ = false;
  DoorbellWatch doorbell_;     // the peer's, with ReceiverOptions::doorbell
  ReceiverStats stats_;
};

std::optional<ReceivedMessage> ReceiverCore::take_buffered() {
  if (own_) {
    while (own_->have == own_->needed && !own_->probe.header_complete) {
      const FrameProbe probe = probe_at(own_->bytes(), own_->have);
      grow_own_frame(probe.bytes_needed);  // first: if it fails, nothing has changed
      own_->probe = probe;
      own_->needed = probe.bytes_needed;
    }
    if (own_->have < own_->needed) return std::nullopt;
    auto state = std::make_unique<ReceivedMessageState>();
    const auto& own = state->memory.emplace<OwnFrameBuffer>(ring_, std::move(own_->buffer));
    FrameProbe probe = own_->probe;
    own_.reset();
    ++stats_.own_buffer_messages;
    return make_message(std::move(state), own.data(), probe);
  }

  const std::size_t available = static_cast<std::size_t>(head_ - parse_);
  if (available == 0) return std::nullopt;
  const FrameProbe probe = probe_at(ring_->at(parse_), available);
  if (probe.header_complete && available >= probe.bytes_needed) {
    auto state = std::make_unique<ReceivedMessageState>();
    state->memory.emplace<RingLease>(ring_, ring_->lease(parse_, parse_ + probe.bytes_needed));
    const std::byte* frame = ring_->at(parse_);
    parse_ += probe.bytes_needed;
    return make_message(std::move(state), frame, probe);
  }
  // Incomplete. If the ring cannot hold what is needed from `parse_` on — the frame
  // is larger than the ring, or messages still held fill it — continue outside it.
  const std::size_t room =
      ring_->capacity() - static_cast<std::size_t>(parse_ - ring_->oldest_leased_or(parse_));
  if (probe.bytes_needed > room) start_own_frame(probe);
  return std::nullopt;
}

ReceivedMessage ReceiverCore::make_message(std::unique_ptr<ReceivedMessageState> state,
                                           const std::byte* frame, const FrameProbe& probe) {
  auto* slots = state->segment_slots(probe.segment_count);
  frame_segments(frame, probe, slots);
  state->segments = kj::arrayPtr(slots, probe.segment_count);
  state->frame_bytes = probe.bytes_needed;
  ++stats_.messages;
  stats_.bytes += probe.bytes_needed;
  if (probe.marked && probe.segment_count > 2) {
    // A message with descriptors (only accepted with `link_`): segment 1 names the
    // record that brought them, the message's segments follow (attachment.h).
    const AttachmentInfo attachment = read_attachment(state->segments[1], context_);
    state->segments = state->segments.slice(2, state->segments.size());
    // Taken first, so that they close with `state` whatever follows.
    state->descriptors = link_->take_descriptors(attachment.sequence, attachment.count, context_);
    if (state->segments[0].size() == 0) {
      throw Error(ErrorCode::ProtocolViolation, context_,
                  "a message with descriptors has an empty segment 0 (no root pointer)");
    }
    ++stats_.descriptor_messages;
  } else if (probe.marked) {
    // A shared-memory descriptor (only accepted with `link_`): the message itself is
    // in the peer's arena, and the descriptor's bytes go back when `state` goes.
    auto shared_state = std::make_unique<ReceivedMessageState>();
    if (!shared_) shared_ = std::make_unique<SharedReceiver>(link_, options_.limits, context_);
    shared_->open(state->segments[1], *shared_state);
    ++stats_.shared_messages;
    return ReceivedMessage(std::move(shared_state));
  }
  state->reader.emplace(state->segments, reader_options_);
  return ReceivedMessage(std::move(state));
}

void ReceiverCore::start_own_frame(const FrameProbe& probe) {
  // probe_frame() has checked the sizes against the limits: `needed` is bounded.
  own_ = std::make_unique<OwnFrame>();
  own_->probe = probe;
  try {
    grow_own_frame(probe.bytes_needed);
  } catch (...) {
    own_.reset();  // as before: the bytes stay in the ring, the next call tries again
    throw;
  }
  own_->needed = probe.bytes_needed;
  own_->have = static_cast<std::size_t>(head_ - parse_);
  std::memcpy(own_->bytes(), ring_->at(parse_), own_->have);
  head_ = parse_;  // those bytes now live in the frame's own buffer
  ring_->filled_to(head_);
}

void ReceiverCore::grow_own_frame(std::size_t bytes) {
  if (own_->buffer.bytes >= bytes) return;
  FrameBuffer bigger;
  try {
    bigger = ring_->take_frame_buffer(bytes);
  } catch (const std::bad_alloc&) {
    // The limits allowed the frame, the process has not the memory for it (a tight
    // RLIMIT_AS, no overcommit): a system failure, and nothing of the frame is lost.
    throw Error(ErrorCode::SystemError, context_,
                "no memory for a frame of " + std::to_string(bytes) + " bytes", ENOMEM);
  }
  if (own_->have != 0) std::memcpy(bigger.data(), own_->bytes(), own_->have);
  own_->buffer = std::move(bigger);
}

void ReceiverCore::compact_if_idle() {
  // When every message has been dropped, move a partial frame to the ring's start:
  // reads then keep landing in the same, cache-warm bytes. The move is a copy, and with
  // reads capped at kMaxReadBytes most reads end inside a frame, so a partial frame of
  // more than a few KiB moves only once reads have wandered a long way (moving every
  // one cost 7% of the CPU of a 64 KiB stream; this rule took it from 7.9 to 8.8 GB/s).
  constexpr std::size_t kMaxMove = std::size_t{128} * 1024;
  constexpr std::size_t kAlwaysMove = std::size_t{4} * 1024;
  constexpr std::size_t kMoveLargerFrom = std::size_t{1024} * 1024;
  const std::size_t offset = static_cast<std::size_t>(parse_ % ring_->capacity());
  if (offset == 0 || ring_->oldest_leased_or(parse_) != parse_) return;
  const std::size_t partial = static_cast<std::size_t>(head_ - parse_);
  if (partial > kAlwaysMove && offset < kMoveLargerFrom) return;
  if (partial > kMaxMove || partial > offset || offset + partial > ring_->capacity()) return;
  if (partial != 0) std::memcpy(ring_->at(0), ring_->at(parse_), partial);
  parse_ = 0;
  head_ = partial;
}

ReceiverCore::ReadOutcome ReceiverCore::read_more() {
  std::byte* target;
  std::size_t length;
  // The trimmer keeps away from the ring from start_read() until this says the read is
  // over, however it ends.
  struct ReadIntoRing {
    ReceiverCore* core = nullptr;
    ~ReadIntoRing() {
      if (core != nullptr) core->ring_->filled_to(core->head_);
    }
  } read_into_ring;
  if (own_) {
    target = own_->bytes() + own_->have;
    length = own_->needed - own_->have;
  } else {
    if (!ring_) ring_ = std::make_shared<ReceiveRing>(options_.buffer_bytes, context_);
    compact_if_idle();
    const std::uint64_t oldest = ring_->start_read(parse_, head_);
    read_into_ring.core = this;
    length = ring_->capacity() - static_cast<std::size_t>(head_ - oldest);
    if (length == 0) {
      // Held messages fill every byte of the ring (no partial frame is pending, or it
      // would have moved out already): the next frame starts in a buffer of its own.
      FrameProbe first_word;
      first_word.bytes_needed = 8;
      start_own_frame(first_word);
      target = own_->bytes();
      length = own_->needed;
    } else {
      target = ring_->at(head_);
    }
  }
  length = std::min(length, kMaxReadBytes);
  doorbell_.before_read();
  if (poll_before_read_ &&
      wait_for(fd_.get(), POLLIN, Deadline::immediate()) == WaitResult::timed_out) {
    emptied_pipe_ = true;
    doorbell_.after_read(/*emptied=*/true);
    ++stats_.empty_reads;
    return ReadOutcome::would_block;
  }
  const long got = read_some(fd_.get(), splice_reads_, target, length, context_);
  // A pipe read returns what is there up to the length asked: less means it is empty now.
  emptied_pipe_ = got < 0 || static_cast<std::size_t>(got) < length;
  doorbell_.after_read(emptied_pipe_ && got != 0);
  if (got < 0) {
    ++stats_.empty_reads;
    return ReadOutcome::would_block;
  }
  if (got == 0) {
    end_of_stream_ = true;
    return ReadOutcome::end_of_stream;
  }
  ++stats_.reads;
  (own_ ? own_->have : head_) += static_cast<std::size_t>(got);
  return ReadOutcome::data;
}

void ReceiverCore::throw_end_of_stream() const {
  const std::size_t partial = unread_bytes();
  if (partial == 0) {
    throw Error(ErrorCode::PeerClosed, context_, "peer closed the channel (end of stream)");
  }
  std::string detail = "stream ended " + std::to_string(partial) + " bytes into a frame";
  if (own_ && own_->probe.header_complete) {
    detail += " of " + std::to_string(own_->probe.bytes_needed) + " bytes";
  } else if (!own_ && ring_ && partial >= 8) {
    FrameProbe probe = probe_at(ring_->at(parse_), partial);
    if (probe.header_complete) detail += " of " + std::to_string(probe.bytes_needed) + " bytes";
  }
  detail += "; the peer stopped mid-message";
  throw Error(ErrorCode::TruncatedMessage, context_, detail);
}

}  // namespace detail

Receiver::Receiver(UniqueFd fd, ReceiverOptions options, std::string context)
    : Receiver(std::move(fd), options, std::move(context), nullptr) {}

Receiver::Receiver(UniqueFd fd, ReceiverOptions options, std::string context,
                   std::shared_ptr<detail::ControlLink> link, const detail::DescriptorFacts* facts)
    : core_(std::make_unique<detail::ReceiverCore>(std::move(fd), options, std::move(context),
                                                   std::move(link), facts)) {}
Receiver::Receiver(Receiver&&) noexcept = default;
Receiver& Receiver::operator=(Receiver&&) noexcept = default;
Receiver::~Receiver() = default;

void Receiver::interrupt() { core_->interrupt(); }
ReceivedMessage Receiver::receive() { return core_->receive(Deadline::never()); }
ReceivedMessage Receiver::receive(Deadline deadline) { return core_->receive(deadline); }
std::optional<ReceivedMessage> Receiver::try_receive() { return core_->try_receive(false); }
std::optional<ReceivedMessage> Receiver::try_receive_spinning() {
  return core_->try_receive(true);
}
bool Receiver::has_buffered_message() { return core_->has_buffered_message(); }
bool Receiver::at_end() const noexcept { return core_->at_end(); }
bool Receiver::emptied_pipe() const noexcept { return core_->emptied_pipe(); }
int Receiver::fd() const noexcept { return core_->fd(); }
ReceiverStats Receiver::stats() const { return core_->stats(); }

}  // namespace capnsplice
