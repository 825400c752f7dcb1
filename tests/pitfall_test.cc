// The pitfall: after vmsplice the pipe references the sender's pages, so bytes handed
// to vmsplice must stay untouched until the reader has consumed them.
//
// The sender here reuses pool memory as soon as the pool allows and scribbles over
// every byte it is given, while a reader in another process checks the checksum of
// every message. Built twice:
//  * against the real library: 1 GiB of mixed sizes, zero mismatches allowed;
//  * against a deliberately broken build that reclaims memory the moment it is
//    written (CAPNSPLICE_TESTING_EARLY_RECLAIM): mismatches must be detected, which
//    proves the first test would catch early reuse.
#include <catch2/catch.hpp>
#include <cstring>
#include <thread>

#include "capnsplice/channel.h"
#include "support/blob.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

#ifdef CAPNSPLICE_EXPECT_EARLY_RECLAIM
constexpr std::uint64_t kStreamBytes = 64 * MiB;
#else
constexpr std::uint64_t kStreamBytes = 1024 * MiB;
#endif

/// Reads blobs until end of stream, checking each, and answers with a Report.
int check_every_message(Channel& channel) {
  std::uint64_t messages = 0, bytes = 0, mismatches = 0, out_of_order = 0, frame_errors = 0;
  Random pauses(99);
  for (;;) {
    std::optional<ReceivedMessage> message;
    try {
      message = channel.receive();
    } catch (const Error& error) {
      // A corrupted segment table desynchronises the stream: report and stop.
      frame_errors += error.code() != ErrorCode::PeerClosed;
      break;
    }
    try {
      auto blob = message->root<test::Blob>();
      mismatches += !blob_intact(blob);
      out_of_order += blob.getSeq() != messages;
      bytes += blob_size(blob);
    } catch (const kj::Exception&) {
      ++mismatches;  // overwritten so badly that the structure itself is invalid
    }
    ++messages;
    // Fall behind now and then, so the sender runs into a full pool and must wait
    // for exactly the pages this reader has not consumed yet.
    if (pauses.below(16) == 0) std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  auto reply = channel.new_message();
  auto report = reply.init_root<test::Report>();
  report.setMessages(messages);
  report.setBytes(bytes);
  report.setMismatches(mismatches);
  report.setOutOfOrder(out_of_order);
  report.setFrameErrors(frame_errors);
  channel.send(std::move(reply));
  return 0;
}

/// Overwrites every byte the pools will hand out next with 0xA5, then drops it unsent.
void scribble_over_free_pool_memory(Channel& channel, Random& random) {
  auto scratch = channel.new_message();
  auto data =
      scratch.init_root<test::Blob>().initData(static_cast<unsigned>(1 + random.below(120 * KiB)));
  std::memset(data.begin(), 0xA5, data.size());
  auto unzeroed = scratch.allocate_data(1 + random.below(120 * KiB));
  std::memset(unzeroed.bytes.begin(), 0xA5, unzeroed.bytes.size());
}

}  // namespace

TEST_CASE("reused pool memory never changes a message the reader has not consumed") {
  const auto options = ChannelOptions()
                           .with_name("pitfall")
                           .with_pool_bytes(256 * KiB)
                           .with_pipe_bytes(64 * KiB)
                           .with_copy_threshold_bytes(4 * KiB);
  auto [sender_end, reader_end] = Channel::pair(options);
  pid_t reader = fork_child([&reader_end = reader_end, &sender_end = sender_end] {
    { Channel dropped = std::move(sender_end); }
    return check_every_message(reader_end);
  });
  { Channel dropped = std::move(reader_end); }

  Random random(2024);
  std::uint64_t sent = 0, sent_bytes = 0;
  bool reader_quit = false;
  try {
    while (sent_bytes < kStreamBytes) {
      scribble_over_free_pool_memory(sender_end, random);
      // Mostly spliced sizes around the pool's size, some tiny (copied), some larger
      // than the pool (dedicated memory).
      const std::uint64_t kind = random.below(16);
      const std::size_t size = kind == 0   ? random.below(2 * KiB)
                               : kind == 1 ? 300 * KiB + random.below(400 * KiB)
                                           : 4 * KiB + random.below(200 * KiB);
      if (random.below(3) == 0) {  // one in three filled in place (the data pool)
        auto message = sender_end.new_message();
        fill_blob_in_place(message, sent, size, random);
        sender_end.send(std::move(message));
      } else {
        send_blob(sender_end, sent, size, random);
      }
      ++sent;
      sent_bytes += size;
    }
    sender_end.close_sending();
  } catch (const Error& error) {
    if (error.code() != ErrorCode::PeerClosed) throw;
    reader_quit = true;  // the reader stopped early; its report is in the pipe
  }
  auto report = sender_end.receive_as<test::Report>();
  CHECK(wait_child(reader) == 0);
  INFO("sent " << sent << " messages, " << sent_bytes << " payload bytes; pool waits "
               << sender_end.sender().stats().waits_for_reader << "; reader saw "
               << report->getMessages() << " messages, " << report->getMismatches()
               << " mismatches, " << report->getFrameErrors() << " frame errors");
#ifdef CAPNSPLICE_EXPECT_EARLY_RECLAIM
  CHECK(report->getMismatches() + report->getFrameErrors() > 0);
#else
  CHECK_FALSE(reader_quit);
  CHECK(report->getFrameErrors() == 0);
  CHECK(report->getMessages() == sent);
  CHECK(report->getBytes() == sent_bytes);
  CHECK(report->getOutOfOrder() == 0);
  CHECK(report->getMismatches() == 0);
  CHECK(sender_end.sender().stats().spliced_messages > sent / 2);
  CHECK(sender_end.sender().stats().waits_for_reader > 0);
#endif
}
