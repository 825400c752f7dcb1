// Writes the seed corpus of the fuzz targets: valid frames made by Cap'n Proto itself.
// usage: make_seed_corpus DIR   (writes DIR/frame_fuzz/* and DIR/delivery_fuzz/*)
//
// The seeds in tests/fuzz/corpus were made with it; run it again after changing it.
// Messages: empty, single-segment, multi-segment (far pointers), a tree of structs and
// lists, and one larger than the delivery target's smallest rings.
#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "demo.capnp.h"

namespace {

using Bytes = std::vector<std::uint8_t>;

Bytes frame_of(capnp::MessageBuilder& message) {
  const kj::Array<capnp::word> words = capnp::messageToFlatArray(message);
  const auto bytes = words.asBytes();
  return Bytes(bytes.begin(), bytes.end());
}

Bytes chunk(std::uint64_t seq, std::size_t payload_bytes, unsigned first_segment_words = 0) {
  // A small fixed segment size makes Cap'n Proto spread the message over segments.
  capnp::MallocMessageBuilder message(first_segment_words == 0 ? 1024 : first_segment_words,
                                      first_segment_words == 0
                                          ? capnp::SUGGESTED_ALLOCATION_STRATEGY
                                          : capnp::AllocationStrategy::FIXED_SIZE);
  auto root = message.initRoot<capnsplice::demo::Chunk>();
  root.setSeq(seq);
  auto payload = root.initPayload(static_cast<unsigned>(payload_bytes));
  for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<kj::byte>(i * 7);
  return frame_of(message);
}

Bytes struct_tree() {
  capnp::MallocMessageBuilder message(8, capnp::AllocationStrategy::FIXED_SIZE);
  auto root = message.getRoot<capnp::AnyPointer>().initAsAnyStruct(2, 4);
  root.getDataSection()[0] = 42;
  auto pointers = root.getPointerSection();
  auto child = pointers[0].initAsAnyStruct(1, 1);
  child.getPointerSection()[0].initAsAnyList(capnp::ElementSize::BYTE, 13);
  pointers[1].initAsAnyList(capnp::ElementSize::EIGHT_BYTES, 5);
  auto structs = pointers[2].initAsListOfAnyStruct(1, 1, 3);
  for (auto element : structs)
    element.getPointerSection()[0].initAsAnyList(capnp::ElementSize::BIT, 9);
  pointers[3].initAsAnyList(capnp::ElementSize::POINTER, 2);
  return frame_of(message);
}

Bytes empty_message() {
  capnp::MallocMessageBuilder message;
  message.getRoot<capnp::AnyPointer>();  // one word: a null root pointer
  return frame_of(message);
}

void write_file(const std::filesystem::path& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

Bytes concat(std::initializer_list<Bytes> parts) {
  Bytes all;
  for (const Bytes& part : parts) all.insert(all.end(), part.begin(), part.end());
  return all;
}

/// A delivery input: settings byte, piece sizes, then the stream (delivery_fuzz.cc).
Bytes delivery_input(std::uint8_t settings, const std::vector<std::uint16_t>& pieces,
                     const Bytes& stream) {
  Bytes input{settings, static_cast<std::uint8_t>(pieces.size())};
  for (std::uint16_t piece : pieces) {
    input.push_back(static_cast<std::uint8_t>(piece & 0xFF));
    input.push_back(static_cast<std::uint8_t>(piece >> 8));
  }
  input.insert(input.end(), stream.begin(), stream.end());
  return input;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seed_corpus DIR\n");
    return 2;
  }
  const std::filesystem::path root = argv[1];
  const std::filesystem::path frames = root / "frame_fuzz";
  const std::filesystem::path delivery = root / "delivery_fuzz";
  std::filesystem::create_directories(frames);
  std::filesystem::create_directories(delivery);

  const Bytes empty = empty_message();
  const Bytes single = chunk(1, 100);
  const Bytes multi = chunk(2, 600, 16);
  const Bytes tree = struct_tree();
  const Bytes large = chunk(3, 12 * 1024);

  // frame_fuzz: a limits byte (512 segments, 64 MiB), then one frame.
  constexpr std::uint8_t kFrameLimits = 3 | 2 << 2;
  for (const auto& [name, frame] : {std::pair{"empty", empty}, std::pair{"single-segment", single},
                                    std::pair{"multi-segment", multi},
                                    std::pair{"struct-tree", tree}, std::pair{"large", large}}) {
    write_file(frames / name, concat({{kFrameLimits}, frame}));
  }

  // delivery_fuzz: settings = ring | limit << 2 | segments << 4 | hold << 6.
  const Bytes stream = concat({single, multi, empty, tree, single});
  write_file(delivery / "one-write", delivery_input(0 | 3 << 2 | 3 << 4, {}, stream));
  write_file(delivery / "small-pieces", delivery_input(0 | 3 << 2 | 3 << 4, {1, 7, 64, 3}, stream));
  write_file(delivery / "held-in-small-ring",
             delivery_input(0 | 3 << 2 | 3 << 4 | 1 << 6, {100, 900}, concat({stream, stream})));
  write_file(delivery / "large-frame", delivery_input(1 | 3 << 2 | 3 << 4 | 2 << 6, {4096, 3},
                                                      concat({single, large, tree})));
  write_file(delivery / "cut-mid-frame",
             delivery_input(0 | 3 << 2 | 3 << 4, {50}, Bytes(multi.begin(), multi.end() - 9)));
  std::printf("seeds written to %s\n", root.c_str());
  return 0;
}
