// Every failure comes out as the Error code that tells the caller what happened.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <thread>
#include <vector>

#include "capnsplice/channel.h"
#include "capnsplice/poller.h"
#include "support/blob.h"
#include "support/error_from.h"
#include "support/raw_pipe.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

}  // namespace

TEST_CASE("receiving after the peer closed between messages fails with PeerClosed") {
  auto [near, far] = Channel::pair(ChannelOptions().with_name("closing"));
  Random random(1);
  send_blob(near, 0, 100, random);
  { Channel gone = std::move(near); }
  CHECK(far.receive_as<test::Blob>()->getSeq() == 0);  // what was sent still arrives
  Error error = error_from([&far = far] { far.receive(); });
  CHECK(error.code() == ErrorCode::PeerClosed);
  CHECK_THAT(error.what(), Catch::StartsWith("channel 'closing': receive: "));
}

TEST_CASE("sending to a peer that closed fails with PeerClosed and no SIGPIPE death") {
  REQUIRE(std::signal(SIGPIPE, SIG_DFL) != SIG_ERR);  // the default: SIGPIPE kills
  for (SendPath path : {SendPath::copy, SendPath::vmsplice}) {
    auto [near, far] = Channel::pair(ChannelOptions().with_send_path(path));
    { Channel gone = std::move(far); }
    Random random(2);
    Error error = error_from([&near = near, &random] { send_blob(near, 0, 100000, random); });
    CHECK(error.code() == ErrorCode::PeerClosed);
  }
  // Still alive, and the disposition is untouched.
  struct sigaction current {};
  REQUIRE(sigaction(SIGPIPE, nullptr, &current) == 0);
  CHECK(current.sa_handler == SIG_DFL);
  sigset_t pending;
  sigpending(&pending);
  CHECK_FALSE(sigismember(&pending, SIGPIPE));
}

TEST_CASE("a caller that blocks SIGPIPE itself keeps it blocked after a failed send") {
  sigset_t block, previous;
  sigemptyset(&block);
  sigaddset(&block, SIGPIPE);
  REQUIRE(pthread_sigmask(SIG_BLOCK, &block, &previous) == 0);
  {
    auto [near, far] = Channel::pair();
    { Channel gone = std::move(far); }
    Random random(2);
    CHECK(error_from([&near = near, &random] { send_blob(near, 0, 10, random); }).code() ==
          ErrorCode::PeerClosed);
  }
  sigset_t now;
  pthread_sigmask(SIG_SETMASK, nullptr, &now);
  CHECK(sigismember(&now, SIGPIPE));
  // Our own pending SIGPIPE is the caller's to collect.
  timespec no_wait{0, 0};
  sigtimedwait(&block, nullptr, &no_wait);
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
}

TEST_CASE("sending after close_sending fails with InvalidArgument and the peer sees end of "
          "stream") {
  auto [near, far] = Channel::pair();
  near.close_sending();
  Random random(3);
  CHECK(error_from([&near = near, &random] { send_blob(near, 0, 10, random); }).code() ==
        ErrorCode::InvalidArgument);
  CHECK(error_from([&far = far] { far.receive(); }).code() == ErrorCode::PeerClosed);
  // The other direction still works.
  send_blob(far, 7, 10, random);
  CHECK(near.receive_as<test::Blob>()->getSeq() == 7);
}

TEST_CASE("receiving with a timeout on a silent channel fails with Timeout, and the channel "
          "still works") {
  auto [near, far] = Channel::pair();
  auto started = std::chrono::steady_clock::now();
  Error error = error_from([&far = far] { far.receive_for(50ms); });
  CHECK(error.code() == ErrorCode::Timeout);
  CHECK(std::chrono::steady_clock::now() - started >= 50ms);
  CHECK_FALSE(far.try_receive().has_value());
  Random random(4);
  send_blob(near, 1, 10, random);
  CHECK(far.receive_for(1s).root<test::Blob>().getSeq() == 1);
}

