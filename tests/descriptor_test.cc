// What a channel pair costs in descriptors (issue 13: at most 4 at rest), and the
// interrupts that no longer have an eventfd per receiver: a blocking receive waits on
// its thread's eventfd, and the interrupt is the receiver's own.
#include <catch2/catch.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "capnsplice/channel.h"
#include "support/blob.h"
#include "support/error_from.h"
#include "support/shared_memory_support.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

void send_seq(Channel& channel, std::uint64_t seq) {
  channel.send_struct<test::Blob>([seq](test::Blob::Builder blob) { blob.setSeq(seq); });
}

/// Descriptors of this process, and of them those whose /proc link starts with `kind`.
int descriptors(std::string_view kind = {}) {
  int count = 0;
  DIR* dir = ::opendir("/proc/self/fd");
  REQUIRE(dir != nullptr);
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] == '.' || std::atoi(entry->d_name) == ::dirfd(dir)) continue;
    char target[64] = {};
    const std::string link = std::string("/proc/self/fd/") + entry->d_name;
    if (::readlink(link.c_str(), target, sizeof target - 1) < 0) continue;
    count += std::string_view(target).substr(0, kind.size()) == kind ? 1 : 0;
  }
  ::closedir(dir);
  return count;
}

int socket_count() { return descriptors("socket:"); }

/// Lets this thread make what it makes once (its wake-up eventfd, on its first blocking
/// wait) and the process what it probes once, so that what follows counts one pair alone.
void warm_up() {
  auto [a, b] = Channel::pair();
  send_seq(a, 0);
  CHECK(b.receive().root<test::Blob>().getSeq() == 0);
  CHECK(error_from([&b = b] { b.receive_for(1ms); }).code() == ErrorCode::Timeout);
}

auto elapsed_ms(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                               since)
      .count();
}

}  // namespace

TEST_CASE("a Channel::pair() at rest holds 4 descriptors, and still 4 after small messages") {
  warm_up();
  const int before = descriptors();
  auto [a, b] = Channel::pair();
  CHECK(descriptors() - before == 4);  // the two pipes, no control socket, no eventfd
  for (std::uint64_t seq = 1; seq <= 3; ++seq) {
    send_seq(a, seq);
    send_seq(b, seq);
    CHECK(b.receive().root<test::Blob>().getSeq() == seq);
    CHECK(a.receive().root<test::Blob>().getSeq() == seq);
  }
  // Blocking waits on both receivers use this thread's eventfd, made by warm_up().
  CHECK(error_from([&a = a] { a.receive_for(1ms); }).code() == ErrorCode::Timeout);
  CHECK(error_from([&b = b] { b.receive_for(1ms); }).code() == ErrorCode::Timeout);
  CHECK(descriptors() - before == 4);
}

