// Large messages travel through a shared-memory arena: the pipe carries a descriptor,
// the receiver reads the message in place, and dropping it gives the memory back.
// (How arenas are reused, replaced and bounded: tests/arena_test.cc.)
#include <catch2/catch.hpp>

#include <capnp/message.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <vector>

#include "capnsplice/channel.h"
#include "capnsplice/process.h"
#include "support/blob.h"
#include "support/error_from.h"
#include "support/process_support.h"
#include "support/shared_memory_support.h"

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

TEST_CASE("a large message travels as a descriptor and is read in place from the arena") {
  auto [near, far] = Channel::pair(shared_options());
  Random random(1);
  std::thread sender([&] { send_blob(near, 1, 16 * MiB, random); });  // initData: zeroed
  auto message = far.receive(Deadline::after(10s));
  sender.join();
  auto blob = message.root<test::Blob>();
  CHECK(blob.getSeq() == 1);
  CHECK(blob.getData().size() == 16 * MiB);
  CHECK(blob_intact(blob));
  CHECK(near.sender().stats().shared_messages == 1);
  CHECK(far.receiver().stats().shared_messages == 1);
  // In place: the payload lies in the read-only arena mapping, not in the receive ring.
  const auto arenas = mappings_of("capnsplice-arena");
  const auto payload = reinterpret_cast<std::uintptr_t>(blob.getData().begin());
  bool in_read_only_arena = false;
  for (const auto& [perms, range] : arenas) {
    in_read_only_arena |= perms == "r--s" && payload >= range.first && payload < range.second;
  }
  CHECK(in_read_only_arena);
  // One descriptor: the sender's. The receiver closed its copy once it had mapped it.
  CHECK(arena_descriptors() == 1);
}

TEST_CASE("messages below the shared-memory threshold take the pipe") {
  auto [near, far] = Channel::pair(shared_options());
  Random random(2);
  const std::size_t below = SenderOptions().shared_memory_threshold_bytes / 2;
  std::thread sender([&] { send_blob(near, 1, below, random); });
  CHECK(blob_intact(far.receive_as<test::Blob>().root()));
  sender.join();
  CHECK(near.sender().stats().shared_messages == 0);
}

TEST_CASE("a shared-memory message is bound by the receiver's max_message_bytes like any "
          "other, and the sender gets its arena memory back") {
  // Only a small descriptor crosses the pipe, but the limit is about the message.
  auto [near, far] = Channel::pair(shared_options().with_max_message_bytes(1 * MiB));
  Random random(3);
  near.send(blob_in_place(near, 7, 4 * MiB, random));
  REQUIRE(near.sender().stats().shared_messages == 1);
  Error error = error_from([&far = far] { far.receive(Deadline::after(10s)); });
  CHECK(error.code() == ErrorCode::MessageTooLarge);
  CHECK_THAT(error.what(), Catch::Contains("exceeds the limit of 1048576 bytes"));
  CHECK(far.receiver().stats().shared_messages == 0);  // nothing of it was read
  // The refused message was released: the sender's arena is empty again.
  const auto give_up = std::chrono::steady_clock::now() + 10s;
  while (near.sender().stats().arena_bytes_in_use != 0 &&
         std::chrono::steady_clock::now() < give_up) {
    send_blob(near, 8, 10, random);  // sending takes in what the reader released
    std::this_thread::sleep_for(1ms);
  }
  CHECK(near.sender().stats().arena_bytes_in_use == 0);
}

TEST_CASE("a shared-memory message above the pipe's frame size crosses when the limit "
          "allows it") {
  auto [near, far] = Channel::pair(shared_options().with_max_message_bytes(256 * MiB));
  Random random(3);
  near.send(blob_in_place(near, 7, 100 * MiB, random));
  auto blob = far.receive_as<test::Blob>(Deadline::after(10s));
  CHECK(blob->getData().size() == 100 * MiB);
  CHECK(blob_intact(blob.root()));
}