TEST_CASE("a send whose deadline passes fails with Timeout and keeps the message queued: "
          "it arrives once, after the ones before it, with the next flush") {
  Random random(5);
  auto [near, far, filled] = full_copy_pipe(100ms, random);
  const auto [sent, error] = filled;
  CHECK(error.code() == ErrorCode::Timeout);
  CHECK_THAT(error.what(), Catch::Contains("kept whole in the outgoing queue"));
  CHECK(near.sender().fd() >= 0);
  CHECK(near.unsent_bytes() > 1000);  // the kept blob, not yet in the pipe
  for (std::uint64_t seq = 0; seq < sent; ++seq) {
    auto blob = far.receive_as<test::Blob>(Deadline::after(10s));
    REQUIRE(blob->getSeq() == seq);
  }
  near.flush();  // the reader made room: the kept message goes now, not sent again
  CHECK(near.unsent_bytes() == 0);
  auto kept = far.receive_as<test::Blob>(Deadline::after(10s));
  CHECK(kept->getSeq() == sent);
  CHECK(blob_intact(kept.root()));
  CHECK_FALSE(far.try_receive().has_value());
}

TEST_CASE("a send whose deadline passes mid-message cuts nothing: the rest stays queued and "
          "the next flush finishes the message whole") {
  auto [near, far] = Channel::pair(ChannelOptions()
                                       .with_pipe_bytes(64 * KiB)
                                       .with_send_path(SendPath::vmsplice)
                                       .with_send_timeout(50ms));
  Random random(5);
  Error kept = error_from([&near = near, &random] { send_blob(near, 0, 200 * KiB, random); });
  CHECK(kept.code() == ErrorCode::Timeout);
  const std::size_t unsent = near.unsent_bytes();
  CHECK(unsent > 0);
  CHECK(unsent < 200 * KiB);  // part of the frame is in the pipe
  // A later message waits behind it (kept too), and the reader sees no cut frame.
  CHECK(error_from([&near = near, &random] { send_blob(near, 1, 10, random); }).code() ==
        ErrorCode::Timeout);
  CHECK_FALSE(far.try_receive().has_value());
  bool whole = true;  // Catch's CHECK is for the main thread only
  std::thread reader([&far = far, &whole] {
    for (std::uint64_t seq = 0; seq < 2; ++seq) {
      auto blob = far.receive_as<test::Blob>(Deadline::after(10s));
      whole = whole && blob->getSeq() == seq && blob_intact(blob.root());
    }
  });
  near.flush(Deadline::after(10s));
  reader.join();
  CHECK(whole);
  CHECK(near.unsent_bytes() == 0);
  CHECK(near.sender().stats().messages == 2);
  // Receiving on the end whose send timed out works as before.
  send_blob(far, 2, 10, random);
  CHECK(near.receive_as<test::Blob>(Deadline::after(10s))->getSeq() == 2);
}

TEST_CASE("building in a pool full of unread messages fails with Timeout after the send "
          "timeout") {
  // The pool is smaller than the pipe: spliced messages fill it before the pipe is full.
  auto [near, far] = Channel::pair(ChannelOptions()
                                       .with_send_path(SendPath::vmsplice)
                                       .with_pool_bytes(256 * KiB)
                                       .with_send_timeout(100ms));
  Random random(6);
  Error error = error_from([&near = near, &random] {
    for (int i = 0; i < 1000; ++i) send_blob(near, i, 30000, random);
  });
  CHECK(error.code() == ErrorCode::Timeout);
  CHECK_THAT(error.what(), Catch::Contains("pool"));
  CHECK(near.sender().stats().waits_for_reader > 0);
}

