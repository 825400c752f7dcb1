#include "payload.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace bench {

namespace {

std::byte seq_byte(std::uint64_t seq) { return static_cast<std::byte>(seq & 0xff); }

/// Checks the first, middle and last byte (from `from` on) against the seq's low byte.
void check_sampled_bytes(std::span<const std::byte> payload, std::size_t from, std::uint64_t seq) {
  const std::byte want = seq_byte(seq);
  const std::size_t samples[] = {from, from + (payload.size() - from) / 2, payload.size() - 1};
  for (std::size_t at : samples) {
    if (at >= from && at < payload.size() && payload[at] != want) {
      throw std::runtime_error("payload of message " + std::to_string(seq) +
                               " is damaged at byte " + std::to_string(at));
    }
  }
}

}  // namespace

void fill_chunk(capnsplice::demo::Chunk::Builder chunk, std::uint64_t seq,
                std::size_t payload_bytes) {
  chunk.setSeq(seq);
  auto payload = chunk.initPayload(static_cast<unsigned>(payload_bytes));
  std::memset(payload.begin(), static_cast<int>(seq & 0xff), payload.size());
}

std::uint64_t check_chunk(capnsplice::demo::Chunk::Reader chunk) {
  const std::uint64_t seq = chunk.getSeq();
  auto payload = chunk.getPayload();
  check_sampled_bytes(std::as_bytes(std::span(payload.begin(), payload.size())), 0, seq);
  return seq;
}

void fill_raw_payload(std::span<std::byte> payload, std::uint64_t seq) {
  std::memset(payload.data(), static_cast<int>(seq & 0xff), payload.size());
  std::memcpy(payload.data(), &seq, sizeof seq);
}

std::uint64_t check_raw_payload(std::span<const std::byte> payload) {
  std::uint64_t seq;
  std::memcpy(&seq, payload.data(), sizeof seq);
  check_sampled_bytes(payload, sizeof seq, seq);
  return seq;
}

std::vector<std::size_t> bulk_part_sizes(std::size_t payload_bytes) {
  std::vector<std::size_t> parts;
  for (std::size_t left = payload_bytes; left > 0; left -= parts.back()) {
    parts.push_back(std::min(left, kBulkPartBytes));
  }
  return parts;
}

void fill_part(kj::ArrayPtr<kj::byte> part, std::uint64_t seq) {
  std::memset(part.begin(), static_cast<int>(seq & 0xff), part.size());
}

std::uint64_t bulk_arrived(capnsplice::demo::Bulk::Reader bulk) {
  auto parts = bulk.getParts();
  if (parts.size() != 0 && parts[parts.size() - 1].size() != 0) {
    const volatile kj::byte first = parts[parts.size() - 1][0];
    static_cast<void>(first);
  }
  return bulk.getSeq();
}

std::uint64_t check_bulk(capnsplice::demo::Bulk::Reader bulk) {
  const std::uint64_t seq = bulk.getSeq();
  for (auto part : bulk.getParts()) {
    check_sampled_bytes(std::as_bytes(std::span(part.begin(), part.size())), 0, seq);
  }
  return seq;
}

capnp::ReaderOptions bulk_reader_options() {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = UINT64_MAX;  // the bench trusts its own peers
  return options;
}

capnp::ReaderOptions bench_reader_options() {
  capnp::ReaderOptions options;
  // Reading a Chunk touches the payload once; allow a few passes over the largest one.
  options.traversalLimitInWords = 4 * kMaxPayloadBytes / sizeof(capnp::word);
  return options;
}

std::size_t max_frame_bytes(std::size_t payload_bytes) {
  // A MallocMessageBuilder frame: segment table for up to two segments (16 bytes),
  // root pointer and Chunk struct (24 bytes), payload padded to a word (7 bytes).
  return payload_bytes + 64;
}

}  // namespace bench