TEST_CASE("a Channel::pair() makes its pipes close-on-exec and non-blocking at both ends") {
  // Both ends are Channels, which read with SPLICE_F_NONBLOCK and wait in poll: each pipe
  // comes from one pipe2(O_CLOEXEC | O_NONBLOCK), with no fcntl after it.
  auto [a, b] = Channel::pair();
  for (const int fd : {a.receive_fd(), a.sender().fd(), b.receive_fd(), b.sender().fd()}) {
    REQUIRE(fd >= 0);
    CHECK((::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
    CHECK((::fcntl(fd, F_GETFL) & O_NONBLOCK) != 0);
  }
  // The remote end of pair_with_remote_end() stays blocking, for a plain Cap'n Proto peer.
  auto [local, remote] = Channel::pair_with_remote_end();
  CHECK((::fcntl(remote.receive_fd.get(), F_GETFL) & O_NONBLOCK) == 0);
  CHECK((::fcntl(remote.send_fd.get(), F_GETFL) & O_NONBLOCK) == 0);
  CHECK((::fcntl(local.sender().fd(), F_GETFL) & O_NONBLOCK) != 0);
}

TEST_CASE("an end that never sent answers for its sender, and one made on first use serves "
          "builders on several threads") {
  auto [a, b] = Channel::pair();
  // The sender's machinery is made by the first call that needs it; until then it still
  // has its descriptor and nothing queued.
  CHECK(a.sender().fd() >= 0);
  CHECK(a.unsent_bytes() == 0);
  CHECK_FALSE(a.sender().has_queued());
  CHECK(a.sender().written_messages() == 0);
  CHECK(a.sender().stats().messages == 0);

  // Builders on four threads at once make it once; one thread sends.
  std::array<std::optional<OutgoingMessage>, 4> built;
  std::vector<std::thread> builders;
  for (std::size_t i = 0; i < built.size(); ++i) {
    builders.emplace_back([&built, &b = b, i] {
      built[i].emplace(b.new_message());
      built[i]->init_root<test::Blob>().setSeq(i);
    });
  }
  for (std::thread& builder : builders) builder.join();
  for (auto& message : built) b.send(std::move(*message));
  for (std::uint64_t seq = 0; seq < built.size(); ++seq) {
    CHECK(a.receive(Deadline::after(10s)).root<test::Blob>().getSeq() == seq);
  }
  CHECK(b.sender().written_messages() == built.size());

  // Closing a sender that never sent gives its reader the end of the stream.
  a.close_sending();
  CHECK_FALSE(b.try_receive().has_value());
  CHECK(b.at_end());
}

TEST_CASE("a pair makes its control link when the first large message needs it, then both "
          "directions take shared memory") {
  warm_up();
  const int sockets = socket_count();
  auto [near, far] = Channel::pair(shared_options());
  Random random(1);
  send_blob(near, 1, 100, random);
  CHECK(far.receive(Deadline::after(10s)).root<test::Blob>().getSeq() == 1);
  CHECK(socket_count() == sockets);  // small messages need no link

  for (std::uint64_t seq = 2; seq <= 3; ++seq) {  // the second reuses the arena: released
    std::thread sender([&] { send_blob(near, seq, 1 * MiB, random); });
    auto message = far.receive(Deadline::after(10s));
    sender.join();
    CHECK(message.root<test::Blob>().getSeq() == seq);
    CHECK(blob_intact(message.root<test::Blob>()));
  }
  CHECK(socket_count() == sockets + 2);
  CHECK(near.sender().stats().shared_messages == 2);
  CHECK(far.receiver().stats().shared_messages == 2);
  CHECK(near.sender().stats().arenas_created == 1);

  // The other way over the same link: its receiver's announcement was kept in the pair.
  Random other(2);
  std::thread sender([&] { send_blob(far, 4, 1 * MiB, other); });
  auto message = near.receive(Deadline::after(10s));
  sender.join();
  CHECK(blob_intact(message.root<test::Blob>()));
  CHECK(near.receiver().stats().shared_messages == 1);
  CHECK(socket_count() == sockets + 2);
}

TEST_CASE("interrupt_receive from another thread wakes a receive blocked on a pair") {
  auto [near, far] = Channel::pair();
  std::thread waker([&far = far] {
    std::this_thread::sleep_for(50ms);
    far.interrupt_receive();
  });
  const auto started = std::chrono::steady_clock::now();
  CHECK(error_from([&far = far] { far.receive_for(10s); }).code() == ErrorCode::Interrupted);
  waker.join();
  CHECK(elapsed_ms(started) < 5000);
  // Taken: the next receive waits as usual.
  CHECK(error_from([&far = far] { far.receive_for(20ms); }).code() == ErrorCode::Timeout);
}

TEST_CASE("an interrupt from another thread with no receive waiting stays for the next "
          "receive that blocks, on whichever thread") {
  auto [near, far] = Channel::pair();
  std::thread([&far = far] { far.interrupt_receive(); }).join();
  std::thread receiver([&far = far] {
    const auto started = std::chrono::steady_clock::now();
    CHECK(error_from([&far] { far.receive_for(10s); }).code() == ErrorCode::Interrupted);
    CHECK(elapsed_ms(started) < 5000);
  });
  receiver.join();
  CHECK(error_from([&far = far] { far.receive_for(20ms); }).code() == ErrorCode::Timeout);
}

TEST_CASE("two receivers on one thread keep their own interrupts") {
  auto [a_near, a_far] = Channel::pair();
  auto [b_near, b_far] = Channel::pair();
  a_far.interrupt_receive();
  // b's receive blocks on the same thread's eventfd: a's interrupt is not for it.
  CHECK(error_from([&b = b_far] { b.receive_for(50ms); }).code() == ErrorCode::Timeout);
  // While this thread waits on b, another interrupts a: b goes on waiting.
  std::thread waker([&a = a_far] {
    std::this_thread::sleep_for(20ms);
    a.interrupt_receive();
  });
  const auto started = std::chrono::steady_clock::now();
  CHECK(error_from([&b = b_far] { b.receive_for(200ms); }).code() == ErrorCode::Timeout);
  CHECK(elapsed_ms(started) >= 200);
  waker.join();
  // a's interrupt is still there, once.
  CHECK(error_from([&a = a_far] { a.receive_for(10s); }).code() == ErrorCode::Interrupted);
  CHECK(error_from([&a = a_far] { a.receive_for(20ms); }).code() == ErrorCode::Timeout);
  send_seq(b_near, 7);
  CHECK(b_far.receive(Deadline::after(10s)).root<test::Blob>().getSeq() == 7);
}

TEST_CASE("an interrupt racing a message is neither lost nor left to wake another receiver "
          "of the thread") {
  auto [near, far] = Channel::pair();
  auto [other_near, other_far] = Channel::pair();
  for (std::uint64_t round = 0; round < 1000; ++round) {
    // A message and an interrupt arrive while this thread waits or has just stopped: it
    // receives both, in either order, and never waits for the 10 s.
    std::thread peer([&near = near, &far = far, round] {
      if (round % 2 == 1) std::this_thread::sleep_for(std::chrono::microseconds(round % 7 * 30));
      send_seq(near, round);
      far.interrupt_receive();
    });
    int messages = 0;
    int interrupts = 0;
    for (int call = 0; call < 2; ++call) {  // no more: a third would be a lost wake-up
      try {
        const std::uint64_t seq = far.receive(Deadline::after(10s)).root<test::Blob>().getSeq();
        CHECK(seq == round);
        ++messages;
        // Right after a wait that ended for the message: a wake-up written meanwhile is
        // still in the eventfd, and is not the other receiver's.
        CHECK(error_from([&o = other_far] { o.receive(Deadline::immediate()); }).code() ==
              ErrorCode::Timeout);
      } catch (const Error& error) {
        INFO(error.what());
        CHECK(error.code() == ErrorCode::Interrupted);
        ++interrupts;
      }
    }
    CHECK(messages == 1);
    CHECK(interrupts == 1);
    peer.join();
    // A wake-up the interrupt left in this thread's eventfd is not an interrupt of the
    // other receiver.
    CHECK(error_from([&o = other_far] { o.receive_for(1ms); }).code() == ErrorCode::Timeout);
  }
}

TEST_CASE("a process out of descriptors gets SystemError EMFILE that names the limit") {
  warm_up();
  const int before = descriptors();
  rlimit saved{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &saved) == 0);
  rlimit tight = saved;
  tight.rlim_cur = static_cast<rlim_t>(before + 64);
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &tight) == 0);
  // Take every free descriptor number, then give three back: room for one pipe, not two.
  std::vector<int> filler;
  for (int fd = ::dup(STDERR_FILENO); fd >= 0; fd = ::dup(STDERR_FILENO)) filler.push_back(fd);
  for (int i = 0; i < 3; ++i) {
    ::close(filler.back());
    filler.pop_back();
  }
  const Error error = error_from([] { static_cast<void>(Channel::pair()); });
  for (const int fd : filler) ::close(fd);
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &saved) == 0);
  CHECK(error.code() == ErrorCode::SystemError);
  CHECK(error.sys_errno() == EMFILE);
  CHECK_THAT(error.what(), Catch::Contains("RLIMIT_NOFILE"));
  CHECK(descriptors() == before);  // the pipe that was made is closed again
}
