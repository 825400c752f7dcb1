// The frame parser treats headers as hostile: every limit is checked from the bytes seen.
#include <catch2/catch.hpp>

#include <cstring>
#include <optional>
#include <vector>

#include "capnsplice/error.h"
#include "capnsplice/frame.h"

namespace {

using capnsplice::ErrorCode;
using capnsplice::FrameProbe;
using capnsplice::ReceiveLimits;

/// A segment table: count-1 then sizes (words), padded to 8 bytes, followed by
/// `body_words` zero words.
std::vector<std::byte> frame(std::vector<std::uint32_t> sizes, std::size_t body_words = 0,
                             std::optional<std::uint32_t> declared_count_minus_one = {}) {
  const std::uint32_t count_field =
      declared_count_minus_one.value_or(static_cast<std::uint32_t>(sizes.size() - 1));
  std::vector<std::uint32_t> words{count_field};
  words.insert(words.end(), sizes.begin(), sizes.end());
  if (words.size() % 2 != 0) words.push_back(0);
  std::vector<std::byte> bytes(words.size() * 4 + body_words * 8);
  std::memcpy(bytes.data(), words.data(), words.size() * 4);
  return bytes;
}

FrameProbe probe(const std::vector<std::byte>& bytes, ReceiveLimits limits = {}) {
  return capnsplice::probe_frame(bytes.data(), bytes.size(), limits, "test");
}

ErrorCode error_of(const std::vector<std::byte>& bytes, ReceiveLimits limits = {}) {
  try {
    probe(bytes, limits);
  } catch (const capnsplice::Error& error) {
    return error.code();
  }
  FAIL("probe_frame accepted the frame");
  return ErrorCode::SystemError;
}

}  // namespace

TEST_CASE("a frame shorter than one word asks for the first word") {
  auto bytes = frame({1}, 1);
  FrameProbe result = capnsplice::probe_frame(bytes.data(), 5, {}, "test");
  CHECK_FALSE(result.header_complete);
  CHECK(result.bytes_needed == 8);
}

TEST_CASE("a single-segment frame needs its header plus its words") {
  FrameProbe result = probe(frame({3}, 3));
  CHECK(result.header_complete);
  CHECK(result.segment_count == 1);
  CHECK(result.header_bytes == 8);
  CHECK(result.bytes_needed == 8 + 3 * 8);
}

TEST_CASE("a multi-segment table is padded to eight bytes") {
  auto bytes = frame({1, 2}, 3);
  FrameProbe partial = capnsplice::probe_frame(bytes.data(), 8, {}, "test");
  CHECK_FALSE(partial.header_complete);
  CHECK(partial.bytes_needed == 16);  // 4 + 2*4 = 12, padded to 16
  FrameProbe full = probe(bytes);
  CHECK(full.header_complete);
  CHECK(full.bytes_needed == 16 + 3 * 8);
}

TEST_CASE("segment views point at consecutive words after the table") {
  auto bytes = frame({1, 2, 1}, 4);
  FrameProbe result = probe(bytes);
  kj::ArrayPtr<const capnp::word> segments[3];
  capnsplice::frame_segments(bytes.data(), result, segments);
  auto* first = reinterpret_cast<const capnp::word*>(bytes.data() + 16);
  CHECK(segments[0].begin() == first);
  CHECK(segments[1].begin() == first + 1);
  CHECK(segments[2].begin() == first + 3);
  CHECK(segments[2].size() == 1);
}

TEST_CASE("a segment count of 2^32 fails with malformed frame, not an overflow to zero") {
  auto bytes = frame({1}, 0, 0xFFFFFFFFu);
  CHECK(error_of(bytes) == ErrorCode::MalformedFrame);
  try {
    probe(bytes);
  } catch (const capnsplice::Error& error) {
    CHECK_THAT(error.what(), Catch::Contains("4294967296 segments"));
    CHECK_THAT(error.what(), Catch::Contains("limit is 512"));
  }
}

TEST_CASE("more segments than the configured limit fail with malformed frame") {
  ReceiveLimits limits;
  limits.max_segments = 4;
  CHECK(error_of(frame({1, 1, 1, 1, 1}), limits) == ErrorCode::MalformedFrame);
  CHECK_NOTHROW(probe(frame({1, 1, 1, 1}), limits));
}

