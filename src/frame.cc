#include "capnsplice/frame.h"

#include <cstring>
#include <string>

#include "capnsplice/error.h"

namespace capnsplice {

namespace {

std::uint32_t load_u32(const std::byte* at) noexcept {
  std::uint32_t value;
  std::memcpy(&value, at, sizeof value);
  return value;  // x86-64 and aarch64 Linux are little-endian, as the wire is.
}

[[noreturn]] void throw_too_large(std::string_view context, std::uint64_t bytes,
                                  std::size_t limit, bool at_least) {
  std::string detail = "frame of ";
  if (at_least) detail += "at least ";
  detail += std::to_string(bytes) + " bytes exceeds the limit of " + std::to_string(limit) +
            " bytes";
  throw Error(ErrorCode::MessageTooLarge, context, detail);
}

}  // namespace

FrameProbe probe_frame(const std::byte* frame, std::size_t available,
                       const ReceiveLimits& limits, std::string_view context,
                       MarkedFrames marked) {
  FrameProbe probe;
  if (available < 8) {
    probe.bytes_needed = 8;
    return probe;
  }
  // Widen before adding one: 0xFFFFFFFF declares 2^32 segments, not zero.
  const std::uint64_t count = std::uint64_t{load_u32(frame)} + 1;
  if (count > limits.max_segments) {
    throw Error(ErrorCode::MalformedFrame, context,
                "frame declares " + std::to_string(count) + " segments, the limit is " +
                    std::to_string(limits.max_segments));
  }
  probe.segment_count = static_cast<std::uint32_t>(count);
  probe.header_bytes = segment_table_bytes(count);

  const std::uint64_t first_segment_words = load_u32(frame + 4);
  if (first_segment_words == 0) {
    if (marked == MarkedFrames::refused) {
      throw Error(ErrorCode::MalformedFrame, context,
                  "first segment is empty: a message needs at least its root pointer");
    }
    if (count < 2) {
      throw Error(ErrorCode::MalformedFrame, context,
                  "a marked frame (empty first segment) has 1 segment; capnsplice's control "
                  "frames have 2 or more");
    }
    probe.marked = true;
  }
  // Checked before the rest of the table has arrived, so a giant first segment is
  // refused after 8 bytes.
  std::uint64_t total = probe.header_bytes + first_segment_words * 8;
  if (total > limits.max_message_bytes) {
    throw_too_large(context, total, limits.max_message_bytes, count > 1);
  }
  if (available < probe.header_bytes) {
    probe.bytes_needed = probe.header_bytes;
    return probe;
  }
  // At most 2^32 segments of at most 2^32-1 words each: the sum fits in 64 bits,
  // and the limit is checked after every addition anyway.
  for (std::uint64_t i = 1; i < count; ++i) {
    total += std::uint64_t{load_u32(frame + 4 + 4 * i)} * 8;
    if (total > limits.max_message_bytes) {
      throw_too_large(context, total, limits.max_message_bytes, i + 1 < count);
    }
  }
  probe.header_complete = true;
  probe.bytes_needed = static_cast<std::size_t>(total);
  return probe;
}

void frame_segments(const std::byte* frame, const FrameProbe& probe,
                    kj::ArrayPtr<const capnp::word>* segments) {
  const auto* at = reinterpret_cast<const capnp::word*>(frame + probe.header_bytes);
  for (std::uint32_t i = 0; i < probe.segment_count; ++i) {
    const std::size_t words = load_u32(frame + 4 + 4 * std::size_t{i});
    segments[i] = kj::arrayPtr(at, words);
    at += words;
  }
}

void write_segment_table(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                         std::byte* out) noexcept {
  auto store = [out](std::size_t index, std::uint32_t value) {
    std::memcpy(out + 4 * index, &value, sizeof value);
  };
  store(0, static_cast<std::uint32_t>(segments.size() - 1));
  for (std::size_t i = 0; i < segments.size(); ++i) {
    store(i + 1, static_cast<std::uint32_t>(segments[i].size()));
  }
  if ((segments.size() + 1) % 2 != 0) {
    store(segments.size() + 1, 0);  // padding word
  }
}

}  // namespace capnsplice
