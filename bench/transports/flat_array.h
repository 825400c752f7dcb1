// bench/transports/flat_array.h — Cap'n Proto as one flat array of words, for
// transports that move opaque byte blobs (Boost message_queue, ZeroMQ).
#pragma once

#include <capnp/common.h>
#include <kj/array.h>

#include <cstddef>
#include <cstdint>

namespace bench {

/// How many messages of `frame_bytes` a queue may hold: about 4 MiB per direction, what
/// capnsplice's pipe and pool hold, within [fewest, most].
std::size_t queue_depth(std::size_t frame_bytes, std::size_t fewest, std::size_t most);

/// A Chunk built in a fresh MallocMessageBuilder and flattened with
/// capnp::messageToFlatArray(): what an application hands to a byte transport.
kj::Array<capnp::word> build_flat_chunk(std::uint64_t seq, std::size_t payload_bytes);

/// Opens a received flat array with capnp::FlatArrayMessageReader and checks the Chunk;
/// returns its seq.
std::uint64_t check_flat_chunk(kj::ArrayPtr<const capnp::word> words);

/// A word-aligned receive buffer that grows to the largest message seen.
class AlignedBuffer {
 public:
  /// At least `bytes` bytes, 8-byte aligned; contents are not kept when it grows.
  kj::ArrayPtr<capnp::word> reserve(std::size_t bytes);
  /// The first `bytes` bytes as words (for FlatArrayMessageReader).
  kj::ArrayPtr<const capnp::word> words(std::size_t bytes) const;

 private:
  kj::Array<capnp::word> words_;
};

}  // namespace bench
