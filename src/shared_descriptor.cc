#include "shared_descriptor.h"

#include <cstring>

namespace capnsplice::detail {

DescriptorBuilder::DescriptorBuilder(std::size_t segments) {
  kj::ArrayPtr<capnp::word> memory = kj::arrayPtr(inline_.data(), inline_.size());
  if (segments > kInlineSegments) {
    heap_ = kj::heapArray<capnp::word>(descriptor_words(segments));
    std::memset(heap_.begin(), 0, heap_.size() * sizeof(capnp::word));
    memory = heap_;
  }
  builder_.emplace(memory);
}

kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> DescriptorBuilder::marked_frame() {
  auto segments = builder_->getSegmentsForOutput();
  frame_[0] = kj::ArrayPtr<const capnp::word>();  // the mark: no root pointer
  frame_[1] = segments[0];
  return kj::arrayPtr(frame_.data(), frame_.size());
}

}  // namespace capnsplice::detail
