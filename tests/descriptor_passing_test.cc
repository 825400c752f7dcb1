// Descriptors attached to messages (OutgoingMessage::attach): they arrive with their
// message whatever path it takes, work on the other side, are bounded by the receiver's
// limits, and never leak.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>
#include <thread>
#include <vector>

#include "capnsplice/channel.h"
#include "capnsplice/process.h"
#include "descriptor_inbox.h"
#include "support/blob.h"
#include "support/descriptors.h"
#include "support/process_support.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

/// Sends blob `seq` of `size` bytes with one memfd per entry of `texts` attached.
void send_with(Channel& channel, std::uint64_t seq, std::size_t size,
               const std::vector<std::string>& texts, Random& random) {
  OutgoingMessage message = channel.new_message();
  fill_blob(message.init_root<test::Blob>(), seq, size, random);
  for (const auto& text : texts) message.attach(memfd_with(text));
  channel.send(std::move(message), Deadline::after(10s));
}

/// Receives blob `seq`, intact, and returns the contents of the memfds that came with it.
std::vector<std::string> receive_with(Channel& channel, std::uint64_t seq) {
  ReceivedMessage message = channel.receive(Deadline::after(10s));
  auto blob = message.root<test::Blob>();
  CHECK(blob.getSeq() == seq);
  CHECK(blob_intact(blob));
  std::vector<std::string> texts;
  for (const UniqueFd& fd : message.take_descriptors()) {
    CHECK((::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC) != 0);
    texts.push_back(first_bytes(fd.get()));
  }
  CHECK(message.descriptor_count() == 0);
  return texts;
}

}  // namespace

TEST_CASE(
    "descriptors attached to a message arrive with it, in order, by every path a message "
    "takes") {
  auto [near, far] = Channel::pair(
      ChannelOptions().with_send_timeout(10s).with_shared_memory_threshold_bytes(128 * KiB));
  Random random(1);
  // Copied, spliced, and large enough for the shared-memory path (which a message with
  // descriptors leaves for the pipe; small enough for the pipe, as one thread reads).
  const std::size_t sizes[] = {100, 64 * KiB, 256 * KiB};
  std::uint64_t seq = 0;
  for (std::size_t size : sizes) {
    INFO("payload " << size);
    const std::vector<std::string> texts = {"first " + std::to_string(size),
                                            "second " + std::to_string(size)};
    send_with(near, seq, size, texts, random);
    CHECK(receive_with(far, seq) == texts);
    ++seq;
    send_with(far, seq, size, {"back"}, random);  // and the other way
    CHECK(receive_with(near, seq) == std::vector<std::string>{"back"});
    ++seq;
  }
  const SenderStats sent = near.sender().stats();
  CHECK(sent.descriptor_messages == 3);
  CHECK(sent.shared_messages == 0);
  if (sent.vmsplice_aliases_pages) CHECK(sent.spliced_messages >= 1);
  CHECK(sent.copied_messages >= 1);
  CHECK(far.receiver().stats().descriptor_messages == 3);
}

TEST_CASE("a socket and a pipe end passed with messages work on the other side") {
  auto [near, far] = Channel::pair(ChannelOptions().with_send_timeout(10s));
  int sockets[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sockets) == 0);
  UniqueFd kept_socket(sockets[0]);
  int ends[2];
  REQUIRE(::pipe2(ends, O_CLOEXEC) == 0);
  UniqueFd read_end(ends[0]);

  OutgoingMessage message = near.new_message();
  message.init_root<test::Blob>().setSeq(9);
  message.attach(UniqueFd(sockets[1]));
  message.attach(UniqueFd(ends[1]));
  CHECK(message.attached() == 2);
  near.send(std::move(message), Deadline::after(10s));

  ReceivedMessage received = far.receive(Deadline::after(10s));
  CHECK(received.root<test::Blob>().getSeq() == 9);
  std::vector<UniqueFd> fds = received.take_descriptors();
  REQUIRE(fds.size() == 2);
  REQUIRE(::write(fds[0].get(), "socket", 6) == 6);
  REQUIRE(::write(fds[1].get(), "pipe", 4) == 4);
  char buffer[16] = {};
  CHECK(::read(kept_socket.get(), buffer, sizeof buffer) == 6);
  CHECK(std::string(buffer, 6) == "socket");
  CHECK(::read(read_end.get(), buffer, sizeof buffer) == 4);
  CHECK(std::string(buffer, 4) == "pipe");
}

