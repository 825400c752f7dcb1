// The front of a frame whose message carries descriptors (internal).
//
// Such a message goes on the pipe as a marked frame (frame.h): segment 0 empty, segment
// 1 a wire::Attachment naming the control-link record that holds the descriptors
// (descriptor_inbox.h), and the message's own segments from segment 2 on. Everything in
// front of the message's segment 0 is written as one block where the plain segment
// table would go:
//
//   [ n+1 | 0 | 4 | size(seg 0) .. size(seg n-1) | pad ][ Attachment: 4 words ][ seg 0 ]...
//     <------------- segment table of n+2 ----------->  <------- segment 1 ---->
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include <capnp/common.h>
#include <kj/common.h>

namespace capnsplice::detail {

/// What an Attachment says.
struct AttachmentInfo {
  std::uint64_t sequence = 0;
  std::uint32_t count = 0;
};

/// Words of the Attachment segment: its root pointer and a struct of 3 data words.
inline constexpr std::size_t kAttachmentWords = 4;

/// Bytes in front of segment 0 of a message of `segments` segments that carries
/// descriptors: the segment table, then the Attachment segment.
constexpr std::size_t attached_prefix_bytes(std::size_t segments) noexcept {
  return ((segments + 2 + 2) / 2) * 8 + kAttachmentWords * 8;
}

/// Writes that block for `segments`, naming record `sequence` of `count` descriptors.
void write_attached_prefix(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                           std::uint64_t sequence, std::uint32_t count, std::byte* out);


/// Bytes in front of segment 0: the plain segment table, or with `attachment` that
/// table's larger form and the Attachment segment.
std::size_t frame_head_bytes(std::size_t segments, const std::optional<AttachmentInfo>& attachment);

/// Writes those bytes (frame_head_bytes() of them) into `out`.
void write_frame_head(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                      const std::optional<AttachmentInfo>& attachment, std::byte* out);

/// Reads segment 1 of a marked frame of 3 or more segments. Throws ProtocolViolation
/// (naming `context`) when it is no Attachment.
AttachmentInfo read_attachment(kj::ArrayPtr<const capnp::word> segment, std::string_view context);

}  // namespace capnsplice::detail
