#include "sender_core.h"

#include <poll.h>
#include <sys/epoll.h>

#include <array>
#include <cstring>

#include "capnsplice/error.h"
#include "capnsplice/frame.h"
#include "control_link.h"

namespace capnsplice::detail {

namespace {

/// A batch is written once it holds this many bytes or frames, whatever the caller
/// queues next: more would not make the system call cheaper, only the pipe fuller.
constexpr std::size_t kBatchBytes = std::size_t{256} * 1024;
constexpr std::size_t kBatchFrames = 256;
/// Shared-memory descriptors a batch holds at most: a quarter of what a sender may hold
/// unreleased, so the reader works on one batch while the sender fills the next.
constexpr std::size_t kBatchDescriptors = kMaxHeldSharedMessages / 4;
/// And the bytes of the messages they describe: a write wakes the reader, which costs
/// the writer several µs on a VM, and on a 64 KiB stream a 1 MiB batch was faster than
/// 256 KiB (12.2 against 9.9 GB/s) while still reading in cache.
constexpr std::size_t kBatchDescribedBytes = std::size_t{1} << 20;

/// Appends the gather entries of one frame: its table, then each segment. When the
/// table sits right before segment 0 both go as one entry. Returns the frame's bytes.
std::size_t append_frame(std::vector<iovec>& gather, std::byte* table, std::size_t table_bytes,
                         bool table_adjacent,
                         kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) {
  std::size_t frame_bytes = table_bytes;
  if (!table_adjacent) gather.push_back({table, table_bytes});
  for (std::size_t i = 0; i < segments.size(); ++i) {
    const std::size_t bytes = segments[i].size() * sizeof(capnp::word);
    if (i == 0 && table_adjacent) {
      gather.push_back({table, table_bytes + bytes});
    } else {
      gather.push_back({const_cast<capnp::word*>(segments[i].begin()), bytes});
    }
    frame_bytes += bytes;
  }
  return frame_bytes;
}

/// Bytes of the frame of `segments`: its segment table, then the segments.
std::size_t frame_bytes(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) {
  std::size_t bytes = segment_table_bytes(segments.size());
  for (const auto& segment : segments) bytes += segment.size() * sizeof(capnp::word);
  return bytes;
}

/// The pools (and, with a control link and a shared-memory path, the arena) a core's
/// messages are built from; make() adds the flush.
std::shared_ptr<BuildingMemory> make_building_memory(const SenderOptions& options,
                                                     const std::shared_ptr<ReaderProgress>& progress,
                                                     const std::string& context,
                                                     std::shared_ptr<ControlLink> link) {
  auto memory = std::make_shared<BuildingMemory>();
  // With a shared-memory path, an object of at least its threshold must not fit in a pool
  // segment: it then asks for a segment of its own, which goes there.
  memory->segments = std::make_shared<SegmentPool>(
      options.pool_bytes, progress, context, SegmentPool::Zeroing::zeroed,
      link && options.path == SendPath::automatic ? options.shared_memory_threshold_bytes : 0);
  memory->data = std::make_shared<SegmentPool>(options.data_pool_bytes, progress, context,
                                               SegmentPool::Zeroing::unzeroed);
  const bool shared_path =
      options.path == SendPath::shared_memory ||
      (options.path == SendPath::automatic && options.shared_memory_threshold_bytes != 0);
  if (link && shared_path) {
    memory->shared = std::make_shared<SharedSender>(std::move(link), progress, options, context);
  }
  return memory;
}

}  // namespace

std::shared_ptr<SenderCore> SenderCore::make(UniqueFd fd, SenderOptions options,
                                             std::string context,
                                             std::shared_ptr<ControlLink> link,
                                             const DescriptorFacts* facts) {
  auto core = std::make_shared<SenderCore>(MadeByMake(), std::move(fd), options,
                                           std::move(context), std::move(link), facts);
  core->memory_->flush_queued =
      FlushQueued::of<&SenderCore::flush_queued>(std::weak_ptr<SenderCore>(core));
  return core;
}

SenderCore::SenderCore(MadeByMake, UniqueFd fd, SenderOptions options, std::string context,
                       std::shared_ptr<ControlLink> link, const DescriptorFacts* facts)
    : fd_(std::move(fd)),
      options_(options),
      context_(std::move(context)),
      facts_(facts != nullptr ? *facts : probe_descriptor(fd_.get(), context_)),
      progress_(std::make_shared<ReaderProgress>(fd_.get(), context_)),
      link_(link),
      memory_(make_building_memory(options_, progress_, context_, link)),
      doorbell_link_(options_.doorbell ? std::move(link) : nullptr) {
  require_access_mode(facts_, /*for_writing=*/true, context_);
  if (facts_.pipe && facts_.raisable) capacity_ = PipeCapacity::raisable(facts_.pipe_bytes);
}

SenderCore::~SenderCore() {
  std::lock_guard lock(mutex_);
  if (fd_ && !queued_.empty()) {
    // Write what the pipe takes right now; a destructor must not wait for the reader.
    try {
      write_queue_locked(Deadline::immediate());
    } catch (const Error&) {
    }
  }
  abandon_queue(0);
  close_locked(ClosedBy::caller);
}

OutgoingMessage SenderCore::new_message(std::optional<Deadline> deadline) {
  return OutgoingMessage(
      std::make_unique<PooledMessageBuilder>(memory_, options_.send_timeout, deadline));
}

WriteMethod SenderCore::choose_method(std::size_t frame_bytes) const noexcept {
  // Where vmsplice copies anyway, writev does the same work and frees the memory at once.
  if (!facts_.pipe || !vmsplice_aliases_pages()) return WriteMethod::copy;
  switch (options_.path) {
    case SendPath::copy:
      return WriteMethod::copy;
    case SendPath::vmsplice:
      return WriteMethod::vmsplice;
    case SendPath::automatic:
    case SendPath::shared_memory:  // what does not go to the arena takes the pipe
      break;
  }
  return frame_bytes < options_.copy_threshold_bytes ? WriteMethod::copy : WriteMethod::vmsplice;
}

void SenderCore::ensure_open() const {
  if (!fd_) throw closed_error();
}

Error SenderCore::closed_error() const {
  switch (closed_by_) {
    case ClosedBy::peer:
      return Error(ErrorCode::PeerClosed, context_, "peer closed its receiving end");
    case ClosedBy::cut:
      return Error(ErrorCode::StreamCut, context_,
                   "this end stopped sending when an earlier send was cut mid-message");
    case ClosedBy::caller:
      break;
  }
  return Error(ErrorCode::InvalidArgument, context_, "this end was closed for sending");
}

SenderStats SenderCore::stats() const {
  SenderStats result;
  {
    std::lock_guard lock(mutex_);
    result = stats_;
    result.doorbell = doorbell_ && !doorbell_link_;
    result.pipe_bytes = facts_.pipe ? capacity_.bytes(fd_.get()) : 0;
    result.pipe_raise_refused = capacity_.refused();
  }
  result.vmsplice_aliases_pages = vmsplice_aliases_pages();
  result.descriptor_messages = descriptor_records_.load(std::memory_order_relaxed);
  if (const SharedSender* shared = memory_->shared.get()) {
    result.shared_memory_available = shared->available();
    result.arena_bytes_in_use = shared->arena_bytes_in_use();
    result.arenas_created = shared->arenas_created();
    result.shared_releases_by_ring = shared->releases_by_ring();
    result.shared_releases_by_record = shared->releases_by_record();
  }
  for (const auto* pool : {memory_->segments.get(), memory_->data.get()}) {
    const PoolStats stats = pool->stats();
    result.dedicated_allocations += stats.dedicated_allocations;
    result.waits_for_reader += stats.waits_for_reader;
  }
  return result;
}

// --- Queueing ------------------------------------------------------------------------

bool SenderCore::queue(OutgoingMessage& message, Deadline room_deadline) {
  return take(message, room_deadline, /*then_flush=*/false) != SendStatus::queue_full;
}

SendStatus SenderCore::send(OutgoingMessage& message, Deadline deadline) {
  return take(message, deadline, /*then_flush=*/true);
}

SendStatus SenderCore::take(OutgoingMessage& message, Deadline deadline, bool then_flush) {
  // The paths that return before the last lock below flush with a lock of their own.
  auto flushed = [&] {
    if (!then_flush) return SendStatus::queued;
    return flush(deadline) ? SendStatus::sent : SendStatus::queued;
  };
  if (!message.builder_) {
    throw Error(ErrorCode::InvalidArgument, context_,
                "an empty OutgoingMessage (already sent or moved from)");
  }
  PooledMessageBuilder* built = message.builder_.get();
  send_descriptors_ahead(message, deadline);
  const std::optional<AttachmentInfo> attachment = attachment_of(message);
  // Built in another sender's pool, which cannot see this pipe's progress, or in an
  // arena the reader cannot use (a fork() parent's, which still holds it, or one the peer
  // lost): the bytes must be copied rather than spliced or described. A message with
  // descriptors goes through the pipe, so one built in the arena is copied too.
  const bool foreign = built->memory() != memory_.get() ||
                       (built->in_shared_memory() &&
                        (attachment || !memory_->shared->can_describe()));
  const bool shared = !foreign && built->in_shared_memory();
  auto segments = built->segments_for_output();
  // A shared message puts only a small descriptor in the queue.
  const std::size_t room = shared ? 0 : frame_bytes(segments);
  // A pipe frame that plainly fits on an open end needs no lock here. (Two threads may
  // both see room and go a frame over the limit, as they could when each took the lock
  // in turn; an end closed meanwhile throws below, as it could then.)
  const bool plainly_fits = !foreign && !shared && !closed_.load(std::memory_order_relaxed) &&
                            (!has_queued() || unsent_bytes() + room <= options_.max_unsent_bytes);
  if (!plainly_fits) {
    std::lock_guard lock(mutex_);
    if (!make_room_locked(room, deadline)) return SendStatus::queue_full;
  }
  if (foreign) {
    // append_copy keeps a copy of what the pipe does not take; the builder goes back to
    // its pool after.
    const std::unique_ptr<PooledMessageBuilder> owned = std::move(message.builder_);
    append_copy(segments, nullptr, std::nullopt, Deadline::immediate(), 0, attachment);
    descriptors_queued(message);
    return flushed();
  }
  if (shared) {
    queue_shared(message, deadline);  // may wait for arena room, as building does
    return flushed();
  }
  std::unique_ptr<PooledMessageBuilder> builder = std::move(message.builder_);
  // Finish the frame before taking the lock: it may allocate from the pool, and a full
  // pool calls flush_queued(), which takes the lock.
  const std::size_t table_bytes = frame_head_bytes(segments.size(), attachment);
  const bool table_adjacent = table_bytes <= PooledMessageBuilder::kTableRoomBytes;
  std::byte* table = table_adjacent ? builder->first_segment_start() - table_bytes
                                    : builder->allocate_table(table_bytes);
  builder->finish_building();
  write_frame_head(segments, attachment, table);

  std::lock_guard lock(mutex_);
  ensure_open();
  const std::size_t bytes = frame_bytes(segments);
  append_locked({std::move(builder), 0, 0, choose_method(bytes), std::nullopt}, table,
                table_bytes, table_adjacent, segments);
  descriptors_queued(message);
  if (!then_flush) {
    write_if_batch_full_locked();
    return SendStatus::queued;
  }
  return flush_locked(deadline) ? SendStatus::sent : SendStatus::queued;
}

void SenderCore::write_if_batch_full_locked(std::size_t described_bytes) {
  // The messages descriptors name count as if they were in the batch: the reader should
  // find them still in cache, as it finds pipe frames.
  if (described_bytes != 0) {
    described_since_write_ += described_bytes;
    ++descriptors_since_write_;
  }
  // A large batch is written as far as the pipe takes it now; queue() never waits.
  if (queued_bytes_ >= kBatchBytes || queued_.size() >= kBatchFrames ||
      described_since_write_ >= kBatchDescribedBytes || descriptors_since_write_ >= kBatchDescriptors) {
    write_queue_locked(Deadline::immediate());
  }
  // The watcher is told by flush() or sync_watch(): try_send() flushes right after, and
  // registering EPOLLOUT in between would cost two epoll_ctl per message.
}

void SenderCore::sync_watch() {
  // Most senders have no watcher: no lock per queue() for them. A watch_with() racing
  // with this registers what the queue holds by itself.
  if (!has_watcher_.load(std::memory_order_relaxed)) return;
  std::lock_guard lock(mutex_);
  update_watch_locked();
}

bool SenderCore::make_room_locked(std::size_t bytes, Deadline deadline) {
  ensure_open();
  const std::size_t limit = options_.max_unsent_bytes;
  while (!queued_.empty() && unsent_.load(std::memory_order_relaxed) + bytes > limit) {
    if (write_queue_locked(deadline)) return true;
    if (unsent_.load(std::memory_order_relaxed) + bytes <= limit) return true;
    if (deadline.expired()) return false;
  }
  return true;
}

bool SenderCore::send_copy(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                           Deadline deadline) {
  // An empty segment 0 marks capnsplice's own control frames (frame.h): refused here, so
  // no message a caller sends can be taken for one (it would have no root pointer anyway).
  if (segments.size() == 0 || segments[0].size() == 0) {
    throw Error(ErrorCode::InvalidArgument, context_,
                segments.size() == 0
                    ? "a message without segments cannot be framed"
                    : "segment 0 is empty: a message needs at least its root pointer");
  }
  {
    std::lock_guard lock(mutex_);
    if (!make_room_locked(frame_bytes(segments), deadline)) {
      throw Error(ErrorCode::Overloaded, context_,
                  "the outgoing queue holds " + std::to_string(unsent_bytes()) +
                      " bytes, its limit is " + std::to_string(options_.max_unsent_bytes) +
                      ", and the reader made no room before the deadline: the message was "
                      "not taken");
    }
  }
  return append_copy(segments, nullptr, std::nullopt, deadline);
}

void SenderCore::send_descriptors_ahead(OutgoingMessage& message, Deadline deadline) {
  if (message.descriptors_sent_ != 0 && message.descriptor_link_.lock() != link_) {
    throw Error(ErrorCode::InvalidArgument, context_,
                "the message's descriptors went ahead on another channel's control link (a "
                "send there found the queue full): send it again there");
  }
  if (message.descriptors_.empty()) return;  // none, or on this link already
  {
    std::lock_guard lock(mutex_);
    ensure_open();
  }
  if (!link_) {
    throw Error(ErrorCode::InvalidArgument, context_,
                "this end has no control link (its channel was made from bare pipe "
                "descriptors, or a child's with only two): it cannot send descriptors");
  }
  std::optional<DescriptorLimits> limits = link_->peer_descriptor_limits();
  while (!limits) {
    if (link_->peer_gone()) throw Error(ErrorCode::PeerClosed, context_, "the peer closed its end");
    if (deadline.expired()) {
      throw Error(ErrorCode::Timeout, context_,
                  "the peer has not said that it takes descriptors: a plain Cap'n Proto peer "
                  "never does, a capnsplice peer does when its receiver is made (unless its "
                  "ReceiveLimits::max_descriptors_per_message is 0); nothing was sent");
    }
    link_->nap_for_records(deadline);
    limits = link_->peer_descriptor_limits();
  }
  const auto count = static_cast<std::uint32_t>(message.descriptors_.size());
  const std::uint32_t most = std::min(limits->per_message, limits->waiting);
  if (count > most) {
    throw Error(ErrorCode::InvalidArgument, context_,
                "the message carries " + std::to_string(count) +
                    " descriptors, the peer takes at most " + std::to_string(most) +
                    " per message (its ReceiveLimits); nothing was sent");
  }
  const std::uint64_t sequence = next_descriptor_sequence_.fetch_add(1, std::memory_order_relaxed);
  link_->send_descriptors(sequence, message.descriptors_, deadline);
  descriptor_records_.fetch_add(1, std::memory_order_relaxed);
  // The record holds the kernel's references now: ours close here. Until the frame is
  // queued, dropping the message cancels the record.
  message.descriptors_.clear();
  message.descriptor_sequence_ = sequence;
  message.descriptors_sent_ = count;
  message.descriptor_link_ = link_;
}

void SenderCore::descriptors_queued(OutgoingMessage& message) noexcept {
  message.descriptors_sent_ = 0;
  message.descriptor_link_.reset();
}

std::optional<AttachmentInfo> SenderCore::attachment_of(const OutgoingMessage& message) noexcept {
  if (message.descriptors_sent_ == 0) return std::nullopt;
  return AttachmentInfo{message.descriptor_sequence_, message.descriptors_sent_};
}

void SenderCore::queue_shared(OutgoingMessage& message, Deadline deadline) {
  // Everything here is on the message's latency path, and after building a large message
  // every cache and TLB entry it touches is cold: the descriptor is built on the stack
  // (not in a pool chunk), and the builder gives its pool chunks back only after the write.
  PooledMessageBuilder& built = *message.builder_;
  DescriptorBuilder descriptor(built.segments_for_output().size());
  const std::size_t described = frame_bytes(built.segments_for_output());
  // Until describe() returns, the message is whole and still the caller's.
  const std::uint64_t id =
      memory_->shared->describe(built.segments_for_output(), built.arena_blocks(),
                                descriptor.message(), deadline, memory_->flush_queued);
  append_copy(descriptor.marked_frame(), std::move(message.builder_), id, std::nullopt, described);
}

bool SenderCore::append_copy(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                             std::unique_ptr<PooledMessageBuilder> owner,
                             std::optional<std::uint64_t> shared_id,
                             std::optional<Deadline> write_until, std::size_t described_bytes,
                             std::optional<AttachmentInfo> attachment) {
  // 512 segments (Cap'n Proto's reader limit) need a 2 KiB table; larger goes to the heap.
  std::array<std::byte, 2056 + kAttachmentWords * 8> stack_table;
  std::vector<std::byte> heap_table;
  const std::size_t table_bytes = frame_head_bytes(segments.size(), attachment);
  std::byte* table = stack_table.data();
  std::unique_lock lock(mutex_, std::defer_lock);
  try {
    if (table_bytes > stack_table.size()) {
      heap_table.resize(table_bytes);
      table = heap_table.data();
    }
    write_frame_head(segments, attachment, table);
    lock.lock();
    ensure_open();
    // `segments` may be the caller's to reuse, or on its stack, once this returns: queue
    // behind the batch, write by copy, and keep a copy of what the pipe did not take.
    append_locked({std::move(owner), 0, 0, WriteMethod::copy, shared_id}, table, table_bytes,
                  false, segments);
  } catch (...) {
    // A descriptor that never got into the queue (a closed end, no memory): nothing will
    // name its blocks, which the arena holds for the reader until given back here.
    if (shared_id) memory_->shared->abandon(*shared_id);
    throw;
  }
  if (!write_until) {
    own_last_frame();
    write_if_batch_full_locked(described_bytes);
    return true;
  }
  const bool written = write_queue_locked(*write_until);
  if (!written) own_last_frame();
  update_watch_locked();
  return written;
}

void SenderCore::append_locked(QueuedFrame frame, std::byte* table, std::size_t table_bytes,
                               bool table_adjacent,
                               kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) {
  const std::size_t gather_before = gather_.size();
  try {
    frame.bytes = append_frame(gather_, table, table_bytes, table_adjacent, segments);
    frame.iov_end = gather_.size();
    // A frame the default pipe cannot hold would be written in parts with a wait between.
    if (capacity_.wants_raise_for(frame.bytes)) capacity_.raise(fd_.get());
    queued_.push_back(std::move(frame));
  } catch (...) {
    gather_.resize(gather_before);  // no write may take bytes of a frame not queued
    throw;
  }
  queued_bytes_ += queued_.back().bytes;
  update_counts_locked();
}

void SenderCore::own_last_frame() {
  QueuedFrame& frame = queued_.back();
  const std::size_t first = queued_.size() == 1 ? 0 : queued_[queued_.size() - 2].iov_end;
  std::size_t unwritten = 0;
  for (std::size_t i = first; i < frame.iov_end; ++i) unwritten += gather_[i].iov_len;
  frame.own_bytes.resize(unwritten);
  std::byte* out = frame.own_bytes.data();
  for (std::size_t i = first; i < frame.iov_end; ++i) {
    if (gather_[i].iov_len != 0) std::memcpy(out, gather_[i].iov_base, gather_[i].iov_len);
    out += gather_[i].iov_len;
  }
  gather_.resize(first);
  gather_.push_back({frame.own_bytes.data(), unwritten});
  frame.iov_end = gather_.size();
}

void SenderCore::watch_with(int epoll_fd) {
  std::lock_guard lock(mutex_);
  if (watching_) {
    ::epoll_ctl(watch_epoll_, EPOLL_CTL_DEL, fd_.get(), nullptr);
    watching_ = false;
  }
  watch_epoll_ = epoll_fd;
  has_watcher_.store(epoll_fd >= 0, std::memory_order_relaxed);
  update_watch_locked();
}

void SenderCore::update_watch_locked() noexcept {
  const bool wanted = watch_epoll_ >= 0 && fd_ && !queued_.empty();
  if (wanted == watching_) return;
  epoll_event event{};
  event.events = EPOLLOUT;
  event.data.fd = fd_.get();
  // Failure leaves the watcher without write events; try_flush() still works.
  if (::epoll_ctl(watch_epoll_, wanted ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, fd_.get(), &event) == 0) {
    watching_ = wanted;
  }
}

bool SenderCore::close(Deadline deadline) {
  std::lock_guard lock(mutex_);
  if (!fd_) return true;
  try {
    if (!write_queue_locked(deadline)) {
      update_watch_locked();
      return false;  // the end stays open with its queue: close() can be called again
    }
  } catch (const Error&) {
    if (fd_) close_locked(ClosedBy::caller);
    throw;
  }
  close_locked(ClosedBy::caller);
  return true;
}

void SenderCore::close_locked(ClosedBy why) {
  closed_by_ = why;
  closed_.store(true, std::memory_order_relaxed);
  if (watching_) {
    // Out of the watcher's set before the descriptor closes, so its number can be reused.
    ::epoll_ctl(watch_epoll_, EPOLL_CTL_DEL, fd_.get(), nullptr);
    watching_ = false;
  }
  // Waits for a FIONREAD or wait of the pools in progress: the descriptor is unused after.
  progress_->close(closed_error());
  fd_.reset();
}

}  // namespace capnsplice::detail
