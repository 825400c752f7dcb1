// bench/payload.h — the work every transport does per message, identical for all.
//
// The sender fills the whole payload with the low byte of the sequence number; the
// receiver checks three bytes of it (first, middle, last) and the sequence number.
// That is one full pass over the bytes on the sending side and a token read on the
// receiving side, the same for every transport, so differences are the transport's.
//
// Transports without a message format (raw-pipe, memcpy) carry the sequence number
// in the payload's first 8 bytes instead of a Chunk field.
#pragma once

#include <capnp/message.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "demo.capnp.h"

namespace bench {

/// The sequence number of the message that ends a stream or a round-trip run.
inline constexpr std::uint64_t kEndOfRun = std::numeric_limits<std::uint64_t>::max();

/// Sets the seq and a payload of `payload_bytes` filled with the seq's low byte.
void fill_chunk(capnsplice::demo::Chunk::Builder chunk, std::uint64_t seq,
                std::size_t payload_bytes);

/// Checks the payload against the chunk's seq; returns the seq. Throws on a mismatch.
std::uint64_t check_chunk(capnsplice::demo::Chunk::Reader chunk);

/// Large messages (Cap'n Proto caps one Data at 2^29 - 1 bytes): parts of at most this.
inline constexpr std::size_t kBulkPartBytes = 256 * 1024 * 1024;

/// The sizes of the parts of a Bulk message of `payload_bytes`.
std::vector<std::size_t> bulk_part_sizes(std::size_t payload_bytes);

/// The seq of a Bulk, once the whole message is in hand: it touches the first byte of
/// the last part, which makes a lazy reader (capnp's InputStreamMessageReader reads
/// segments only when asked) take in every segment first.
std::uint64_t bulk_arrived(capnsplice::demo::Bulk::Reader bulk);

/// Checks a Bulk's parts like check_chunk(); returns the seq. Throws on a mismatch.
std::uint64_t check_bulk(capnsplice::demo::Bulk::Reader bulk);

/// Fills one part of a Bulk message with the seq's low byte.
void fill_part(kj::ArrayPtr<kj::byte> part, std::uint64_t seq);

/// Reader limits for the largest Bulk message (plain Cap'n Proto peers).
capnp::ReaderOptions bulk_reader_options();

/// For formatless transports: fills `payload` and stamps `seq` into its first 8 bytes.
void fill_raw_payload(std::span<std::byte> payload, std::uint64_t seq);

/// For formatless transports: reads the stamped seq, checks the bytes; returns the seq.
std::uint64_t check_raw_payload(std::span<const std::byte> payload);

/// Reader limits large enough for the largest payload a run may use (plain Cap'n Proto
/// peers; capnsplice sets its own from ChannelOptions).
capnp::ReaderOptions bench_reader_options();

/// The largest payload a run may use, and the most bytes a frame of it can take.
inline constexpr std::size_t kMaxPayloadBytes = 64 * 1024 * 1024;
std::size_t max_frame_bytes(std::size_t payload_bytes);

}  // namespace bench