TEST_CASE(
    "10,000 messages with and without descriptors each get their own, and no descriptor "
    "is left behind on either side") {
  // A small receive ring as well: larger frames then arrive in buffers of their own,
  // over several reads.
  const std::size_t ring_bytes = GENERATE(std::size_t{4} * MiB, std::size_t{64} * KiB);
  INFO("receive ring of " << ring_bytes << " bytes");
  make_thread_wake_fd();
  const int fds_before = open_fd_count();
  {
    auto [near, far] = Channel::pair(
        ChannelOptions().with_send_timeout(10s).with_receive_buffer_bytes(ring_bytes));
    Random random(2);
    constexpr std::uint64_t kMessages = 10000;
    std::vector<std::vector<std::string>> sent;
    std::uint64_t received = 0;
    for (std::uint64_t seq = 0; seq < kMessages; ++seq) {
      const std::size_t size = random.below(8) == 0 ? random.below(300 * KiB) : random.below(2000);
      std::vector<std::string> texts;
      for (std::size_t i = random.below(4); i > 0; --i) texts.push_back(std::to_string(seq * 10 + i));
      send_with(near, seq, size + 1, texts, random);
      sent.push_back(std::move(texts));
      // The reader lags behind by a few messages, so records wait for their frames.
      if (random.below(3) == 0 || seq + 1 == kMessages) {
        for (; received <= seq; ++received) {
          INFO("message " << received);
          CHECK(receive_with(far, received) == sent[received]);
        }
      }
    }
    CHECK(received == kMessages);
  }
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("a message dropped unsent closes its descriptors") {
  auto [near, far] = Channel::pair();
  make_thread_wake_fd();
  const int fds_before = open_fd_count();
  {
    OutgoingMessage message = near.new_message();
    message.init_root<test::Blob>();
    message.attach(memfd_with("never sent"));
    message.attach_copy(STDERR_FILENO);
    CHECK(open_fd_count() == fds_before + 2);
  }
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE(
    "a message with more descriptors than the peer takes is refused before anything is "
    "sent, and the channel works on") {
  auto [near, far] = Channel::pair(ChannelOptions().with_descriptor_limits(2, 64));
  OutgoingMessage message = near.new_message();
  message.init_root<test::Blob>().setSeq(1);
  for (int i = 0; i < 3; ++i) message.attach(memfd_with("x"));
  Error error = error_from([&] { near.send(std::move(message), Deadline::after(10s)); });
  CHECK(error.code() == ErrorCode::InvalidArgument);
  CHECK_THAT(error.what(), Catch::Contains("the peer takes at most 2 per message"));
  CHECK(message.attached() == 3);  // still the caller's, whole
  CHECK(bool(message));

  Random random(3);
  send_with(near, 2, 100, {"a", "b"}, random);
  CHECK(receive_with(far, 2) == std::vector<std::string>{"a", "b"});
}

TEST_CASE(
    "a sender keeps no more descriptors in flight than the receiver holds waiting: it waits "
    "until the receiver took some, and a send that gave up can be sent again") {
  auto [near, far] = Channel::pair(ChannelOptions().with_descriptor_limits(2, 4));
  Random random(4);
  send_with(near, 0, 100, {"0a", "0b"}, random);
  send_with(near, 1, 100, {"1a", "1b"}, random);
  OutgoingMessage third = near.new_message();
  fill_blob(third.init_root<test::Blob>(), 2, 100, random);
  third.attach(memfd_with("2a"));
  third.attach(memfd_with("2b"));
  Error error = error_from([&] { near.send(std::move(third), Deadline::after(50ms)); });
  CHECK(error.code() == ErrorCode::Timeout);
  CHECK_THAT(error.what(), Catch::Contains("the peer holds 4 descriptors it has not received "
                                           "yet, and takes at most 4 waiting"));
  CHECK(third.attached() == 2);  // not taken: still the caller's, whole

  CHECK(receive_with(far, 0) == std::vector<std::string>{"0a", "0b"});
  near.send(std::move(third), Deadline::after(10s));  // room again: the same message
  CHECK(receive_with(far, 1) == std::vector<std::string>{"1a", "1b"});
  CHECK(receive_with(far, 2) == std::vector<std::string>{"2a", "2b"});
}

TEST_CASE(
    "a message dropped after its descriptors went ahead cancels them: the receiver closes "
    "them and the sender may send as many again") {
  auto [near, far] = Channel::pair(
      ChannelOptions().with_descriptor_limits(2, 2).with_max_unsent_bytes(1 * MiB).with_send_path(
          SendPath::copy));
  Random random(8);
  send_with(near, 0, 100, {"makes the control link"}, random);
  CHECK(receive_with(far, 0).size() == 1);
  make_thread_wake_fd();
  const int fds_before = open_fd_count();

  // A message the pipe and queue cannot take now leaves the next one with the caller.
  OutgoingMessage large = near.new_message();
  fill_blob(large.init_root<test::Blob>(), 1, 3 * MiB, random);
  REQUIRE(near.try_send(std::move(large)) == SendStatus::queued);
  {
    OutgoingMessage dropped = near.new_message();
    fill_blob(dropped.init_root<test::Blob>(), 99, 100, random);
    dropped.attach(memfd_with("never"));
    dropped.attach(memfd_with("sent"));
    REQUIRE(near.try_send(std::move(dropped)) == SendStatus::queue_full);
    CHECK(dropped.attached() == 2);  // they went ahead, the message stayed
    CHECK_THROWS_AS(dropped.attach(memfd_with("more")), Error);
  }  // dropped here, unsent

  std::thread reader([&far = far] { CHECK(receive_with(far, 1).empty()); });
  near.flush(Deadline::after(10s));
  reader.join();
  // Two more: the cancelled two no longer count against the receiver's limit of 2.
  OutgoingMessage next = near.new_message();
  fill_blob(next.init_root<test::Blob>(), 2, 100, random);
  next.attach(memfd_with("2a"));
  next.attach(memfd_with("2b"));
  near.send(std::move(next), Deadline::after(10s));
  CHECK(receive_with(far, 2) == std::vector<std::string>{"2a", "2b"});
  CHECK(open_fd_count() == fds_before);  // the cancelled ones were closed over there
}

TEST_CASE(
    "a peer that does not take descriptors is never sent any: a plain Cap'n Proto child and "
    "an end with a limit of 0 time out with nothing sent") {
  auto [near, far] = Channel::pair(ChannelOptions().with_descriptor_limits(0, 0));
  OutgoingMessage message = near.new_message();
  message.init_root<test::Blob>().setSeq(1);
  message.attach(memfd_with("x"));
  Error error = error_from([&] { near.send(std::move(message), Deadline::after(50ms)); });
  CHECK(error.code() == ErrorCode::Timeout);
  CHECK_THAT(error.what(), Catch::Contains("has not said that it takes descriptors"));
  CHECK(message.attached() == 1);
  CHECK_FALSE(far.try_receive().has_value());

  Child plain = spawn_peer({"plain"});
  OutgoingMessage to_plain = plain.channel.new_message();
  to_plain.init_root<test::Blob>().setSeq(2);
  to_plain.attach(memfd_with("y"));
  Error refused = error_from([&] { plain.channel.send(std::move(to_plain), Deadline::after(50ms)); });
  CHECK(refused.code() == ErrorCode::Timeout);
  // Nothing reached the child: the next message is the one it echoes.
  plain.channel.send_struct<test::Blob>([](test::Blob::Builder blob) { blob.setSeq(3); });
  CHECK(plain.channel.receive_as<test::Blob>(Deadline::after(10s))->getSeq() == 3);
  CHECK(plain.process.wait().success());
}

TEST_CASE("an end made of bare pipes cannot send descriptors and says why") {
  int to_far[2];
  int to_near[2];
  REQUIRE(::pipe2(to_far, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(to_near, O_CLOEXEC) == 0);
  Channel near = Channel::from_fds(UniqueFd(to_near[0]), UniqueFd(to_far[1]));
  Channel far = Channel::from_fds(UniqueFd(to_far[0]), UniqueFd(to_near[1]));
  OutgoingMessage message = near.new_message();
  message.init_root<test::Blob>();
  message.attach(memfd_with("x"));
  Error error = error_from([&] { near.send(std::move(message), Deadline::after(1s)); });
  CHECK(error.code() == ErrorCode::InvalidArgument);
  CHECK_THAT(error.what(), Catch::Contains("no control link"));
}

TEST_CASE("descriptors passed to a forked child work there, and its answers bring some back") {
  Child child = fork_with_channel([](Channel& parent) {
    ReceivedMessage message = parent.receive(Deadline::after(10s));
    std::vector<UniqueFd> fds = message.take_descriptors();
    if (fds.size() != 1 || first_bytes(fds[0].get()) != "from parent") return 1;
    OutgoingMessage answer = parent.new_message();
    answer.init_root<test::Blob>().setSeq(2);
    answer.attach(memfd_with("from child"));
    parent.send(std::move(answer), Deadline::after(10s));
    return 0;
  }, ChannelOptions().with_send_timeout(10s));
  Random random(5);
  send_with(child.channel, 1, 100, {"from parent"}, random);
  ReceivedMessage answer = child.channel.receive(Deadline::after(10s));
  std::vector<UniqueFd> fds = answer.take_descriptors();
  REQUIRE(fds.size() == 1);
  CHECK(first_bytes(fds[0].get()) == "from child");
  CHECK(child.process.wait().success());
}

TEST_CASE(
    "a marked frame of descriptors from a peer that sent no descriptor record is "
    "MalformedFrame") {
  // Written by hand: a table of 3 segments (0, 4 and 1 words), an Attachment naming
  // record 1 of 1 descriptor, and an empty struct as the message. No record is sent.
  const std::string frame =
      "02000000" "00000000" "04000000" "01000000"
      "0000000003000000" "636e73706c666473" "0100000000000000" "0100000000000000"
      "0000000000000000";
  Child child = spawn_peer({"send-frame", frame});
  Error error = error_from([&] { child.channel.receive(Deadline::after(10s)); });
  CHECK(error.code() == ErrorCode::MalformedFrame);
  CHECK_THAT(error.what(), Catch::Contains("a marked frame with descriptors from a peer that "
                                           "sent none"));
}

TEST_CASE(
    "records of descriptors that break the limits or their own count keep no descriptor, "
    "and their message fails with ProtocolViolation") {
  using detail::DescriptorInbox;
  ReceiveLimits limits;
  limits.max_descriptors_per_message = 2;
  limits.max_descriptors_waiting = 3;
  auto fds = [](std::size_t count) {
    std::vector<UniqueFd> made;
    for (std::size_t i = 0; i < count; ++i) made.push_back(memfd_with(std::to_string(i)));
    return made;
  };
  make_thread_wake_fd();
  const int fds_before = open_fd_count();
  DescriptorInbox inbox;
  CHECK_FALSE(inbox.any_filed());
  inbox.file(1, 3, fds(3), false, limits);  // more than one message may carry
  inbox.file(2, 2, fds(1), false, limits);  // fewer than its record says
  inbox.file(3, 1, fds(1), true, limits);   // the kernel closed some (MSG_CTRUNC)
  inbox.file(4, 2, fds(2), false, limits);  // kept
  inbox.file(5, 2, fds(2), false, limits);  // 2 + 2 waiting: more than 3
  CHECK(inbox.any_filed());
  CHECK(inbox.waiting() == 2);
  CHECK(open_fd_count() == fds_before + 2);
  const struct {
    std::uint64_t sequence;
    const char* says;
  } refused[] = {
      {1, "are more than ReceiveLimits::max_descriptors_per_message (2)"},
      {2, "are not the 2 its record says"},
      {3, "did not all arrive"},
      {5, "more than ReceiveLimits::max_descriptors_waiting (3)"},
  };
  for (const auto& bad : refused) {
    Error error = error_from([&] { static_cast<void>(inbox.take(bad.sequence, 1, "test")); });
    CHECK(error.code() == ErrorCode::ProtocolViolation);
    CHECK_THAT(error.what(), Catch::Contains(bad.says));
  }
  CHECK_FALSE(inbox.take(6, 1, "test").has_value());  // never came
  Error miscounted = error_from([&] { static_cast<void>(inbox.take(4, 1, "test")); });
  CHECK_THAT(miscounted.what(), Catch::Contains("says it carries 1 descriptors, its record "
                                                "brought 2"));
  CHECK(inbox.waiting() == 0);
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("an inbox keeps a bounded number of records and closes the oldest one's descriptors") {
  using detail::DescriptorInbox;
  using detail::kMaxFiledRecords;
  make_thread_wake_fd();
  const int fds_before = open_fd_count();
  DescriptorInbox inbox;
  ReceiveLimits limits;
  limits.max_descriptors_waiting = 1000;
  std::vector<UniqueFd> first;
  first.push_back(memfd_with("oldest"));
  inbox.file(1, 1, std::move(first), false, limits);
  for (std::uint64_t sequence = 2; sequence <= kMaxFiledRecords + 1; ++sequence) {
    inbox.file(sequence, 0, {}, false, limits);  // records without descriptors
  }
  CHECK(open_fd_count() == fds_before);  // the oldest went, with its descriptor
  CHECK_FALSE(inbox.take(1, 1, "test").has_value());
  CHECK(inbox.take(kMaxFiledRecords + 1, 0, "test").has_value());
}

TEST_CASE("a peer killed with descriptors in flight leaves no descriptor open in the survivor") {
  make_thread_wake_fd();
  const int fds_before = open_fd_count();
  {
    Child child = fork_with_channel(
        [](Channel& parent) {
          Random random(6);
          for (std::uint64_t seq = 0;; ++seq) send_with(parent, seq, 1000 + seq % 5000, {"x", "y"}, random);
          return 0;
        },
        ChannelOptions().with_send_timeout(10s));
    for (std::uint64_t seq = 0; seq < 50; ++seq) {
      CHECK(receive_with(child.channel, seq) == std::vector<std::string>{"x", "y"});
    }
    child.process.kill(SIGKILL);
    CHECK(child.process.wait().signal() == SIGKILL);
    // What it sent before it died still comes, each message with its descriptors.
    for (std::uint64_t seq = 50;; ++seq) {
      std::vector<std::string> texts;
      try {
        texts = receive_with(child.channel, seq);
      } catch (const Error& error) {
        CHECK(error.peer_gone());
        break;
      }
      CHECK(texts == std::vector<std::string>{"x", "y"});
    }
  }
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("a receiver killed with descriptors in flight leaves no descriptor open in the sender") {
  make_thread_wake_fd();
  const int fds_before = open_fd_count();
  {
    Child child = fork_with_channel([](Channel& parent) {
      parent.receive(Deadline::after(10s));
      for (;;) ::pause();  // holds the rest unread until killed
      return 0;
    });
    Random random(7);
    send_with(child.channel, 0, 100, {"read"}, random);
    for (std::uint64_t seq = 1; seq < 20; ++seq) send_with(child.channel, seq, 100, {"a", "b"}, random);
    child.process.kill(SIGKILL);
    CHECK(child.process.wait().signal() == SIGKILL);
    Error error = error_from([&] {
      for (std::uint64_t seq = 20;; ++seq) send_with(child.channel, seq, 100, {"late"}, random);
    });
    CHECK(error.peer_gone());
  }
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE(
    "a sender waiting for the receiver to take descriptors learns at once that it died, "
    "with PeerClosed") {
  Child child = fork_with_channel(
      [](Channel&) {
        for (;;) ::pause();  // never receives
        return 0;
      },
      ChannelOptions().with_descriptor_limits(1, 2).with_send_timeout(10s));
  Random random(9);
  send_with(child.channel, 0, 100, {"a"}, random);
  send_with(child.channel, 1, 100, {"b"}, random);  // the receiver holds 2: no more room
  child.process.kill(SIGKILL);
  CHECK(child.process.wait().signal() == SIGKILL);
  Error error = error_from([&] { send_with(child.channel, 2, 100, {"c"}, random); });
  CHECK(error.code() == ErrorCode::PeerClosed);
}
