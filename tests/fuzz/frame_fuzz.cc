// libFuzzer target: the frame parser (probe_frame, frame_segments) on arbitrary bytes.
//
// Input: one byte choosing the ReceiveLimits, then the first bytes of a frame.
// Checked, besides "no crash, no undefined behaviour, no leak":
//  * the only errors are MalformedFrame and MessageTooLarge;
//  * an incomplete header asks for more bytes than it was given;
//  * an accepted frame respects every limit, and its segment views lie back to back
//    inside it, ending exactly at its end;
//  * the table write_segment_table() makes of those views is the table that was read.
#include <capnp/common.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "capnsplice/error.h"
#include "capnsplice/frame.h"
#include "fuzz_check.h"

namespace {

using namespace capnsplice;
using capnsplice::fuzz::require;

ReceiveLimits limits_from(std::uint8_t choice) {
  static constexpr std::uint32_t kSegments[] = {1, 2, 5, 512};
  static constexpr std::size_t kBytes[] = {64, 4 * KiB, 64 * MiB, ~std::size_t{0} >> 1};
  ReceiveLimits limits;
  limits.max_segments = kSegments[choice & 3];
  limits.max_message_bytes = kBytes[(choice >> 2) & 3];
  return limits;
}

void check_accepted(const std::byte* frame, std::size_t available, const FrameProbe& probe,
                    const ReceiveLimits& limits) {
  require(probe.segment_count >= 1 && probe.segment_count <= limits.max_segments,
          "accepted segment count within the limit");
  require(probe.header_bytes == segment_table_bytes(probe.segment_count), "header size");
  require(probe.bytes_needed >= probe.header_bytes + sizeof(capnp::word),
          "a frame holds at least its root pointer");
  require(probe.bytes_needed <= limits.max_message_bytes, "accepted size within the limit");
  if (available < probe.bytes_needed) return;

  std::vector<kj::ArrayPtr<const capnp::word>> segments(probe.segment_count);
  frame_segments(frame, probe, segments.data());
  const auto* next = reinterpret_cast<const capnp::word*>(frame + probe.header_bytes);
  for (const auto& segment : segments) {
    require(segment.begin() == next, "segments lie back to back");
    next += segment.size();
  }
  require(reinterpret_cast<const std::byte*>(next) == frame + probe.bytes_needed,
          "the segments end where the frame ends");

  std::vector<std::byte> table(probe.header_bytes);
  write_segment_table(kj::arrayPtr(segments.data(), segments.size()), table.data());
  // The padding word (if any) is not compared: a peer may put anything there.
  const std::size_t meaningful = 4 * (std::size_t{probe.segment_count} + 1);
  require(std::memcmp(table.data(), frame, meaningful) == 0, "the table round-trips");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const ReceiveLimits limits = limits_from(data[0]);
  const std::size_t available = size - 1;
  // The receiver parses frames 8-byte aligned: copy into words.
  std::vector<capnp::word> storage(available / sizeof(capnp::word) + 1);
  auto* frame = reinterpret_cast<std::byte*>(storage.data());
  std::memcpy(frame, data + 1, available);

  FrameProbe probe;
  try {
    probe = probe_frame(frame, available, limits, "fuzz");
  } catch (const Error& error) {
    require(error.code() == ErrorCode::MalformedFrame || error.code() == ErrorCode::MessageTooLarge,
            "the parser fails only with MalformedFrame or MessageTooLarge");
    return 0;
  }
  if (!probe.header_complete) {
    require(probe.bytes_needed > available, "an incomplete header asks for more bytes");
    return 0;
  }
  check_accepted(frame, available, probe, limits);
  return 0;
}
