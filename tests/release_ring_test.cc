// The release ring (src/release_ring.h): a receiver reports the shared-memory messages it
// is done with in a page its peer's sender reads, instead of a record on the control
// link. The two halves are tested here against each other in one process (two mappings
// of one page, as across processes), each also against a peer that lies; the channel
// level (a stream released by ring, a waiting sender woken) is in arena_test.cc.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "capnsplice/error.h"
#include "release_ring.h"  // src/
#include "support/error_from.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::detail;
using capnsplice::testing::error_from;

/// A sender's ring and the receiver's mapping of it.
struct RingPair {
  std::unique_ptr<ReleaseCollector> sender = ReleaseCollector::make("test");
  std::unique_ptr<ReleasePoster> receiver =
      ReleasePoster::map(UniqueFd(::dup(sender->memfd().get())), "test");

  std::vector<std::uint64_t> collect() {
    std::vector<std::uint64_t> ids;
    sender->collect([&](std::uint64_t id) { ids.push_back(id); });
    return ids;
  }
};

/// The page as a peer would write it: a third mapping of the ring's memfd.
ReleaseRingPage* peer_view(ReleaseCollector& sender) {
  void* page = ::mmap(nullptr, kReleaseRingBytes, PROT_READ | PROT_WRITE, MAP_SHARED,
                      sender.memfd().get(), 0);
  REQUIRE(page != MAP_FAILED);
  return static_cast<ReleaseRingPage*>(page);
}

}  // namespace

TEST_CASE("released ids reach the sender in order, each once, across the ring's wrap") {
  RingPair ring;
  CHECK(ring.sender->in_use());  // the receiver mapped it
  std::uint64_t next = 1;
  for (int round = 0; round < 5; ++round) {  // 5 x 300 ids: the slots wrap three times
    std::vector<std::uint64_t> posted;
    for (int i = 0; i < 300; ++i, ++next) {
      REQUIRE(ring.receiver->post(next) == ReleasePoster::Posted::posted);
      posted.push_back(next);
    }
    CHECK(ring.collect() == posted);
    CHECK(ring.collect().empty());
  }
}

TEST_CASE("a ring the sender does not collect from fills, and the receiver is told to use "
          "the link") {
  RingPair ring;
  for (std::uint64_t id = 0; id < kReleaseRingSlots; ++id) {
    REQUIRE(ring.receiver->post(id) == ReleasePoster::Posted::posted);
  }
  CHECK(ring.receiver->post(kReleaseRingSlots) == ReleasePoster::Posted::no_room);
  CHECK(ring.collect().size() == kReleaseRingSlots);  // none overwritten
  CHECK(ring.receiver->post(kReleaseRingSlots) == ReleasePoster::Posted::posted);
}

TEST_CASE("a sender asking to be woken gets a wake with the next post, and none after") {
  RingPair ring;
  CHECK(ring.sender->ask_for_wake());  // nothing posted: it may sleep
  CHECK(ring.receiver->post(7) == ReleasePoster::Posted::wake_peer);
  CHECK(ring.receiver->post(8) == ReleasePoster::Posted::posted);  // one wake per sleep
  CHECK_FALSE(ring.sender->ask_for_wake());  // 7 and 8 are waiting: collect, do not sleep
  CHECK(ring.collect() == std::vector<std::uint64_t>{7, 8});
  CHECK(ring.receiver->post(9) == ReleasePoster::Posted::posted);  // collect() cleared it
}

TEST_CASE("a receiver that posts more than the ring holds breaks it for good, and the "
          "sender takes nothing from it") {
  RingPair ring;
  ReleaseRingPage* forged = peer_view(*ring.sender);
  forged->posted.store(kReleaseRingSlots + 1);
  CHECK(ring.collect().empty());
  CHECK_FALSE(ring.sender->in_use());  // back to the link
  forged->posted.store(3);  // even a count that looks honest again
  CHECK(ring.collect().empty());
  // The receiver is told: its next release goes as a record, not into a dead ring.
  CHECK(ring.receiver->post(1) == ReleasePoster::Posted::no_room);
  ::munmap(forged, kReleaseRingBytes);
}

TEST_CASE("a fork() child that drops an inherited message sends a record rather than post "
          "into its parent's ring") {
  RingPair ring;
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // Its count would collide with the parent's: the same slot, the same total.
    ::_exit(ring.receiver->post(1) == ReleasePoster::Posted::no_room ? 0 : 1);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  CHECK(ring.collect().empty());
  CHECK(ring.receiver->post(2) == ReleasePoster::Posted::posted);  // the parent still does
  CHECK(ring.collect() == std::vector<std::uint64_t>{2});
}

TEST_CASE("a sender that claims to have collected more than was posted gets records, not "
          "overwritten slots") {
  RingPair ring;
  ReleaseRingPage* forged = peer_view(*ring.sender);
  forged->collected.store(1000);
  CHECK(ring.receiver->post(1) == ReleasePoster::Posted::no_room);
  ::munmap(forged, kReleaseRingBytes);
}

TEST_CASE("a receiver refuses a ring that could shrink under it, or of the wrong size") {
  for (const auto& [seals, bytes] : {std::pair{F_SEAL_GROW | F_SEAL_SEAL, kReleaseRingBytes},
                                     std::pair{F_SEAL_SHRINK | F_SEAL_SEAL, std::size_t{8192}}}) {
    UniqueFd memfd(::memfd_create("forged-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    REQUIRE(::ftruncate(memfd.get(), static_cast<off_t>(bytes)) == 0);
    REQUIRE(::fcntl(memfd.get(), F_ADD_SEALS, seals) == 0);
    const Error refused = error_from([&] { ReleasePoster::map(std::move(memfd), "test"); });
    CHECK(refused.code() == ErrorCode::ProtocolViolation);
    CHECK_THAT(refused.what(), Catch::Contains("release ring"));
  }
}
