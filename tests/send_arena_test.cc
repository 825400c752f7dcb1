// The sending arena's allocation (src/shared_arena.h), below the channel: freed blocks
// kept for the next request of the same size are zeroed like fresh ones, taken newest
// first, bounded in number and bytes (the oldest go back first), and go back to the
// allocator when a request finds no room.
#include <catch2/catch.hpp>

#include <cstddef>
#include <vector>

#include "shared_arena.h"  // src/

namespace {

using capnsplice::detail::ArenaBlock;
using capnsplice::detail::SendArena;

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;

}  // namespace

TEST_CASE("a freed block handed out again for a zeroed request of its size is zeroed") {
  SendArena arena(1, 4 * MiB, "test");
  const ArenaBlock first = *arena.allocate(1000, /*zeroed=*/true);
  for (std::size_t i = 0; i < 1000; ++i) first.data[i] = std::byte{0xAB};
  arena.free(first);
  const ArenaBlock again = *arena.allocate(1000, /*zeroed=*/true);
  CHECK(again.data == first.data);
  CHECK(arena.bytes_in_use() == 1000);
  for (std::size_t i = 0; i < 1000; ++i) REQUIRE(again.data[i] == std::byte{0});
}

TEST_CASE("blocks kept for reuse go back to the allocator when a larger request finds no "
          "room") {
  // 16 blocks of 60 KiB kept (960 KiB, under the bound) fill the start of a 2 MiB arena;
  // 1.5 MiB fits only once they are merged with the free space again.
  SendArena arena(1, 2 * MiB, "test");
  std::vector<ArenaBlock> blocks;
  for (int i = 0; i < 16; ++i) blocks.push_back(*arena.allocate(60 * KiB, false));
  for (const ArenaBlock& block : blocks) arena.free(block);
  CHECK(arena.bytes_in_use() == 0);
  CHECK(arena.idle());
  const auto large = arena.allocate(1536 * KiB, false);
  REQUIRE(large.has_value());
  CHECK(arena.bytes_in_use() == 1536 * KiB);
}

TEST_CASE("freed blocks are kept up to 256 of them, the oldest going back first, and the "
          "latest freed is taken first") {
  SendArena arena(1, 4 * MiB, "test");
  std::vector<ArenaBlock> blocks;
  for (int i = 0; i < 257; ++i) blocks.push_back(*arena.allocate(KiB, false));
  for (const ArenaBlock& block : blocks) arena.free(block);
  CHECK(arena.kept_blocks() == 256);
  CHECK(arena.kept_bytes() == 256 * KiB);
  // Taken back newest first: the 256 kept are the blocks freed last, so the first one
  // freed is not among them.
  CHECK(arena.allocate(KiB, false)->data == blocks.back().data);
  for (int i = 1; i < 256; ++i) {
    const ArenaBlock again = *arena.allocate(KiB, false);
    REQUIRE(again.data != blocks.front().data);
  }
  CHECK(arena.kept_blocks() == 0);
}

TEST_CASE("freed blocks are kept up to 4 MiB in all, and none larger than 64 KiB") {
  SendArena arena(1, 16 * MiB, "test");
  std::vector<ArenaBlock> blocks;
  for (int i = 0; i < 80; ++i) blocks.push_back(*arena.allocate(60 * KiB, false));
  const ArenaBlock large = *arena.allocate(64 * KiB + 8, false);
  arena.free(large);
  CHECK(arena.kept_blocks() == 0);
  for (const ArenaBlock& block : blocks) arena.free(block);
  CHECK(arena.kept_bytes() <= 4 * MiB);
  CHECK(arena.kept_blocks() == (4 * MiB) / (60 * KiB));  // 68: the latest freed
  CHECK(arena.bytes_in_use() == 0);
}
