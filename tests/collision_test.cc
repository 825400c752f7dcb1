// An ordinary message is never taken for a shared-memory descriptor, whatever its bytes:
// descriptors are marked by their framing (src/frame.h), not recognised by content.
#include <catch2/catch.hpp>

#include <capnp/serialize.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "capnsplice.capnp.h"
#include "capnsplice/process.h"
#include "support/process_support.h"
#include "support/shared_memory_support.h"
#include "test.capnp.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

constexpr std::uint64_t kMagic = wire::SharedMessage::EXPECTED_MAGIC;

/// The exact collision: a Lookalike whose first word is the descriptor magic.
void fill_lookalike(test::Lookalike::Builder lookalike, std::uint64_t second) {
  lookalike.setFirst(kMagic);
  lookalike.setSecond(second);
  lookalike.setThird(7);
  lookalike.setPayload(kj::StringPtr("forwarded bytes").asBytes());
}

void check_lookalike(test::Lookalike::Reader lookalike, std::uint64_t second) {
  CHECK(lookalike.getFirst() == kMagic);
  CHECK(lookalike.getSecond() == second);
  CHECK(lookalike.getThird() == 7);
  CHECK(lookalike.getPayload().asChars() == kj::StringPtr("forwarded bytes").asArray());
}

/// A SharedMessage sent as an ordinary message, naming `arena` and valid segments: all
/// a descriptor is, but for the mark.
void fill_forged_descriptor(capnp::MessageBuilder& message, std::uint32_t arena) {
  auto descriptor = message.initRoot<wire::SharedMessage>();
  descriptor.setMagic(kMagic);
  descriptor.setArena(arena);
  descriptor.setId(1);
  auto segment = descriptor.initSegments(1)[0];
  segment.setOffset(0);
  segment.setWords(1);
}

/// A channel pair whose receiving end `far` follows an arena `near` announced: one
/// large message crossed through shared memory first.
std::pair<Channel, Channel> pair_with_live_arena() {
  auto [near, far] = Channel::pair(shared_options());
  Random random(1);
  near.send(blob_in_place(near, 0, 4 * MiB, random));
  REQUIRE(blob_intact(far.receive_as<test::Blob>(Deadline::after(10s)).root()));
  REQUIRE(far.receiver().stats().shared_messages == 1);
  return {std::move(near), std::move(far)};
}

bool same_words(const std::vector<capnp::word>& a, kj::ArrayPtr<const capnp::word> b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.begin(), a.size() * sizeof(capnp::word)) == 0);
}

}  // namespace

TEST_CASE("a lookalike of a descriptor from a plain Cap'n Proto peer arrives intact") {
  // The child echoes with capnp::writeMessageToFd on descriptors 3/4, beside the control
  // link it ignores: this end's receiver follows the link all the same.
  Child child = spawn_peer({"plain"});
  auto request = child.channel.new_message();
  fill_lookalike(request.init_root<test::Lookalike>(), 0);
  child.channel.send(std::move(request));
  auto echoed = child.channel.receive_as<test::Lookalike>(Deadline::after(10s));
  check_lookalike(echoed.root(), 0);
  CHECK(child.channel.receiver().stats().shared_messages == 0);
  CHECK(child.process.wait().success());
}

TEST_CASE("lookalikes and forged descriptors from a capnsplice peer with a live arena arrive "
          "as ordinary messages") {
  auto [near, far] = pair_with_live_arena();
  for (std::uint64_t second : {0, 1, 2}) {  // arena 0, the live arena 1, one not sent
    auto lookalike = near.new_message();
    fill_lookalike(lookalike.init_root<test::Lookalike>(), second);
    near.send(std::move(lookalike));
    auto received = far.receive_as<test::Lookalike>(Deadline::after(10s));
    check_lookalike(received.root(), second);

    capnp::MallocMessageBuilder forged;
    fill_forged_descriptor(forged, static_cast<std::uint32_t>(second));
    near.send_copy(forged);
    auto as_sent = far.receive_as<wire::SharedMessage>(Deadline::after(10s));
    CHECK(as_sent->getMagic() == kMagic);
    CHECK(as_sent->getArena() == second);
  }
  CHECK(far.receiver().stats().shared_messages == 1);  // only the real one
  // The arena still serves: a real shared message after the lookalikes.
  Random random(2);
  near.send(blob_in_place(near, 1, 4 * MiB, random));
  CHECK(blob_intact(far.receive_as<test::Blob>(Deadline::after(10s)).root()));
  CHECK(far.receiver().stats().shared_messages == 2);
}

