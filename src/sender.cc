#include "capnsplice/sender.h"

#include <poll.h>

#include <array>
#include <atomic>
#include <ctime>
#include <vector>

#include "capnsplice/error.h"
#include "capnsplice/frame.h"
#include "pipe_io.h"
#include "pooled_message_builder.h"

namespace capnsplice {
namespace detail {

class SenderCore final : public ConsumptionSource {
 public:
  SenderCore(UniqueFd fd, SenderOptions options, std::string context)
      : fd_(std::move(fd)),
        options_(options),
        context_(std::move(context)),
        pipe_(is_pipe(fd_.get())),
        pool_(std::make_shared<SegmentPool>(options.pool_bytes, context_)) {
    require_access_mode(fd_.get(), /*for_writing=*/true, context_);
    pool_->attach(this);
  }

  ~SenderCore() override { pool_->attach(nullptr); }

  OutgoingMessage new_message() {
    return OutgoingMessage(std::make_unique<PooledMessageBuilder>(pool_, options_.send_timeout));
  }

  void send(OutgoingMessage&& message, Deadline deadline);
  void send_copy(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments, Deadline deadline);

  void close() {
    pool_->attach(nullptr);
    fd_.reset();
  }

  int fd() const noexcept { return fd_.get(); }
  const SenderOptions& options() const noexcept { return options_; }

  SenderStats stats() const {
    SenderStats result = stats_;
    PoolStats pool = pool_->stats();
    result.dedicated_allocations = pool.dedicated_allocations;
    result.waits_for_reader = pool.waits_for_reader;
    return result;
  }

  // ConsumptionSource: what the kernel says the reader has read.
  std::uint64_t consumed_bytes() override {
    // Load `written_` before asking for the queue length: bytes written in between
    // then show up in `queued` only, which makes the result smaller, never larger.
    const std::uint64_t written = written_.load(std::memory_order_acquire);
    const std::uint64_t queued = pipe_queued_bytes(fd_.get(), context_);
    return written > queued ? written - queued : 0;
  }

  void wait_for_reader(Deadline deadline) override;

 private:
  WriteMethod choose_method(std::size_t frame_bytes) const noexcept {
    if (!pipe_) return WriteMethod::copy;
    switch (options_.path) {
      case SendPath::copy: return WriteMethod::copy;
      case SendPath::vmsplice: return WriteMethod::vmsplice;
      case SendPath::automatic: break;
    }
    return frame_bytes < options_.copy_threshold_bytes ? WriteMethod::copy
                                                       : WriteMethod::vmsplice;
  }

  void ensure_open() const {
    if (!fd_) throw Error(ErrorCode::PeerClosed, context_, "this end was closed for sending");
  }

  /// Writes one frame; accounts every byte that reached the pipe in `written_` even when
  /// it throws, and then closes the sender (the stream is cut mid-frame).
  void write_frame(WriteMethod method, IovCursor cursor, Deadline deadline);

