// A hostile or broken peer process (tests/hostile_peer.cc): each forged or cut frame gets
// its own error, whole messages before it still arrive intact, the receiver never
// commits memory for the sizes a header claims, and the next channel works.
//
// The single-process versions of some of these cases (error_test.cc, frame_test.cc)
// check the parser; here the bytes come from another process, through a real channel.
#include <catch2/catch.hpp>
#include <poll.h>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <algorithm>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "capnsplice/process.h"
#include "support/blob.h"
#include "support/cpu_time.h"
#include "support/process_support.h"
#include "support/resident_memory.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

/// Resident memory a refused peer may cost: the receive ring (4 MiB) and a little heap.
/// Every forged size below is 60 MiB or (much) more.
constexpr std::size_t kMaxResidentGrowth = 24 * MiB;

/// What receiving from a hostile peer came to.
struct HostileRun {
  std::vector<std::uint64_t> intact_seqs;  ///< whole messages received before the error
  std::optional<Error> error;
  std::size_t resident_growth = 0;  ///< VmRSS after the error minus before the spawn
};

/// How long a receive waits: long enough for a slow machine, except once a stalling
/// peer has sent what it sends whole (`stall_after` messages).
constexpr auto kPatientReceive = 10s;
constexpr auto kStalledReceive = 300ms;

/// Spawns the hostile peer in `mode` and receives until the channel fails.
HostileRun receive_from_hostile_peer(const char* mode,
                                     std::optional<std::size_t> stall_after = std::nullopt) {
  HostileRun run;
  const std::size_t resident_before = resident_bytes();
  Child peer = spawn({.program = CAPNSPLICE_HOSTILE_PEER,
                      .arguments = {mode},
                      .channel = ChannelOptions().with_name(mode)});
  while (!run.error) {
    const bool stalled = stall_after && run.intact_seqs.size() >= *stall_after;
    try {
      ReceivedMessage message = peer.channel.receive_for(
          stalled ? std::chrono::nanoseconds(kStalledReceive) : kPatientReceive);
      auto blob = message.root<test::Blob>();
      if (blob_intact(blob)) run.intact_seqs.push_back(blob.getSeq());
    } catch (const Error& error) {
      run.error = error;
    }
  }
  const std::size_t resident_after = resident_bytes();
  run.resident_growth = resident_after > resident_before ? resident_after - resident_before : 0;
  return run;  // `peer`'s handle kills and reaps it
}

/// Checks the run ended with `code`, within bounded memory, and that a new channel to a
/// well-behaved peer carries a message both ways.
void check_refused_then_next_channel_works(const HostileRun& run, ErrorCode code) {
  REQUIRE(run.error.has_value());
  INFO(run.error->what());
  CHECK(run.error->code() == code);
  CHECK(run.resident_growth < kMaxResidentGrowth);

  Child next = spawn_peer({"echo"});
  Random random(7);
  send_blob(next.channel, 42, 1000, random);
  auto echoed = next.channel.receive_for(10s);
  CHECK(echoed.root<test::Blob>().getSeq() == 42);
  CHECK(blob_intact(echoed.root<test::Blob>()));
}

/// Spawns the hostile peer in an arena `mode`, with a send timeout for the tests that
/// send to it.
Child spawn_arena_peer(const char* mode) {
  return spawn({.program = CAPNSPLICE_HOSTILE_PEER,
                .arguments = {mode},
                .channel = ChannelOptions().with_name(mode).with_send_timeout(10s)});
}

/// The next message from `channel`, sending to the peer meanwhile: this end reads its
/// control link when its sender asks whether the peer reads shared memory (before each
/// object over the threshold), so sending keeps the peer's records flowing.
ReceivedMessage receive_while_sending(Channel& channel) {
  std::atomic<bool> received{false};
  std::thread sender([&] {
    Random random(8);
    while (!received) send_blob(channel, 0, 2 * MiB, random);
  });
  struct StopSending {
    std::atomic<bool>& received;
    std::thread& sender;
    ~StopSending() {
      received = true;
      sender.join();
    }
  } stop{received, sender};
  return channel.receive_for(30s);
}

}  // namespace

TEST_CASE("a peer declaring 2^32 segments gets MalformedFrame, and the next channel works") {
  HostileRun run = receive_from_hostile_peer("forged-count");
  check_refused_then_next_channel_works(run, ErrorCode::MalformedFrame);
  CHECK_THAT(run.error->what(), Catch::Contains("declares 4294967296 segments"));
}

TEST_CASE("a peer whose segment words sum to 2^32 gets MessageTooLarge, not a wrapped zero") {
  HostileRun run = receive_from_hostile_peer("wrapping-words");
  check_refused_then_next_channel_works(run, ErrorCode::MessageTooLarge);
  // 16 bytes of table + (1 + 2^32-1) words: what a 32-bit word sum would call 0.
  CHECK_THAT(run.error->what(), Catch::Contains("frame of 34359738384 bytes"));
}