TEST_CASE("a lookalike of a descriptor crosses a capnsplice peer without shared memory, both "
          "ways") {
  Child child = spawn({.program = CAPNSPLICE_TEST_PEER,
                       .arguments = {"echo"},
                       .environment = {"CAPNSPLICE_DISABLE_SHARED_MEMORY=1"},
                       .channel = shared_options()});
  for (std::uint64_t second : {0, 1}) {
    auto lookalike = child.channel.new_message();
    fill_lookalike(lookalike.init_root<test::Lookalike>(), second);
    child.channel.send(std::move(lookalike));
    check_lookalike(child.channel.receive_as<test::Lookalike>(Deadline::after(10s)).root(),
                    second);
  }
  child.channel.close_sending();
  CHECK(child.process.wait().success());
}

TEST_CASE("a lookalike of a descriptor passes through capnsplice-pipe relay unchanged") {
  char path[] = "/tmp/capnsplice-lookalike-XXXXXX";
  const int file = ::mkstemp(path);
  REQUIRE(file >= 0);
  capnp::MallocMessageBuilder lookalike;
  fill_lookalike(lookalike.initRoot<test::Lookalike>(), 0);
  capnp::writeMessageToFd(file, lookalike);
  capnp::MallocMessageBuilder forged;
  fill_forged_descriptor(forged, 1);
  capnp::writeMessageToFd(file, forged);
  ::close(file);
  const std::string relayed = std::string(path) + ".out";
  // Through pipes both ways (cat), so the relay receives and sends as on a channel.
  const std::string command = "cat " + std::string(path) + " | " + CAPNSPLICE_PIPE +
                              " relay | cat > " + relayed + " && cmp " + path + " " + relayed;
  CHECK(std::system(command.c_str()) == 0);  // byte for byte what went in
  const int output = ::open(relayed.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(output >= 0);
  {
    capnp::StreamFdMessageReader first(output);
    check_lookalike(first.getRoot<test::Lookalike>(), 0);
    capnp::StreamFdMessageReader second(output);
    CHECK(second.getRoot<wire::SharedMessage>().getArena() == 1);
  }
  ::close(output);
  ::unlink(path);
  ::unlink(relayed.c_str());
}

TEST_CASE("random one-segment messages, many shaped like descriptors, arrive exactly as sent") {
  auto [near, far] = pair_with_live_arena();
  Random random(3);
  constexpr int kMessages = 3000;
  for (int i = 0; i < kMessages; ++i) {
    // 1 to 64 words of random bytes; every other message gets the old descriptor shape
    // (a root pointer to 3 data words and 1 pointer, then the magic), with random fields
    // that sometimes name the live arena.
    std::vector<capnp::word> segment(1 + random.below(64));
    random.fill(kj::arrayPtr(reinterpret_cast<kj::byte*>(segment.data()),
                             segment.size() * sizeof(capnp::word)));
    if (i % 2 == 0 && segment.size() >= 6) {
      const std::uint64_t root = std::uint64_t{1} << 48 | std::uint64_t{3} << 32;
      std::memcpy(&segment[0], &root, sizeof root);
      std::memcpy(&segment[1], &kMagic, sizeof kMagic);
      const std::uint64_t arena = random.below(3);
      std::memcpy(&segment[2], &arena, sizeof arena);
    }
    const kj::ArrayPtr<const capnp::word> segments[] = {kj::arrayPtr(segment.data(), segment.size())};
    near.sender().send_copy(segments, Deadline::after(10s));
    ReceivedMessage received = far.receive(Deadline::after(10s));
    REQUIRE(received.segments().size() == 1);
    REQUIRE(same_words(segment, received.segments()[0]));
  }
  CHECK(far.receiver().stats().shared_messages == 1);
  CHECK(far.receiver().stats().messages == kMessages + 1);
}