  UniqueFd fd_;
  SenderOptions options_;
  std::string context_;
  bool pipe_;
  std::shared_ptr<SegmentPool> pool_;
  std::atomic<std::uint64_t> written_{0};
  SenderStats stats_;
};

void SenderCore::wait_for_reader(Deadline deadline) {
  pollfd probe{fd_.get(), POLLOUT, 0};
  if (::poll(&probe, 1, 0) < 0) throw_system_error(context_, "poll");
  if ((probe.revents & POLLERR) != 0) {
    throw Error(ErrorCode::PeerClosed, context_, "peer closed its receiving end");
  }
  if ((probe.revents & POLLOUT) == 0) {
    // The pipe is full: the kernel wakes us as soon as the reader frees a slot. On
    // timeout the caller sees the deadline passed and reports it.
    wait_for(fd_.get(), POLLOUT, deadline);
    return;
  }
  // The pipe has room, so the reader is draining what is left and no kernel event
  // marks its progress. Pause briefly; the caller asks FIONREAD again.
  const timespec pause{0, 20'000};
  ::nanosleep(&pause, nullptr);
}

void SenderCore::write_frame(WriteMethod method, IovCursor cursor, Deadline deadline) {
  SigpipeGuard guard;
  std::size_t progress = 0;
  try {
    while (!cursor.empty()) {
      std::size_t written = write_some(fd_.get(), method, cursor, context_, guard);
      if (written > 0) {
        progress += written;
        written_.fetch_add(written, std::memory_order_release);
        cursor.advance(written);
        continue;
      }
      if (wait_for(fd_.get(), POLLOUT, deadline) == WaitResult::timed_out) {
        throw Error(ErrorCode::Timeout, context_,
                    progress == 0
                        ? "the reader did not make room in the pipe before the deadline; "
                          "the message was not sent"
                        : "the reader stopped reading mid-message and the deadline passed; "
                          "the stream is cut and this sender is closed");
      }
    }
  } catch (const Error&) {
    if (progress != 0) close();  // A partial frame cannot be resumed or retracted.
    throw;
  }
}

void SenderCore::send(OutgoingMessage&& message, Deadline deadline) {
  ensure_open();
  // Take ownership first: whatever happens next, the caller's message is consumed.
  std::unique_ptr<capnp::MessageBuilder> owned = std::move(message.builder_);
  auto* builder = static_cast<PooledMessageBuilder*>(owned.get());
  if (builder == nullptr) throw std::logic_error("capnsplice: sending an empty OutgoingMessage");
  if (builder->pool() != pool_) {
    // Built in another sender's pool: that pool cannot see this pipe's progress, so
    // the bytes must be copied rather than spliced.
    send_copy(builder->segments_for_output(), deadline);
    return;
  }

  auto segments = builder->segments_for_output();
  const std::size_t table_bytes = segment_table_bytes(segments.size());
  std::byte* table = table_bytes <= PooledMessageBuilder::kTableRoomBytes
                         ? builder->first_segment_start() - table_bytes
                         : builder->allocate_table(table_bytes);
  builder->finish_building();
  write_segment_table(segments, table);

  // Gather list: the table, then each segment; the table sits right before segment 0
  // when it fits there, so both go as one entry.
  std::vector<iovec> gather;
  gather.reserve(segments.size() + 1);
  std::size_t frame_bytes = table_bytes;
  const bool table_adjacent = table_bytes <= PooledMessageBuilder::kTableRoomBytes;
  if (!table_adjacent) gather.push_back({table, table_bytes});
  for (std::size_t i = 0; i < segments.size(); ++i) {
    const std::size_t bytes = segments[i].size() * sizeof(capnp::word);
    auto* start = const_cast<capnp::word*>(segments[i].begin());
    if (i == 0 && table_adjacent) {
      gather.push_back({table, table_bytes + bytes});
    } else {
      gather.push_back({start, bytes});
    }
    frame_bytes += bytes;
  }

  const WriteMethod method = choose_method(frame_bytes);
  const std::uint64_t stream_start = written_.load(std::memory_order_relaxed);
  try {
    write_frame(method, {gather.data(), gather.size()}, deadline);
  } catch (...) {
    // Spliced bytes that reached the pipe stay referenced until the reader consumes
    // them (or the pipe is destroyed): give those chunks back only after that point.
    if (method == WriteMethod::copy) {
      builder->release_chunks();
    } else {
      builder->release_chunks_after(written_.load(std::memory_order_relaxed));
    }
    throw;
  }
  if (method == WriteMethod::copy) {
    builder->release_chunks();
    ++stats_.copied_messages;
  } else {
    builder->release_chunks_after(stream_start + frame_bytes);
    ++stats_.spliced_messages;
  }
  ++stats_.messages;
  stats_.bytes += frame_bytes;
}

void SenderCore::send_copy(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                           Deadline deadline) {
  ensure_open();
  if (segments.size() == 0) {
    throw std::logic_error("capnsplice: a message without segments cannot be framed");
  }
  // 512 segments (Cap'n Proto's reader limit) need a 2 KiB table; larger goes to the heap.
  std::array<std::byte, 2056> stack_table;
  std::vector<std::byte> heap_table;
  const std::size_t table_bytes = segment_table_bytes(segments.size());
  std::byte* table = stack_table.data();
  if (table_bytes > stack_table.size()) {
    heap_table.resize(table_bytes);
    table = heap_table.data();
  }
  write_segment_table(segments, table);
  std::vector<iovec> gather;
  gather.reserve(segments.size() + 1);
  gather.push_back({table, table_bytes});
  std::size_t frame_bytes = table_bytes;
  for (const auto& segment : segments) {
    const std::size_t bytes = segment.size() * sizeof(capnp::word);
    gather.push_back({const_cast<capnp::word*>(segment.begin()), bytes});
    frame_bytes += bytes;
  }
  write_frame(WriteMethod::copy, {gather.data(), gather.size()}, deadline);
  ++stats_.messages;
  ++stats_.copied_messages;
  stats_.bytes += frame_bytes;
}

}  // namespace detail

Sender::Sender(UniqueFd fd, SenderOptions options, std::string context)
    : core_(std::make_unique<detail::SenderCore>(std::move(fd), options, std::move(context))) {}

Sender::Sender(Sender&&) noexcept = default;
Sender& Sender::operator=(Sender&&) noexcept = default;
Sender::~Sender() = default;

OutgoingMessage Sender::new_message() { return core_->new_message(); }

void Sender::send(OutgoingMessage&& message) {
  send(std::move(message), Deadline::after(core_->options().send_timeout));
}

void Sender::send(OutgoingMessage&& message, Deadline deadline) {
  core_->send(std::move(message), deadline);
}

void Sender::send_copy(capnp::MessageBuilder& message) {
  send_copy(message, Deadline::after(core_->options().send_timeout));
}

void Sender::send_copy(capnp::MessageBuilder& message, Deadline deadline) {
  auto segments = message.getSegmentsForOutput();
  if (segments.size() == 0) {
    message.getRoot<capnp::AnyPointer>();  // an empty message still has a root pointer
    segments = message.getSegmentsForOutput();
  }
  core_->send_copy(segments, deadline);
}

void Sender::send_copy(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                       Deadline deadline) {
  core_->send_copy(segments, deadline);
}

void Sender::close() { core_->close(); }

int Sender::fd() const noexcept { return core_->fd(); }

SenderStats Sender::stats() const { return core_->stats(); }

}  // namespace capnsplice