TEST_CASE("an empty first segment fails with malformed frame") {
  CHECK(error_of(frame({0}, 0)) == ErrorCode::MalformedFrame);
  CHECK(error_of(frame({0, 4}, 4)) == ErrorCode::MalformedFrame);  // refused by default
}

TEST_CASE("a marked frame (empty first segment) is accepted only with two segments or more, "
          "and only when asked for") {
  const auto marked = frame({0, 4}, 4);
  const FrameProbe probe = capnsplice::probe_frame(marked.data(), marked.size(), {}, "test",
                                                   capnsplice::MarkedFrames::accepted);
  CHECK(probe.marked);
  CHECK(probe.header_complete);
  CHECK(probe.segment_count == 2);
  CHECK(probe.bytes_needed == marked.size());
  CHECK_THROWS_AS(capnsplice::probe_frame(frame({0}, 0).data(), 8, {}, "test",
                                          capnsplice::MarkedFrames::accepted),
                  capnsplice::Error);
  // Three or more: a message with descriptors (its Attachment, then its segments).
  const auto with_descriptors = frame({0, 4, 4}, 8);
  const FrameProbe attached = capnsplice::probe_frame(
      with_descriptors.data(), with_descriptors.size(), {}, "test",
      capnsplice::MarkedFrames::accepted);
  CHECK(attached.marked);
  CHECK(attached.segment_count == 3);
  CHECK_THROWS_AS(capnsplice::probe_frame(with_descriptors.data(), with_descriptors.size(), {},
                                          "test", capnsplice::MarkedFrames::refused),
                  capnsplice::Error);
  const auto ordinary = frame({4, 0}, 4);  // an empty segment that is not the first
  CHECK_FALSE(capnsplice::probe_frame(ordinary.data(), ordinary.size(), {}, "test",
                                      capnsplice::MarkedFrames::accepted)
                  .marked);
}

TEST_CASE("a giant first segment is refused after the first word") {
  auto bytes = frame({0xFFFFFFFFu});
  try {
    capnsplice::probe_frame(bytes.data(), 8, {}, "channel 'x': receive");
    FAIL("accepted");
  } catch (const capnsplice::Error& error) {
    CHECK(error.code() == ErrorCode::MessageTooLarge);
    CHECK_THAT(error.what(), Catch::Contains("34359738368 bytes exceeds the limit of 67108864"));
    CHECK_THAT(error.what(), Catch::StartsWith("channel 'x': receive: "));
  }
}

TEST_CASE("sizes whose sum exceeds the limit fail with message too large") {
  ReceiveLimits limits;
  limits.max_message_bytes = 1024;
  // Each size alone is fine; together they are not.
  CHECK(error_of(frame({64, 64, 64}), limits) == ErrorCode::MessageTooLarge);
}

TEST_CASE("sizes that would overflow 32 bits when summed are still caught") {
  // 0xFFFFFFFF words three times: a 32-bit sum would wrap to a small number.
  ReceiveLimits limits;
  limits.max_message_bytes = ~std::size_t{0} >> 1;
  limits.max_segments = 512;
  FrameProbe result = probe(frame({0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu}), limits);
  CHECK(result.bytes_needed == 16 + 3 * (std::size_t{0xFFFFFFFFu} * 8));
}

TEST_CASE("a frame exactly at the limit is accepted") {
  ReceiveLimits limits;
  limits.max_message_bytes = 8 + 16 * 8;
  CHECK_NOTHROW(probe(frame({16}), limits));
  limits.max_message_bytes -= 1;
  CHECK(error_of(frame({16}), limits) == ErrorCode::MessageTooLarge);
}

TEST_CASE("write_segment_table produces what probe_frame reads back") {
  capnp::word storage[7] = {};
  kj::ArrayPtr<const capnp::word> segments[] = {kj::arrayPtr(storage, 2),
                                                kj::arrayPtr(storage + 2, 5)};
  std::byte table[capnsplice::segment_table_bytes(2)];
  capnsplice::write_segment_table(kj::arrayPtr(segments, 2), table);
  std::vector<std::byte> bytes(table, table + sizeof table);
  bytes.resize(bytes.size() + 7 * 8);
  FrameProbe result = probe(bytes);
  CHECK(result.segment_count == 2);
  CHECK(result.bytes_needed == 16 + 7 * 8);
}
