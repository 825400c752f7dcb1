// The descriptor of a shared-memory message (internal): what travels on the pipe while
// the message itself stays in the sender's arena (shared_path.h). Built here; read and
// checked by SharedReceiver (shared_receiver.cc), against the schema in
// schemas/capnsplice.capnp (wire::SharedMessage).
#pragma once

#include <array>
#include <cstddef>
#include <optional>

#include <capnp/message.h>

namespace capnsplice::detail {

/// Words of a SharedMessage descriptor listing `segments` segments: the root pointer,
/// the struct (3 data words, 1 pointer), the list's tag and 2 words per segment.
constexpr std::size_t descriptor_words(std::size_t segments) noexcept {
  return 6 + 2 * segments;
}

/// Memory for one SharedMessage descriptor of a message of `segments` segments: a
/// single segment of exactly the size it needs, on the stack up to kInlineSegments.
/// It goes on the pipe as a marked frame (frame.h): an empty segment 0, then the
/// descriptor, which no ordinary message can look like. Its bytes must be copied into
/// the pipe, never spliced.
class DescriptorBuilder {
 public:
  static constexpr std::size_t kInlineSegments = 32;

  explicit DescriptorBuilder(std::size_t segments);
  capnp::MessageBuilder& message() noexcept { return *builder_; }

  /// The frame's segments, once the descriptor is built: empty, then the descriptor.
  kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> marked_frame();

 private:
  std::array<capnp::word, descriptor_words(kInlineSegments)> inline_{};  // zeroed, as capnp needs
  kj::Array<capnp::word> heap_;  // beyond kInlineSegments
  std::optional<capnp::MallocMessageBuilder> builder_;
  std::array<kj::ArrayPtr<const capnp::word>, 2> frame_;
};

}  // namespace capnsplice::detail