TEST_CASE("the receiver maps the arena read-only: writing to a received message faults") {
  auto [near, far] = Channel::pair(shared_options());
  Random random(7);
  near.send(blob_in_place(near, 1, 4 * MiB, random));
  auto message = far.receive();
  auto* payload = const_cast<kj::byte*>(message.root<test::Blob>().getData().begin());
  const auto arenas = mappings_of("capnsplice-arena");
  CHECK(std::count_if(arenas.begin(), arenas.end(),
                      [](const auto& mapping) { return mapping.first == "r--s"; }) == 1);
  pid_t writer = fork_child([payload] {
    std::signal(SIGSEGV, SIG_DFL);  // die of it, without the test framework's report
    payload[0] = 42;                // must not survive this
    return 0;
  });
  CHECK(wait_child(writer) == 128 + SIGSEGV);
}

TEST_CASE("a sender scribbling on shared segments while they are read gives wrong values, "
          "never a crash") {
  auto [near, far] = Channel::pair(shared_options().with_shared_memory_threshold_bytes(64 * KiB));
  Random random(8);
  {
    // 48 parts of 128 KiB: each in a segment of its own in the arena, their pointers in
    // the root segment (copied to the arena at send).
    auto message = near.new_message();
    fill_blob(message.init_root<test::Blob>(), 1, 6 * MiB, random, /*parts=*/48);
    near.send(std::move(message));
  }
  auto message = far.receive();
  REQUIRE(far.receiver().stats().shared_messages == 1);
  // The sender's own writable mapping of the same pages, found through /proc/self/maps.
  std::uintptr_t read_base = 0, write_base = 0;
  for (const auto& [perms, range] : mappings_of("capnsplice-arena")) {
    (perms == "r--s" ? read_base : write_base) = range.first;
  }
  REQUIRE((read_base != 0 && write_base != 0));
  std::atomic<bool> done{false};
  std::thread scribbler([&] {
    Random noise(9);
    const auto segments = message.segments();
    while (!done) {
      // One random word of one random segment at a time — pointers, sizes, data alike —
      // changed under the reader's feet and put back, so reads keep meeting both.
      // Mostly the first words of a segment (the root struct, list pointers and far
      // pointers' landing pads live there), sometimes anywhere.
      auto segment = segments[noise.below(segments.size())];
      const std::size_t span = noise.below(8) == 0 ? segment.size() : std::min<std::size_t>(
                                                                         segment.size(), 64);
      const auto offset = reinterpret_cast<std::uintptr_t>(segment.begin()) - read_base;
      auto* word =
          reinterpret_cast<volatile std::uint64_t*>(write_base + offset) + noise.below(span);
      const std::uint64_t original = *word;
      for (int flips = 0; flips < 1000; ++flips) *word = noise.next();
      *word = original;
    }
  });
  int traversals = 0, content_errors = 0;
  volatile std::uint64_t sink = 0;  // keeps the reads from being optimised away
  const auto stop = std::chrono::steady_clock::now() + 2s;
  while (std::chrono::steady_clock::now() < stop) {
    capnp::ReaderOptions options;
    options.traversalLimitInWords = 1 << 24;
    capnp::SegmentArrayMessageReader reader(message.segments(), options);
    try {
      // Follow every pointer and read at the far end of each part: where a changed
      // size or pointer would lead a careless reader out of bounds.
      for (auto part : reader.getRoot<test::Blob>().getParts()) {
        sink = sink + part.size() + (part.size() != 0 ? part[part.size() - 1] : 0);
      }
    } catch (const kj::Exception&) {
      ++content_errors;  // Cap'n Proto noticed a bad pointer: also allowed
    }
    ++traversals;
  }
  done = true;
  scribbler.join();
  INFO(traversals << " traversals, " << content_errors << " content errors");
  CHECK(traversals > 10);
  CHECK(content_errors > 0);  // the scribbling did reach the pointers being followed
}

TEST_CASE("a killed sender leaves its messages readable, then PeerClosed, and nothing "
          "behind") {
  {
    Child child = fork_with_channel([](Channel& parent) {
      Random random(10);
      parent.send(blob_in_place(parent, 1, 8 * MiB, random));
      ::pause();  // until killed
      return 0;
    }, shared_options());
    auto message = child.channel.receive(Deadline::after(10s));
    child.process.kill(SIGKILL);
    CHECK(child.process.wait().killed());
    CHECK(blob_intact(message.root<test::Blob>()));  // still mapped, still intact
    CHECK(child.channel.receiver().stats().shared_messages == 1);
    CHECK(receive_until_error(child.channel).peer_gone());
    // The survivor holds the dead sender's arena by its mapping alone, while the
    // message lives; never by a descriptor.
    CHECK(arena_descriptors() == 0);
    CHECK(mappings_of("capnsplice-arena").size() == 1);
  }
  // Message and channel gone: nothing refers to the arena (a memfd, so nothing was ever
  // in /dev/shm either), and the kernel frees it.
  CHECK(mappings_of("capnsplice-arena").empty());
  CHECK(arena_descriptors() == 0);
}

