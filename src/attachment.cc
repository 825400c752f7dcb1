#include "attachment.h"

#include <capnp/message.h>

#include <array>
#include <cstring>
#include <string>

#include "capnsplice.capnp.h"
#include "capnsplice/error.h"
#include "capnsplice/frame.h"

namespace capnsplice::detail {

void write_attached_prefix(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                           std::uint64_t sequence, std::uint32_t count, std::byte* out) {
  std::array<capnp::word, kAttachmentWords> words{};  // zeroed, as capnp needs
  capnp::MallocMessageBuilder builder(kj::arrayPtr(words.data(), words.size()));
  auto attachment = builder.initRoot<wire::Attachment>();
  attachment.setMagic(wire::Attachment::EXPECTED_MAGIC);
  attachment.setSequence(sequence);
  attachment.setCount(count);
  KJ_ASSERT(builder.getSegmentsForOutput().size() == 1 &&
            builder.getSegmentsForOutput()[0].size() == kAttachmentWords);

  auto store = [out](std::size_t index, std::uint32_t value) {
    std::memcpy(out + 4 * index, &value, sizeof value);
  };
  const std::size_t total = segments.size() + 2;
  store(0, static_cast<std::uint32_t>(total - 1));
  store(1, 0);  // segment 0 empty: the mark
  store(2, static_cast<std::uint32_t>(kAttachmentWords));
  for (std::size_t i = 0; i < segments.size(); ++i) {
    store(i + 3, static_cast<std::uint32_t>(segments[i].size()));
  }
  const std::size_t table_bytes = segment_table_bytes(total);
  if ((total + 1) % 2 != 0) store(total + 1, 0);  // padding word
  std::memcpy(out + table_bytes, words.data(), kAttachmentWords * sizeof(capnp::word));
}

std::size_t frame_head_bytes(std::size_t segments, const std::optional<AttachmentInfo>& attachment) {
  return attachment ? attached_prefix_bytes(segments) : segment_table_bytes(segments);
}

void write_frame_head(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                      const std::optional<AttachmentInfo>& attachment, std::byte* out) {
  if (attachment) {
    write_attached_prefix(segments, attachment->sequence, attachment->count, out);
  } else {
    write_segment_table(segments, out);
  }
}

AttachmentInfo read_attachment(kj::ArrayPtr<const capnp::word> segment, std::string_view context) {
  try {
    const kj::ArrayPtr<const capnp::word> segments[] = {segment};
    capnp::SegmentArrayMessageReader reader(kj::arrayPtr(segments, 1));
    auto attachment = reader.getRoot<wire::Attachment>();
    if (attachment.getMagic() != wire::Attachment::EXPECTED_MAGIC) {
      throw Error(ErrorCode::ProtocolViolation, context,
                  "a marked frame of 3 or more segments has no Attachment in segment 1");
    }
    return {attachment.getSequence(), attachment.getCount()};
  } catch (const kj::Exception& exception) {
    throw Error(ErrorCode::ProtocolViolation, context,
                "a marked frame's Attachment cannot be read: " +
                    std::string(exception.getDescription().cStr()));
  }
}

}  // namespace capnsplice::detail