TEST_CASE("a frame larger than the limit fails with MessageTooLarge naming both sizes") {
  RawPipe pipe;
  ReceiverOptions options;
  options.limits.max_message_bytes = 1 * MiB;
  Receiver receiver(std::move(pipe.read_end), options, "channel 'big': receive");
  pipe.write_words({0, 1u << 20});  // one segment of 8 MiB
  Error error = error_from([&] { receiver.receive(); });
  CHECK(error.code() == ErrorCode::MessageTooLarge);
  CHECK_THAT(error.what(), Catch::Contains("frame of 8388616 bytes exceeds the limit of 1048576"));
}

TEST_CASE("a forged segment count fails with MalformedFrame") {
  RawPipe pipe;
  Receiver receiver(std::move(pipe.read_end));
  pipe.write_words({0xFFFFFFFFu, 1});
  CHECK(error_from([&] { receiver.receive(); }).code() == ErrorCode::MalformedFrame);
}

TEST_CASE("sizes whose sum passes the limit fail with MessageTooLarge before allocation") {
  RawPipe pipe;
  Receiver receiver(std::move(pipe.read_end));
  // Three segments of 2^32-1 words: 96 GiB if anyone allocated it.
  pipe.write_words({2, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu});
  CHECK(error_from([&] { receiver.receive(); }).code() == ErrorCode::MessageTooLarge);
}

TEST_CASE("end of stream inside a message fails with TruncatedMessage") {
  RawPipe pipe;
  Receiver receiver(std::move(pipe.read_end));
  pipe.write_words({0, 4, 0, 0});  // header promises 32 bytes, 8 arrive
  pipe.write_end.reset();
  Error error = error_from([&] { receiver.receive(); });
  CHECK(error.code() == ErrorCode::TruncatedMessage);
  CHECK_THAT(error.what(), Catch::Contains("16 bytes into a frame of 40 bytes"));
}

TEST_CASE("end of stream inside a header fails with TruncatedMessage") {
  RawPipe pipe;
  Receiver receiver(std::move(pipe.read_end));
  pipe.write_words({3});
  pipe.write_end.reset();
  CHECK(error_from([&] { receiver.receive(); }).code() == ErrorCode::TruncatedMessage);
}

TEST_CASE("a peer process that dies mid-message is reported as TruncatedMessage") {
  auto [parent, child] = Channel::pair();
  const int raw_fd = child.sender().fd();
  pid_t pid = fork_child([raw_fd] {
    std::uint32_t partial[] = {0, 1000, 0, 0, 0, 0};  // 8008-byte frame, 16 bytes sent
    return ::write(raw_fd, partial, sizeof partial) == sizeof partial ? 0 : 1;
  });
  { Channel dropped = std::move(child); }
  CHECK(wait_child(pid) == 0);
  CHECK(error_from([&parent = parent] { parent.receive(); }).code() ==
        ErrorCode::TruncatedMessage);
}

TEST_CASE("a receiver or sender given the wrong end of a pipe fails with InvalidArgument") {
  RawPipe pipe;
  Error receiving = error_from([&] { Receiver receiver(std::move(pipe.write_end)); });
  CHECK(receiving.code() == ErrorCode::InvalidArgument);
  CHECK(receiving.sys_errno() == 0);
  Error sending = error_from([&] { Sender sender(std::move(pipe.read_end)); });
  CHECK(sending.code() == ErrorCode::InvalidArgument);
}

TEST_CASE("a system call that fails is SystemError with its errno") {
  // epoll cannot watch a regular file (a memfd is one): epoll_ctl fails with EPERM. (An
  // exhausted RLIMIT_NOFILE would be the likelier case, but the sanitizers' runtimes
  // need descriptors of their own to report anything.)
  UniqueFd file(::memfd_create("not-pollable", MFD_CLOEXEC));
  REQUIRE(file);
  Poller poller;
  Error error = error_from([&] { poller.add(file.get(), 1); });
  CHECK(error.code() == ErrorCode::SystemError);
  CHECK(error.sys_errno() == EPERM);
  CHECK_THAT(error.detail(), Catch::Contains("epoll_ctl"));
}
