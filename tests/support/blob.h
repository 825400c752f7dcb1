// Building and checking test.capnp Blob messages with checksummed payloads.
#pragma once

#include <capnp/message.h>

#include <chrono>

#include "capnsplice/channel.h"
#include "test.capnp.h"
#include "test_support.h"

namespace capnsplice::testing {

/// Fills `blob` with `size` random bytes (split into `parts` Data pieces when > 0) and
/// their checksum.
inline void fill_blob(test::Blob::Builder blob, std::uint64_t seq, std::size_t size,
                      Random& random, unsigned parts = 0) {
  blob.setSeq(seq);
  if (parts == 0) {
    auto data = blob.initData(static_cast<unsigned>(size));
    random.fill(data);
    blob.setChecksum(checksum(data));
    return;
  }
  auto list = blob.initParts(parts);
  std::uint64_t sum = 0;
  for (unsigned i = 0; i < parts; ++i) {
    auto data = list.init(i, static_cast<unsigned>(size / parts));
    random.fill(data);
    sum += checksum(data);
  }
  blob.setChecksum(sum);
}

/// Recomputes the checksum of a received blob.
inline bool blob_intact(test::Blob::Reader blob) {
  if (!blob.hasParts()) return checksum(blob.getData()) == blob.getChecksum();
  std::uint64_t sum = 0;
  for (auto part : blob.getParts()) sum += checksum(part);
  return sum == blob.getChecksum();
}

/// Fills `message` with a blob whose data comes from allocate_data(): filled in place,
/// never zeroed, sent as a segment of its own.
inline void fill_blob_in_place(OutgoingMessage& message, std::uint64_t seq, std::size_t size,
                               Random& random) {
  auto blob = message.init_root<test::Blob>();
  blob.setSeq(seq);
  auto data = message.allocate_data(size);
  random.fill(data.bytes);
  blob.setChecksum(checksum(data.bytes));
  blob.adoptData(std::move(data.orphan));
}

/// Builds a blob in the channel's pool and sends it.
inline void send_blob(Channel& channel, std::uint64_t seq, std::size_t size, Random& random,
                      unsigned parts = 0) {
  auto message = channel.new_message();
  fill_blob(message.init_root<test::Blob>(), seq, size, random, parts);
  channel.send(std::move(message));
}

/// What fill_pipe() saw: blobs 0 to sent-1 went whole, then a send failed (on Timeout,
/// blob `sent` is kept queued whole).
struct FilledPipe {
  std::uint64_t sent;
  Error error;
};

/// Sends 1000-byte blobs until a send fails: with nobody reading, the send timeout once
/// the pipe is full. Each frame is under PIPE_BUF, so on a copy path the pipe takes it
/// whole or not at all and fills up on a message boundary.
inline FilledPipe fill_pipe(Channel& channel, Random& random) {
  for (std::uint64_t sent = 0;; ++sent) {
    try {
      send_blob(channel, sent, 1000, random);
    } catch (const Error& error) {
      return {sent, error};
    }
  }
}

/// A pair on the copy path with `send_timeout`, whose first end has filled the pipe
/// (fill_pipe()): the tests of what a send timeout leaves intact.
struct FullPipe {
  Channel near;
  Channel far;
  FilledPipe filled;
};
inline FullPipe full_copy_pipe(std::chrono::milliseconds send_timeout, Random& random) {
  auto [near, far] = Channel::pair(
      ChannelOptions().with_send_path(SendPath::copy).with_send_timeout(send_timeout));
  FilledPipe filled = fill_pipe(near, random);
  return {std::move(near), std::move(far), filled};
}

/// Payload bytes of a blob.
inline std::size_t blob_size(test::Blob::Reader blob) {
  if (!blob.hasParts()) return blob.getData().size();
  std::size_t total = 0;
  for (auto part : blob.getParts()) total += part.size();
  return total;
}

}  // namespace capnsplice::testing
