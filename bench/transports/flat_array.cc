#include "transports/flat_array.h"

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <algorithm>
#include <stdexcept>

#include "payload.h"

namespace bench {

std::size_t queue_depth(std::size_t frame_bytes, std::size_t fewest, std::size_t most) {
  return std::clamp<std::size_t>(4 * 1024 * 1024 / frame_bytes, fewest, most);
}

kj::Array<capnp::word> build_flat_chunk(std::uint64_t seq, std::size_t payload_bytes) {
  capnp::MallocMessageBuilder message;
  fill_chunk(message.initRoot<capnsplice::demo::Chunk>(), seq, payload_bytes);
  return capnp::messageToFlatArray(message);
}

std::uint64_t check_flat_chunk(kj::ArrayPtr<const capnp::word> words) {
  capnp::FlatArrayMessageReader message(words, bench_reader_options());
  return check_chunk(message.getRoot<capnsplice::demo::Chunk>());
}

kj::ArrayPtr<capnp::word> AlignedBuffer::reserve(std::size_t bytes) {
  const std::size_t words = (bytes + sizeof(capnp::word) - 1) / sizeof(capnp::word);
  if (words_.size() < words) words_ = kj::heapArray<capnp::word>(words);
  return words_.asPtr();
}

kj::ArrayPtr<const capnp::word> AlignedBuffer::words(std::size_t bytes) const {
  if (bytes % sizeof(capnp::word) != 0 || bytes / sizeof(capnp::word) > words_.size()) {
    throw std::runtime_error("received " + std::to_string(bytes) +
                             " bytes: not a whole Cap'n Proto flat array");
  }
  return words_.slice(0, bytes / sizeof(capnp::word)).asConst();
}

}  // namespace bench
