// A hostile peer for tests/hostile_peer_test.cc: writes forged or broken framing to the
// channel descriptor a spawn()ing parent gave it. usage: capnsplice_hostile_peer MODE
//
//   forged-count        a segment table declaring 2^32 segments
//   wrapping-words      two segments of 1 and 2^32-1 words: a 32-bit word sum wraps to 0
//   wrapping-bytes      512 segments of 8 MiB: a 32-bit byte sum wraps to 0
//   over-limit          one segment of 128 MiB
//   truncate            one whole message, then half of one, then exit
//   garbage             three whole messages, then bytes that are no segment table
//   stall               one whole message, then the first 4 KiB of a 60 MiB frame
//   forged-descriptor   a shared-memory descriptor naming an arena it never sent
//
// Unless it exits on purpose, the peer then waits to be killed: the errors the parent
// sees come from the bytes, not from end of stream.
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "capnsplice.capnp.h"
#include "capnsplice/process.h"
#include "support/test_support.h"
#include "test.capnp.h"

namespace {

using capnsplice::kChildSendFd;

void write_all(const void* data, std::size_t bytes) {
  const auto* at = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t written = ::write(kChildSendFd, at, bytes);
    if (written <= 0) ::_exit(3);
    at += written;
    bytes -= static_cast<std::size_t>(written);
  }
}

void write_words(const std::vector<std::uint32_t>& words) {
  write_all(words.data(), words.size() * sizeof(std::uint32_t));
}

/// A valid frame, as plain Cap'n Proto writes it: the parent must receive it intact.
void write_message(std::uint64_t seq) {
  capnp::MallocMessageBuilder message;
  auto blob = message.initRoot<capnsplice::test::Blob>();
  blob.setSeq(seq);
  blob.setChecksum(capnsplice::testing::checksum(blob.initData(100)));
  capnp::writeMessageToFd(kChildSendFd, message);
}

/// The segment table of `sizes` (in words), padded to 8 bytes, with no segments after it.
std::vector<std::uint32_t> segment_table(const std::vector<std::uint32_t>& sizes) {
  std::vector<std::uint32_t> words{static_cast<std::uint32_t>(sizes.size() - 1)};
  words.insert(words.end(), sizes.begin(), sizes.end());
  if (words.size() % 2 != 0) words.push_back(0);
  return words;
}

/// A shared-memory descriptor as a capnsplice sender writes it, but for arena 7, which
/// this peer never put on the control link.
void write_forged_descriptor() {
  capnp::MallocMessageBuilder message;
  auto descriptor = message.initRoot<capnsplice::wire::SharedMessage>();
  descriptor.setMagic(capnsplice::wire::SharedMessage::EXPECTED_MAGIC);
  descriptor.setArena(7);
  descriptor.setId(1);
  auto segment = descriptor.initSegments(1)[0];
  segment.setOffset(0);
  segment.setWords(1);
  capnp::writeMessageToFd(kChildSendFd, message);
}

[[noreturn]] void wait_to_be_killed() {
  for (;;) ::pause();
}

int run(const std::string& mode) {
  if (mode == "forged-count") {
    write_words({0xFFFFFFFFu, 1});
  } else if (mode == "wrapping-words") {
    write_words(segment_table({1, 0xFFFFFFFFu}));
  } else if (mode == "wrapping-bytes") {
    write_words(segment_table(std::vector<std::uint32_t>(512, 1u << 20)));
  } else if (mode == "over-limit") {
    write_words(segment_table({1u << 24}));
  } else if (mode == "truncate") {
    write_message(0);
    std::vector<std::uint32_t> half = segment_table({1000});
    half.resize(half.size() + 1000);  // 4000 of the 8000 segment bytes
    write_words(half);
    return 0;
  } else if (mode == "garbage") {
    for (std::uint64_t seq = 0; seq < 3; ++seq) write_message(seq);
    write_words({0xDEADBEEFu, 0x0BADF00Du, 0xFFFFFFFFu, 0x12345678u});
  } else if (mode == "stall") {
    write_message(0);
    std::vector<std::uint32_t> start = segment_table({60u << 17});  // 60 MiB of words
    start.resize(start.size() + 1024);
    write_words(start);
  } else if (mode == "forged-descriptor") {
    write_message(0);
    write_forged_descriptor();
  } else {
    std::fprintf(stderr, "usage: capnsplice_hostile_peer MODE (see the source)\n");
    return 2;
  }
  wait_to_be_killed();
}

}  // namespace

int main(int argc, char** argv) { return run(argc > 1 ? argv[1] : ""); }
