// libFuzzer target: message delivery. A Receiver reads a pipe into which the input's
// byte stream is written in pieces the input chooses; what it delivers is compared with
// an independent reading of the whole stream (reference_stream.h).
//
// Input layout:
//   byte 0          settings: ring size, size limit, segment limit, which messages to hold
//   byte 1          n, the number of piece sizes that follow (0: the stream in one write)
//   n x 2 bytes     piece sizes, little-endian, used in turn (0 counts as 1)
//   the rest        the byte stream
//
// Checked, besides "no crash, no undefined behaviour, no leak": exactly the reference's
// frames are delivered, byte for byte and in order, then exactly the reference's error;
// has_buffered_message() never promises a message that try_receive() does not give.
// Every message's content is read with Cap'n Proto's limits on; kj::Exception is a
// correct outcome for bad content.
#include <capnp/any.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "capnsplice/receiver.h"
#include "fuzz_check.h"
#include "reference_stream.h"

namespace {

using namespace capnsplice;
using capnsplice::fuzz::require;

enum class Hold { none, all, every_other };

struct Settings {
  ReceiverOptions options;
  Hold hold = Hold::none;
};

Settings settings_from(std::uint8_t choice) {
  // Rings of a page or two: small inputs already wrap them and overflow them into
  // frames of their own.
  static constexpr std::size_t kRingBytes[] = {4 * KiB, 8 * KiB, 64 * KiB, 4 * KiB};
  static constexpr std::size_t kMaxMessageBytes[] = {256, 4 * KiB, 64 * KiB, 1 * MiB};
  static constexpr std::uint32_t kMaxSegments[] = {1, 3, 16, 512};
  static constexpr Hold kHold[] = {Hold::none, Hold::all, Hold::every_other, Hold::none};
  Settings settings;
  settings.options.buffer_bytes = kRingBytes[choice & 3];
  settings.options.limits.max_message_bytes = kMaxMessageBytes[(choice >> 2) & 3];
  settings.options.limits.max_segments = kMaxSegments[(choice >> 4) & 3];
  settings.options.spin_before_block = {};
  settings.hold = kHold[(choice >> 6) & 3];
  return settings;
}

/// One input: the receiver, the write end of its pipe, and what it must deliver.
class DeliveryRun {
 public:
  DeliveryRun(const Settings& settings, const std::uint8_t* stream, std::size_t size)
      : settings_(settings),
        stream_(stream),
        size_(size),
        expected_(fuzz::read_reference(stream, size, settings.options.limits)),
        receiver_(open_pipe(), settings.options, "fuzz") {}

  /// Writes the stream in pieces of the given sizes (cycled), taking what is ready after
  /// each; then closes the pipe and drains. Stops feeding at the first error.
  void run(const std::vector<std::size_t>& pieces) {
    std::size_t written = 0;
    for (std::size_t piece = 0; written < size_ && !error_; ++piece) {
      const std::size_t bytes = pieces.empty() ? size_ : pieces[piece % pieces.size()];
      written += write_piece(written, std::min(bytes, size_ - written));
      take_ready();
    }
    write_end_.reset();
    // After end of stream every call makes progress; a few more than the bytes left are
    // enough for a correct receiver.
    for (int attempt = 0; attempt < 64 && !error_; ++attempt) take_ready();
    require(error_.has_value(), "receiving ends with an error after end of stream");
    require(*error_ == expected_.end, "receiving ends with the reference's error");
    require(delivered_ == expected_.frames.size(), "every frame of the reference arrived");
  }

