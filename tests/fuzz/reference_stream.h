// The fuzz oracle for message delivery: an independent, whole-stream reading of Cap'n
// Proto stream framing under ReceiveLimits, as the receiver documents it.
//
// The receiver sees the same bytes in arbitrary pieces, in a ring that wraps and in
// buffers of their own; whatever the pieces, it must deliver exactly these frames and
// then end with exactly this error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "capnsplice/error.h"
#include "capnsplice/frame.h"
#include "capnsplice/options.h"

namespace capnsplice::fuzz {

struct ExpectedFrame {
  std::size_t offset = 0;  ///< in the stream
  std::size_t bytes = 0;   ///< segment table included
};

struct ExpectedStream {
  std::vector<ExpectedFrame> frames;
  /// How receiving ends after the frames: PeerClosed (clean end), TruncatedMessage,
  /// MalformedFrame or MessageTooLarge.
  ErrorCode end = ErrorCode::PeerClosed;
};

inline std::uint64_t load_u32(const std::uint8_t* at) {
  std::uint32_t value;
  std::memcpy(&value, at, sizeof value);
  return value;
}

/// What the frame at the start of the `left` bytes at `at` is: whole and valid (`end`
/// empty, `bytes` its size), or where receiving ends. Limits are checked in the order
/// the bytes arrive, so a refusal the first word proves wins over a truncation after it.
struct FrameVerdict {
  std::uint64_t bytes = 0;
  std::optional<ErrorCode> end;
};

inline FrameVerdict judge_frame(const std::uint8_t* at, std::size_t left,
                                const ReceiveLimits& limits) {
  if (left == 0) return {0, ErrorCode::PeerClosed};
  if (left < 8) return {0, ErrorCode::TruncatedMessage};
  const std::uint64_t count = load_u32(at) + 1;
  if (count > limits.max_segments) return {0, ErrorCode::MalformedFrame};
  const std::uint64_t first_words = load_u32(at + 4);
  if (first_words == 0) return {0, ErrorCode::MalformedFrame};
  const std::uint64_t header = segment_table_bytes(count);
  std::uint64_t total = header + 8 * first_words;
  if (total > limits.max_message_bytes) return {0, ErrorCode::MessageTooLarge};
  if (left < header) return {0, ErrorCode::TruncatedMessage};
  for (std::uint64_t i = 1; i < count; ++i) {
    total += 8 * load_u32(at + 4 + 4 * i);
    if (total > limits.max_message_bytes) return {0, ErrorCode::MessageTooLarge};
  }
  if (left < total) return {0, ErrorCode::TruncatedMessage};
  return {total, std::nullopt};
}

inline ExpectedStream read_reference(const std::uint8_t* stream, std::size_t size,
                                     const ReceiveLimits& limits) {
  ExpectedStream expected;
  std::size_t offset = 0;
  for (;;) {
    const FrameVerdict verdict = judge_frame(stream + offset, size - offset, limits);
    if (verdict.end) {
      expected.end = *verdict.end;
      return expected;
    }
    expected.frames.push_back({offset, static_cast<std::size_t>(verdict.bytes)});
    offset += static_cast<std::size_t>(verdict.bytes);
  }
}

}  // namespace capnsplice::fuzz
