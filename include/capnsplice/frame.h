// capnsplice/frame.h — Cap'n Proto's standard stream framing, parsed as hostile input.
//
// One frame on the wire (all integers little-endian, sizes in 8-byte words):
//
//   +-----------------+----------------+----------------+-----+---------+
//   | segment_count-1 | size of seg 0  | size of seg 1  | ... | pad to 8|  segment table
//   |     uint32      |    uint32      |    uint32      |     |  bytes  |
//   +-----------------+----------------+----------------+-----+---------+
//   | segment 0 (size0 * 8 bytes) | segment 1 | ... | segment N-1       |  segments
//   +-----------------------------+-----------+-----+-------------------+
//
// This is exactly what capnp::writeMessage(), `capnp encode` and `capnp decode` use,
// and nothing is added to it: capnsplice peers and plain Cap'n Proto peers interoperate.
//
// probe_frame() checks every number in the table against the ReceiveLimits before
// the caller allocates or reads anything for the frame.
//
// A frame whose segment 0 is empty is not a Cap'n Proto message (segment 0 holds the
// root pointer, so every MessageBuilder writes at least one word there). capnsplice
// uses exactly that shape, and nothing else, to mark its own control frames (the
// descriptor of a shared-memory message: an empty segment 0, then the descriptor; a
// message that carries descriptors: an empty segment 0, its Attachment, then the
// message's segments): no ordinary message can look like one, whatever its bytes. Receivers refuse the
// shape unless they follow a capnsplice peer that announced what it marks that way.
#pragma once

#include <capnp/common.h>
#include <kj/common.h>

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "capnsplice/options.h"

namespace capnsplice {

/// What the first bytes of a frame say about it.
struct FrameProbe {
  /// False while fewer bytes than the segment table are available; then only
  /// `bytes_needed` is meaningful.
  bool header_complete = false;
  /// Bytes the caller must have (from the frame's start) to learn more or, once the
  /// header is complete, to have the whole frame.
  std::size_t bytes_needed = 0;
  /// Number of segments (valid once at least 8 bytes were seen).
  std::uint32_t segment_count = 0;
  /// Bytes of the segment table, padding included.
  std::size_t header_bytes = 0;
  /// Segment 0 is empty: a capnsplice control frame (only with MarkedFrames::accepted);
  /// of 2 segments a shared-memory descriptor, of more a message with descriptors.
  bool marked = false;
};

/// What a frame with an empty segment 0 (a marked frame) is to the caller.
enum class MarkedFrames {
  refused,   ///< malformed: a message needs its root pointer (plain Cap'n Proto peers)
  accepted,  ///< a capnsplice control frame, checked by the caller (2 or more segments)
};

/// Looks at `available` bytes at the start of a frame. Throws MalformedFrame (too many
/// segments, an empty first segment unless `marked` is accepted, a marked frame of
/// 1 segment) or MessageTooLarge (the sizes add up to more than
/// limits.max_message_bytes) as soon as the bytes seen prove it; `context` prefixes
/// the error text.
FrameProbe probe_frame(const std::byte* frame, std::size_t available,
                       const ReceiveLimits& limits, std::string_view context,
                       MarkedFrames marked = MarkedFrames::refused);

/// Fills `segments` (segment_count entries) with views of a complete, probed frame.
/// The frame must start 8-byte aligned.
void frame_segments(const std::byte* frame, const FrameProbe& probe,
                    kj::ArrayPtr<const capnp::word>* segments);

/// Bytes of the segment table of a message with `segment_count` segments.
constexpr std::size_t segment_table_bytes(std::size_t segment_count) noexcept {
  return ((segment_count + 2) / 2) * 8;
}

/// Writes the segment table for `segments` into `out` (segment_table_bytes() bytes).
void write_segment_table(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                         std::byte* out) noexcept;

}  // namespace capnsplice
