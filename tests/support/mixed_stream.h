// A stream of numbered, checksummed blobs of mixed sizes, sent every way the library
// offers, and the tally its receiver keeps. Used by the fault and soak tests.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

#include "blob.h"

namespace capnsplice::testing {

/// A size from 0 to `max_bytes` (inclusive), spread over every power of two below it,
/// so that tiny, middling and huge messages all occur often.
inline std::size_t mixed_size(Random& random, std::size_t max_bytes) {
  const std::uint64_t bound = std::uint64_t{1} << random.below(std::bit_width(max_bytes));
  return static_cast<std::size_t>(std::min<std::uint64_t>(random.below(bound + 1), max_bytes));
}

/// Sends blob `seq` of `size` payload bytes, built either by Cap'n Proto in the pool or
/// in place with allocate_data(); small ones are sometimes only queued, for the next
/// send() or flush() to write as a batch.
inline void send_mixed(Channel& channel, std::uint64_t seq, std::size_t size, Random& random) {
  OutgoingMessage message = channel.new_message();
  if (random.below(2) == 0) {
    fill_blob(message.init_root<test::Blob>(), seq, size, random);
  } else {
    fill_blob_in_place(message, seq, size, random);
  }
  if (size < 64 * KiB && random.below(2) == 0) {
    channel.queue(std::move(message));
  } else {
    channel.send(std::move(message));
  }
}

/// What the receiver of a stream from send_mixed() saw.
struct StreamTally {
  std::uint64_t messages = 0;
  std::uint64_t bytes = 0;         ///< payload bytes
  std::uint64_t mismatches = 0;    ///< checksum failures
  std::uint64_t out_of_order = 0;  ///< seq other than the count so far: lost or duplicated

  void add(test::Blob::Reader blob) {
    mismatches += blob_intact(blob) ? 0 : 1;
    out_of_order += blob.getSeq() == messages ? 0 : 1;
    bytes += blob_size(blob);
    ++messages;
  }

  void write_to(test::Report::Builder report) const {
    report.setMessages(messages);
    report.setBytes(bytes);
    report.setMismatches(mismatches);
    report.setOutOfOrder(out_of_order);
  }

  static StreamTally read_from(test::Report::Reader report) {
    return {report.getMessages(), report.getBytes(), report.getMismatches(),
            report.getOutOfOrder()};
  }
};

}  // namespace capnsplice::testing