TEST_CASE("a killed receiver makes the next send fail with PeerClosed and frees the arena") {
  Child child = fork_with_channel([](Channel& parent) {
    parent.receive();  // hold one message, then die with it
    ::pause();
    return 0;
  }, shared_options());
  Random random(11);
  child.channel.send(blob_in_place(child.channel, 1, 8 * MiB, random));
  std::this_thread::sleep_for(50ms);
  child.process.kill(SIGKILL);
  child.process.wait();
  Error error = error_from([&] {
    for (int i = 0; i < 10; ++i) child.channel.send(blob_in_place(child.channel, 2, 8 * MiB, random));
  });
  CHECK(error.code() == ErrorCode::PeerClosed);
  CHECK(child.channel.sender().stats().arena_bytes_in_use <= 8 * MiB + 64 * KiB);
}

TEST_CASE("large messages take the shared-memory path both ways across exec") {
  Child child = spawn_peer({"echo-rebuilt"});
  Random random(12);
  // A first small round trip: by its end the child has said it reads shared memory
  // (a message sent before that takes the pipe).
  send_blob(child.channel, 99, 10, random);
  child.channel.receive(Deadline::after(10s));
  for (int i = 0; i < 4; ++i) {
    child.channel.send(blob_in_place(child.channel, i, 6 * MiB, random));
    auto echoed = child.channel.receive_as<test::Blob>(Deadline::after(10s));
    CHECK(echoed->getSeq() == static_cast<std::uint64_t>(i));
    CHECK(blob_intact(echoed.root()));
  }
  CHECK(child.channel.sender().stats().shared_messages == 4);
  CHECK(child.channel.receiver().stats().shared_messages == 4);
  child.channel.close_sending();
  CHECK(child.process.wait().success());
}

TEST_CASE("a peer written in plain Cap'n Proto never receives a shared-memory descriptor") {
  Child child = spawn_peer({"plain"});
  Random random(13);
  send_blob(child.channel, 0, 4 * MiB, random);
  CHECK(child.channel.sender().stats().shared_messages == 0);
  CHECK(blob_intact(child.channel.receive_as<test::Blob>(Deadline::after(10s)).root()));
  CHECK(child.process.wait().success());
}

TEST_CASE("the vmsplice aliasing probe reports what this kernel does") {
  auto [near, far] = Channel::pair();
  // The kernels this runs on map spliced pages; a copying kernel would report false and
  // everything would still work (by writev).
  CHECK(near.sender().stats().vmsplice_aliases_pages);
}

TEST_CASE("SendPath::shared_memory sends even small messages through the arena") {
  auto [near, far] = Channel::pair(shared_options().with_send_path(SendPath::shared_memory));
  Random random(14);
  far.send_struct<test::Empty>([](auto) {});  // let the announcement arrive first
  near.receive();
  for (int i = 0; i < 50; ++i) send_blob(near, i, random.below(3000), random, i % 3);
  for (int i = 0; i < 50; ++i) {
    auto blob = far.receive_as<test::Blob>();
    CHECK(blob->getSeq() == static_cast<std::uint64_t>(i));
    CHECK(blob_intact(blob.root()));
  }
  CHECK(near.sender().stats().shared_messages == 50);
  CHECK(far.receiver().stats().shared_messages == 50);
}

TEST_CASE("a small message built for the arena takes a small part of it") {
  // Every segment goes to the arena and must be zeroed there: a small message must not
  // take (and zero) a large first segment.
  auto [near, far] = Channel::pair(shared_options().with_send_path(SendPath::shared_memory));
  far.send_struct<test::Empty>([](auto) {});  // let the announcement arrive first
  near.receive();
  auto message = near.new_message();
  message.init_root<test::Blob>().initData(64);
  CHECK(near.sender().stats().arena_bytes_in_use > 0);
  CHECK(near.sender().stats().arena_bytes_in_use <= 4 * KiB);
}