TEST_CASE(
    "a peer whose segment bytes sum to 4 GiB gets MessageTooLarge as the sum passes "
    "the limit") {
  HostileRun run = receive_from_hostile_peer("wrapping-bytes");
  check_refused_then_next_channel_works(run, ErrorCode::MessageTooLarge);
  // 512 segments of 8 MiB, each within the limit: refused at the 8th, 2056 + 8 * 8 MiB.
  CHECK_THAT(run.error->what(),
             Catch::Contains("frame of at least 67110920 bytes exceeds the limit of 67108864"));
}

TEST_CASE("a peer announcing a 128 MiB segment gets MessageTooLarge without the memory") {
  HostileRun run = receive_from_hostile_peer("over-limit");
  check_refused_then_next_channel_works(run, ErrorCode::MessageTooLarge);
  CHECK_THAT(run.error->what(), Catch::Contains("frame of 134217736 bytes"));
}

TEST_CASE(
    "a peer that exits halfway through a message gets TruncatedMessage after its "
    "whole messages") {
  HostileRun run = receive_from_hostile_peer("truncate");
  check_refused_then_next_channel_works(run, ErrorCode::TruncatedMessage);
  CHECK(run.intact_seqs == std::vector<std::uint64_t>{0});
  CHECK_THAT(run.error->what(), Catch::Contains("4008 bytes into a frame of 8008 bytes"));
}

TEST_CASE(
    "garbage after valid frames is MalformedFrame once the valid messages arrived "
    "intact") {
  HostileRun run = receive_from_hostile_peer("garbage");
  check_refused_then_next_channel_works(run, ErrorCode::MalformedFrame);
  CHECK(run.intact_seqs == std::vector<std::uint64_t>{0, 1, 2});
}

TEST_CASE("a peer stalling inside a 60 MiB frame times the receive out without the memory") {
  HostileRun run = receive_from_hostile_peer("stall", /*stall_after=*/1);
  check_refused_then_next_channel_works(run, ErrorCode::Timeout);
  CHECK(run.intact_seqs == std::vector<std::uint64_t>{0});
}

TEST_CASE("a descriptor from a peer that announced no arena is MalformedFrame") {
  HostileRun run = receive_from_hostile_peer("forged-descriptor");
  check_refused_then_next_channel_works(run, ErrorCode::MalformedFrame);
  CHECK(run.intact_seqs == std::vector<std::uint64_t>{0});
  CHECK_THAT(run.error->what(), Catch::Contains("announced no shared-memory arena"));
}

TEST_CASE("a descriptor naming an arena the peer has not sent is ProtocolViolation at once, "
          "and try_receive does not wait for the arena") {
  Child peer = spawn_arena_peer("descriptor-ahead");
  auto first = peer.channel.receive_for(kPatientReceive);
  REQUIRE(blob_intact(first.root<test::Blob>()));
  std::optional<Error> error;
  std::chrono::steady_clock::duration longest_call{};
  const auto give_up = std::chrono::steady_clock::now() + 10s;
  while (!error && std::chrono::steady_clock::now() < give_up) {
    const auto started = std::chrono::steady_clock::now();
    try {
      static_cast<void>(peer.channel.try_receive());
    } catch (const Error& caught) {
      error = caught;
    }
    longest_call = std::max(longest_call, std::chrono::steady_clock::now() - started);
  }
  REQUIRE(error.has_value());
  CHECK(error->code() == ErrorCode::ProtocolViolation);
  CHECK_THAT(error->what(), Catch::Contains("names arena 2, which the peer had not sent"));
  // It used to wait 1 s for the arena record; the bound is generous for loaded machines.
  CHECK(longest_call < 500ms);
}

TEST_CASE("a descriptor whose bytes Cap'n Proto cannot read is ProtocolViolation, not a "
          "kj::Exception") {
  Child peer = spawn_arena_peer("corrupt-descriptor");
  auto first = peer.channel.receive_for(kPatientReceive);
  REQUIRE(blob_intact(first.root<test::Blob>()));
  Error error = receive_until_error(peer.channel);  // catches capnsplice::Error only
  CHECK(error.code() == ErrorCode::ProtocolViolation);
  CHECK_THAT(error.what(), Catch::Contains("shared-memory descriptor"));
}