 private:
  UniqueFd open_pipe() {
    int fds[2];
    require(::pipe2(fds, O_CLOEXEC) == 0, "pipe2");
    // Non-blocking writes: a full pipe returns to the loop, which lets the receiver read.
    require(::fcntl(fds[1], F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK");
    write_end_.reset(fds[1]);
    return UniqueFd(fds[0]);
  }

  /// Writes `bytes` from `offset`, letting the receiver read whenever the pipe is full.
  std::size_t write_piece(std::size_t offset, std::size_t bytes) {
    std::size_t done = 0;
    for (int stalls = 0; done < bytes && !error_;) {
      const ssize_t written = ::write(write_end_.get(), stream_ + offset + done, bytes - done);
      if (written > 0) {
        done += static_cast<std::size_t>(written);
        stalls = 0;
        continue;
      }
      require(written < 0 && errno == EAGAIN, "write into the pipe");
      require(++stalls < 64, "the receiver stopped reading a full pipe");
      take_ready();
    }
    return done;
  }

  /// Takes every message that is ready now, checking each, until none or an error.
  void take_ready() {
    while (!error_) {
      const bool promised = receiver_.has_buffered_message();
      std::optional<ReceivedMessage> message;
      try {
        message = receiver_.try_receive();
      } catch (const Error& error) {
        error_ = error.code();
        return;
      }
      require(message.has_value() || !promised, "has_buffered_message() kept its promise");
      if (!message) {
        // A clean end of stream is an empty result with at_end(), not an exception.
        if (receiver_.at_end()) error_ = ErrorCode::PeerClosed;
        return;
      }
      check(*message);
      if (settings_.hold == Hold::all ||
          (settings_.hold == Hold::every_other && delivered_ % 2 == 0)) {
        held_.push_back(std::move(*message));
      }
    }
  }

  void check(ReceivedMessage& message) {
    require(delivered_ < expected_.frames.size(), "no message beyond the reference's frames");
    const fuzz::ExpectedFrame& frame = expected_.frames[delivered_++];
    require(message.frame_bytes() == frame.bytes, "the frame has the reference's size");
    const std::uint8_t* at = stream_ + frame.offset;
    const auto segments = message.segments();
    require(segments.size() == fuzz::load_u32(at) + 1, "the frame has the reference's segments");
    at += segment_table_bytes(segments.size());
    for (const auto& segment : segments) {
      const std::size_t bytes = segment.size() * sizeof(capnp::word);
      require(std::memcmp(segment.begin(), at, bytes) == 0, "segment bytes arrive unchanged");
      at += bytes;
    }
    require(at == stream_ + frame.offset + frame.bytes, "segments cover the frame");
    read_content(message);
  }

  static void read_content(ReceivedMessage& message) {
    try {
      capnp::AnyPointer::Reader root = message.reader().getRoot<capnp::AnyPointer>();
      static_cast<void>(root.targetSize());  // walks every object, within the limits
      if (root.isStruct()) {
        auto object = root.getAs<capnp::AnyStruct>();
        static_cast<void>(object.getDataSection());
        for (capnp::AnyPointer::Reader field : object.getPointerSection()) {
          if (field.isList()) static_cast<void>(field.getAs<capnp::AnyList>().size());
        }
      }
      static_cast<void>(message.reader().isCanonical());
    } catch (const kj::Exception&) {
      // Bad content is Cap'n Proto's to report, and it did.
    }
  }

  const Settings settings_;
  const std::uint8_t* const stream_;
  const std::size_t size_;
  const fuzz::ExpectedStream expected_;
  UniqueFd write_end_;
  Receiver receiver_;
  std::vector<ReceivedMessage> held_;
  std::size_t delivered_ = 0;
  std::optional<ErrorCode> error_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const Settings settings = settings_from(data[0]);
  const std::size_t piece_count = data[1];
  const std::size_t table_end = 2 + 2 * piece_count;
  if (size < table_end) return 0;
  std::vector<std::size_t> pieces;
  for (std::size_t i = 0; i < piece_count; ++i) {
    const std::size_t bytes = data[2 + 2 * i] | std::size_t{data[3 + 2 * i]} << 8;
    pieces.push_back(bytes == 0 ? 1 : bytes);
  }
  DeliveryRun run(settings, data + table_end, size - table_end);
  run.run(pieces);
  return 0;
}