TEST_CASE("queued shared-memory messages are written in batches, and all of them by flush") {
  auto [near, far] = Channel::pair(shared_options().with_send_path(SendPath::shared_memory));
  Random random(15);
  far.send_struct<test::Empty>([](auto) {});  // let the announcement arrive first
  near.receive();
  // Descriptors wait for a batch like pipe frames (one write, one wake-up of the reader
  // for many messages), but a batch is written long before the sender may hold no more.
  for (int i = 0; i < 10; ++i) near.queue(blob_in_place(near, i, 100, random));
  CHECK(near.sender().stats().writes == 0);
  for (int i = 10; i < 100; ++i) near.queue(blob_in_place(near, i, 100, random));
  const std::uint64_t batches = near.sender().stats().writes;
  CHECK(batches >= 2);
  CHECK(batches <= 10);
  near.flush();
  for (int i = 0; i < 100; ++i) {
    auto blob = far.receive_as<test::Blob>();
    CHECK(blob->getSeq() == static_cast<std::uint64_t>(i));
    CHECK(blob_intact(blob.root()));
  }
  CHECK(near.sender().stats().shared_messages == 100);
}

TEST_CASE("SendPath::vmsplice and SendPath::copy keep large messages on the pipe") {
  for (SendPath path : {SendPath::vmsplice, SendPath::copy}) {
    auto [near, far] = Channel::pair(shared_options().with_send_path(path));
    Random random(15);
    std::thread sender([&] { send_blob(near, 0, 4 * MiB, random); });
    CHECK(blob_intact(far.receive_as<test::Blob>().root()));
    sender.join();
    CHECK(near.sender().stats().shared_messages == 0);
    CHECK(near.sender().stats().messages == 1);
  }
}

TEST_CASE("a message of more segments than a descriptor holds inline still crosses whole") {
  // 40 parts from allocate_data(), each a segment of its own in the arena: the descriptor
  // lists 41 segments, more than fit in its inline memory.
  auto [near, far] = Channel::pair(shared_options().with_send_path(SendPath::shared_memory));
  far.send_struct<test::Empty>([](auto) {});  // let the announcement arrive first
  near.receive();
  Random random(22);
  constexpr unsigned kParts = 40;
  auto message = near.new_message();
  auto blob = message.init_root<test::Blob>();
  blob.setSeq(5);
  auto parts = blob.initParts(kParts);
  std::uint64_t sum = 0;
  for (unsigned i = 0; i < kParts; ++i) {
    auto data = message.allocate_data(1000 + i);
    random.fill(data.bytes);
    sum += checksum(data.bytes);
    parts.adopt(i, std::move(data.orphan));
  }
  blob.setChecksum(sum);
  near.send(std::move(message));
  auto received = far.receive_as<test::Blob>(Deadline::after(10s));
  CHECK(received->getParts().size() == kParts);
  CHECK(received->getParts()[kParts - 1].size() == 1000 + kParts - 1);
  CHECK(blob_intact(received.root()));
  CHECK(far.receiver().stats().shared_messages == 1);
}

TEST_CASE("a peer that cannot use shared memory gets large messages by pipe both ways") {
  // The child runs as on a kernel without F_SEAL_FUTURE_WRITE: it does not say it reads
  // shared memory, and its sender does not use it.
  Child child = spawn({.program = CAPNSPLICE_TEST_PEER,
                       .arguments = {"echo-rebuilt"},
                       .environment = {"CAPNSPLICE_DISABLE_SHARED_MEMORY=1"},
                       .channel = shared_options()});
  Random random(23);
  send_blob(child.channel, 99, 10, random);  // time for an announcement that never comes
  child.channel.receive(Deadline::after(10s));
  for (int i = 0; i < 3; ++i) {
    child.channel.send(blob_in_place(child.channel, i, 6 * MiB, random));
    auto echoed = child.channel.receive_as<test::Blob>(Deadline::after(10s));
    CHECK(echoed->getSeq() == static_cast<std::uint64_t>(i));
    CHECK(blob_intact(echoed.root()));
  }
  CHECK(child.channel.sender().stats().shared_memory_available);
  CHECK(child.channel.sender().stats().shared_messages == 0);
  CHECK(child.channel.receiver().stats().shared_messages == 0);
  CHECK(arena_descriptors() == 0);
  child.channel.close_sending();
  CHECK(child.process.wait().success());
}