TEST_CASE("a peer that exits right after sending a shared-memory message still delivers it, "
          "then PeerClosed") {
  Child peer = spawn_arena_peer("arena-then-exit");
  REQUIRE(peer.process.wait().success());  // gone before this end read anything
  CHECK(peer.channel.receive_as<test::Blob>(Deadline::after(kPatientReceive))->getSeq() == 0);
  auto shared = peer.channel.receive_as<test::Blob>(Deadline::after(kPatientReceive));
  CHECK(shared->getSeq() == 1);
  CHECK(blob_intact(shared.root()));
  CHECK(peer.channel.receiver().stats().shared_messages == 1);
  CHECK(receive_until_error(peer.channel).code() == ErrorCode::PeerClosed);
}

TEST_CASE("a peer that never reads its control link is ProtocolViolation once the releases "
          "owed to it pass their bound, and they cost bounded memory") {
  HostileRun run = receive_from_hostile_peer("release-flood");
  REQUIRE(run.error.has_value());
  INFO(run.error->what());
  CHECK(run.error->code() == ErrorCode::ProtocolViolation);
  CHECK_THAT(run.error->what(), Catch::Contains("does not read its control link"));
  CHECK(run.intact_seqs.size() > 256);   // the socket buffer and the bound took that many
  CHECK(run.intact_seqs.size() < 2000);  // not every one: the bound stopped it
  CHECK(run.resident_growth < kMaxResidentGrowth);
}

TEST_CASE("an arena memfd without F_SEAL_FUTURE_WRITE is ProtocolViolation") {
  HostileRun run = receive_from_hostile_peer("unsealed-arena");
  check_refused_then_next_channel_works(run, ErrorCode::ProtocolViolation);
  CHECK(run.intact_seqs == std::vector<std::uint64_t>{0});
  CHECK_THAT(run.error->what(), Catch::Contains("lacks F_SEAL_FUTURE_WRITE"));
}

TEST_CASE("a flood of arena records costs no descriptors, and a flooded arena is refused") {
  HostileRun run;
  Child peer = spawn_arena_peer("arena-flood");
  const std::size_t resident_before = resident_bytes();
  auto first = peer.channel.receive_for(kPatientReceive);  // in the first arena
  REQUIRE(blob_intact(first.root<test::Blob>()));
  CHECK(peer.channel.receiver().stats().shared_messages == 1);
  make_thread_wake_fd();
  const int fds_before = open_fd_count();
  // The peer sends seq 1 only once this end has read all 1000 records (1500 descriptors).
  auto after_flood = receive_while_sending(peer.channel);
  CHECK(after_flood.root<test::Blob>().getSeq() == 1);
  CHECK(open_fd_count() <= fds_before + 1);  // the latest arena's, not taken yet
  run.error = receive_until_error(peer.channel);
  const std::size_t resident_after = resident_bytes();
  run.resident_growth = resident_after > resident_before ? resident_after - resident_before : 0;
  check_refused_then_next_channel_works(run, ErrorCode::ProtocolViolation);
  CHECK_THAT(run.error->what(),
             Catch::Contains("names arena 500, but the latest arena the peer announced is 1000"));
}

TEST_CASE("arena announcements whose id is not above the latest are dropped with their "
          "descriptors") {
  Child peer = spawn_arena_peer("arena-stale");
  auto first = peer.channel.receive_for(kPatientReceive);  // in arena 5
  REQUIRE(blob_intact(first.root<test::Blob>()));
  make_thread_wake_fd();  // a receive that blocks below would make it: not the arenas'
  const int fds_before = open_fd_count();
  // Seq 2 comes once this end has read the second arena 5 and the arena 4.
  CHECK(receive_while_sending(peer.channel).root<test::Blob>().getSeq() == 2);
  CHECK(open_fd_count() <= fds_before);  // neither was kept
  // Arena 5 is still the first one announced: the message in it reads as before.
  auto again = peer.channel.receive_for(kPatientReceive);
  CHECK(again.root<test::Blob>().getSeq() == 0);
  CHECK(blob_intact(again.root<test::Blob>()));
  Error error = receive_until_error(peer.channel);
  CHECK(error.code() == ErrorCode::ProtocolViolation);
  CHECK_THAT(error.what(),
             Catch::Contains("names arena 4, but the latest arena the peer announced is 5"));
}

TEST_CASE("a descriptor naming a replaced arena is ProtocolViolation, and messages still read "
          "the replaced arena") {
  Child peer = spawn_arena_peer("arena-replaced");
  auto in_first = peer.channel.receive_for(kPatientReceive);
  auto in_second = peer.channel.receive_for(kPatientReceive);
  CHECK(in_first.root<test::Blob>().getSeq() == 0);
  CHECK(in_second.root<test::Blob>().getSeq() == 1);
  CHECK(peer.channel.receiver().stats().shared_messages == 2);
  // Mapping arena 2 dropped this end's reference to arena 1, not the message's.
  CHECK(blob_intact(in_first.root<test::Blob>()));
  CHECK(blob_intact(in_second.root<test::Blob>()));
  Error error = receive_until_error(peer.channel);
  CHECK(error.code() == ErrorCode::ProtocolViolation);
  CHECK_THAT(error.what(),
             Catch::Contains("names arena 1, but the latest arena the peer announced is 2"));
}

TEST_CASE("a receiver cannot write the sender's arena through the memfd it is sent") {
  Child peer = spawn_arena_peer("write-arena");
  // The peer said it reads shared memory before sending this.
  CHECK(peer.channel.receive_for(kPatientReceive).root<test::Blob>().getSeq() == 0);
  Random random(9);
  auto message = peer.channel.new_message();
  fill_blob_in_place(message, 1, 4 * MiB, random);
  peer.channel.send(std::move(message));
  REQUIRE(peer.channel.sender().stats().shared_messages == 1);
  auto verdict = peer.channel.receive_for(kPatientReceive);
  const auto data = verdict.root<test::Blob>().getData();
  const std::string attempts(reinterpret_cast<const char*>(data.begin()), data.size());
  INFO(attempts);
  CHECK_THAT(attempts, Catch::Contains("mmap(PROT_READ, MAP_SHARED): ALLOWED"));  // it is the arena
  // What Linux refuses for F_SEAL_FUTURE_WRITE (each is allowed without it).
  CHECK_THAT(attempts, Catch::Contains("mmap(PROT_READ | PROT_WRITE, MAP_SHARED): refused"));
  CHECK_THAT(attempts, Catch::Contains("write(): refused"));
  CHECK_THAT(attempts, Catch::Contains("mprotect(PROT_WRITE) of the read-only mapping: refused"));
  CHECK_THAT(attempts, Catch::Contains("fallocate(FALLOC_FL_PUNCH_HOLE): refused"));
  CHECK_THAT(attempts, Catch::Contains("write() through /proc/self/fd reopened O_RDWR: refused"));
}

TEST_CASE("doorbell records that carry no sealed page, or come after the first, cost no "
          "descriptors and leave the receiver polling the pipe") {
  Child peer = spawn({.program = CAPNSPLICE_HOSTILE_PEER,
                      .arguments = {"doorbell-flood"},
                      .channel = ChannelOptions().with_name("doorbell-flood").with_doorbell()});
  make_thread_wake_fd();
  const int fds_before = open_fd_count();
  // The receiver stops looking at the link once it refused a doorbell, so it must see
  // all 64 records (96 descriptors) at its first look: the peer writes message 0 after
  // them, and messages 1 and 2 only once this end has read them all.
  pollfd readable{peer.channel.receiver().fd(), POLLIN, 0};
  REQUIRE(::poll(&readable, 1, 10'000) == 1);
  std::vector<std::uint64_t> seqs;
  const auto give_up = std::chrono::steady_clock::now() + kPatientReceive;
  while (seqs.size() < 3 && std::chrono::steady_clock::now() < give_up) {
    if (auto message = peer.channel.try_receive()) {
      REQUIRE(blob_intact(message->root<test::Blob>()));
      seqs.push_back(message->root<test::Blob>().getSeq());
    }
  }
  CHECK(seqs == std::vector<std::uint64_t>{0, 1, 2});
  CHECK_FALSE(peer.channel.receiver().stats().doorbell);  // the first was refused
  CHECK(open_fd_count() <= fds_before);
}

TEST_CASE("a doorbell that rings without bytes does not keep a waiting receive spinning") {
  Child peer = spawn({.program = CAPNSPLICE_HOSTILE_PEER,
                      .arguments = {"ringing-doorbell"},
                      .channel = ChannelOptions().with_name("ringing-doorbell").with_doorbell()});
  REQUIRE(peer.channel.receive_for(kPatientReceive).root<test::Blob>().getSeq() == 0);
  const auto give_up = std::chrono::steady_clock::now() + kPatientReceive;
  while (!peer.channel.receiver().stats().doorbell && std::chrono::steady_clock::now() < give_up) {
    REQUIRE_FALSE(peer.channel.try_receive());
  }
  REQUIRE(peer.channel.receiver().stats().doorbell);
  const auto cpu_before = thread_cpu_time();
  for (int i = 0; i < 10; ++i) {
    // The read finds the pipe empty: the receive starts on a quiet doorbell, which rings
    // 20 us later without a byte.
    REQUIRE_FALSE(peer.channel.try_receive());
    const Error error = error_from([&peer] { peer.channel.receive_for(50ms); });
    CHECK(error.code() == ErrorCode::Timeout);
  }
  const auto cpu_used = thread_cpu_time() - cpu_before;
  // Spinning through the waits would take most of their 500 ms; each sleeps after one
  // ring that brought nothing.
  CHECK(cpu_used < 100ms);
}