TEST_CASE("a fork() child building large messages on its parent's channel end keeps off the "
          "parent's arena") {
  // The arena's allocator lives in the shared pages without a lock across processes:
  // both allocating there at once corrupted it (SIGSEGV). The child takes the pipe.
  auto [near, far] = Channel::pair(shared_options());
  Random random(31);
  near.send(blob_in_place(near, 0, 4 * MiB, random));  // the arena exists before the fork
  REQUIRE(blob_intact(far.receive_as<test::Blob>(Deadline::after(10s)).root()));
  const pid_t child = fork_child([&near = near] {
    Random own(32);
    for (int i = 0; i < 200; ++i) {
      auto message = near.new_message();  // built and dropped, never sent
      fill_blob_in_place(message, 1, 4 * MiB, own);
    }
    near.send(blob_in_place(near, 1, 4 * MiB, own));
    return near.sender().stats().shared_messages == 1 ? 0 : 1;  // still only the parent's
  });
  for (int i = 0; i < 200; ++i) {
    auto message = near.new_message();
    fill_blob_in_place(message, 2, 4 * MiB, random);
  }
  auto from_child = far.receive_as<test::Blob>(Deadline::after(30s));
  CHECK(from_child->getSeq() == 1);
  CHECK(blob_intact(from_child.root()));
  CHECK(wait_child(child) == 0);
  near.send(blob_in_place(near, 3, 4 * MiB, random));  // the parent's arena still serves
  auto after = far.receive_as<test::Blob>(Deadline::after(10s));
  CHECK(after->getSeq() == 3);
  CHECK(blob_intact(after.root()));
  CHECK(near.sender().stats().shared_messages == 2);
}

TEST_CASE("a fork() child that drops a message its parent built in the arena leaves the "
          "parent's blocks alone") {
  // The child's copy of the builder names the parent's arena blocks: freeing them there
  // would mark them free in the allocator both processes see, and the parent's next
  // message would be built over the one it still holds.
  auto [near, far] = Channel::pair(shared_options());
  Random random(41);
  auto held = near.new_message();
  fill_blob_in_place(held, 0, 1 * MiB, random);
  REQUIRE(near.sender().stats().arena_bytes_in_use >= 1 * MiB);
  const pid_t child = fork_child([&held] {
    { OutgoingMessage dropped = std::move(held); }
    return 0;
  });
  REQUIRE(wait_child(child) == 0);
  auto next = near.new_message();
  fill_blob_in_place(next, 1, 1 * MiB, random);
  // Built apart, both intact, and both arrive whole.
  const auto held_data = held.get_root<test::Blob>().asReader().getData();
  const auto next_data = next.get_root<test::Blob>().asReader().getData();
  CHECK((next_data.end() <= held_data.begin() || held_data.end() <= next_data.begin()));
  near.send(std::move(held));
  near.send(std::move(next));
  for (std::uint64_t seq = 0; seq < 2; ++seq) {
    auto message = far.receive_as<test::Blob>(Deadline::after(10s));
    CHECK(message->getSeq() == seq);
    CHECK(blob_intact(message.root()));
  }
}

TEST_CASE("a fork() child that sends a message its parent built in the arena sends a copy") {
  // A descriptor would name blocks the parent still holds and may reuse once it drops
  // its own copy of the message: the child copies the bytes into the pipe instead.
  auto [near, far] = Channel::pair(shared_options());
  Random random(43);
  auto held = near.new_message();
  fill_blob_in_place(held, 0, 1 * MiB, random);
  const pid_t child = fork_child([&near = near, &held] {
    near.send(std::move(held));
    const SenderStats stats = near.sender().stats();
    return stats.shared_messages == 0 && stats.copied_messages == 1 ? 0 : 1;
  });
  auto from_child = far.receive_as<test::Blob>(Deadline::after(10s));  // the pipe holds less
  REQUIRE(wait_child(child) == 0);
  { OutgoingMessage dropped = std::move(held); }  // the parent's blocks go back
  auto overwrite = near.new_message();
  fill_blob_in_place(overwrite, 1, 1 * MiB, random);
  near.send(std::move(overwrite));
  auto from_parent = far.receive_as<test::Blob>(Deadline::after(10s));
  CHECK(from_child->getSeq() == 0);
  CHECK(blob_intact(from_child.root()));  // still, with the parent's blocks reused
  CHECK(from_parent->getSeq() == 1);
  CHECK(blob_intact(from_parent.root()));
}
