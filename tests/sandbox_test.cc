// capnsplice in a sandbox that refuses memfd_create (as seccomp profiles of browsers and
// container runtimes can), under a tight address-space limit, or out of descriptors:
// channels still work, by the means that remain, or name the cause and recover.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>
#include <string>
#include <utility>

#include "capnsplice/channel.h"
#include "capnsplice/receiver.h"
#include "support/blob.h"
#include "support/sanitizer.h"
#include "support/shared_memory_support.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;

/// Makes memfd_create fail with EPERM in this process from now on.
bool refuse_memfd_create() {
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_memfd_create, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program{static_cast<unsigned short>(std::size(filter)), filter};
  return ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) == 0;
}

/// What went wrong in the sandboxed child, as its exit code.
enum Verdict : int {
  kCarried = 0,
  kNoSandbox = 2,  // or the limit could not be set
  kMemfdStillWorks = 3,
  kSmallMessagesBroken = 4,
  kLargeMessageBroken = 5,
  kUsedSharedMemory = 6,  // or did not, when it should have
  kLostArenaNotNamed = 7,
  kNoNewArena = 8,
  kThrew = 99,  // fork_child's code for an exception
};

/// Sends a message over the shared-memory threshold, small enough for the pipe to take
/// whole while this thread is not reading, and checks it arrived intact by pipe;
/// `sender_gave_up`: the sender also says it cannot use shared memory any more.
int large_message_took_the_pipe(Channel& near, Channel& far, std::uint64_t seq,
                                bool sender_gave_up) {
  Random random(seq);
  near.send(blob_in_place(near, seq, 512 * KiB, random));
  auto large = far.receive_as<test::Blob>(Deadline::after(std::chrono::seconds(10)));
  if (large->getSeq() != seq || !blob_intact(large.root())) return kLargeMessageBroken;
  const SenderStats stats = near.sender().stats();
  if (stats.shared_messages != 0 || (sender_gave_up && stats.shared_memory_available)) {
    return kUsedSharedMemory;
  }
  return kCarried;
}

/// Bytes of address space this process maps now (VmSize).
rlim_t mapped_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmSize:", 0) == 0) return rlim_t{std::stoul(line.substr(7))} * 1024;
  }
  return 0;
}

/// Sends large message 1 (announcing arena 1) while `resource` is held to `tight` on the
/// receiving side, so that its arena cannot be taken: the receive must fail with
/// SystemError `error_expected`, and the receiver then tells the sender it lost the arena.
int lose_first_arena(Channel& near, Channel& far, Random& random, int resource, rlim_t tight,
                     int error_expected) {
  near.send(blob_in_place(near, 1, 512 * KiB, random));
  if (near.sender().stats().shared_messages != 1) return kLargeMessageBroken;
  rlimit limit{};
  ::getrlimit(resource, &limit);
  const rlimit held{tight, limit.rlim_max};
  if (::setrlimit(resource, &held) != 0) return kNoSandbox;
  int code = kLostArenaNotNamed;
  try {
    // The frame is in the pipe already: receive() reads it before it would make a
    // descriptor to wait with, so only the arena needs one.
    far.receive(Deadline::after(std::chrono::seconds(10)));
  } catch (const Error& error) {
    if (error.code() == ErrorCode::SystemError && error.sys_errno() == error_expected) {
      code = kCarried;
    }
  }
  ::setrlimit(resource, &limit);
  return code;
}

/// A channel whose receive ring exists before any limit is set (small message 0 read).
std::optional<std::pair<Channel, Channel>> started_pair(Random& random) {
  auto ends = Channel::pair(shared_options());
  send_blob(ends.first, 0, 100, random);
  if (ends.second.receive_as<test::Blob>()->getSeq() != 0) return std::nullopt;
  return ends;
}

/// Loses arena 1 (lose_first_arena); once the limit is lifted the next large message
/// must come through a new arena.
int arena_lost_then_recovered(int resource, rlim_t tight, int error_expected) {
  Random random(3);
  auto ends = started_pair(random);
  if (!ends) return kSmallMessagesBroken;
  auto& [near, far] = *ends;
  const int lost = lose_first_arena(near, far, random, resource, tight, error_expected);
  if (lost != kCarried) return lost;
  near.send(blob_in_place(near, 2, 512 * KiB, random));  // in arena 2
  auto large = far.receive_as<test::Blob>(Deadline::after(std::chrono::seconds(10)));
  if (large->getSeq() != 2 || !blob_intact(large.root())) return kLargeMessageBroken;
  if (far.receiver().stats().shared_messages != 1) return kUsedSharedMemory;
  return near.sender().stats().arenas_created == 2 ? kCarried : kNoNewArena;
}

/// The lowest descriptor number free now: as RLIMIT_NOFILE, no descriptor is left.
rlim_t no_more_descriptors() {
  const int lowest_free = ::dup(0);
  ::close(lowest_free);
  return static_cast<rlim_t>(lowest_free);
}

/// Runs `body` in a forked child (its limits and filters stay there) and checks that it
/// returns kCarried. `sanitizer_conflict`: why the body cannot run under a sanitizer,
/// whose runtime needs the very resources it takes away; then it is skipped there.
void check_in_child(const std::function<int()>& body, const char* sanitizer_conflict = nullptr) {
  if (sanitizer_conflict != nullptr && kUnderSanitizer) {
    SUCCEED("skipped under a sanitizer: " << sanitizer_conflict);
    return;
  }
  CHECK(wait_child(fork_child(body)) == kCarried);
}

}  // namespace

TEST_CASE("where memfd_create is refused, a channel still carries small messages through a "
          "wrapping ring and large ones by pipe") {
  // This process finds it can make arenas before the sandbox closes in: the child's
  // sender then learns otherwise only when it tries, and must fall back then.
  static_cast<void>(Channel::pair());
  check_in_child([] {
    if (!refuse_memfd_create()) return int{kNoSandbox};
    if (::memfd_create("probe", MFD_CLOEXEC) >= 0 || errno != EPERM) return int{kMemfdStillWorks};
    // A 64 KiB ring: 200 frames of 3 KB wrap it many times, so frames cross its end.
    auto [near, far] =
        Channel::pair(shared_options().with_receive_buffer_bytes(64 * KiB));
    Random random(1);
    for (std::uint64_t seq = 0; seq < 200; ++seq) {
      send_blob(near, seq, 3000, random);
      auto blob = far.receive_as<test::Blob>(Deadline::after(std::chrono::seconds(10)));
      if (blob->getSeq() != seq || !blob_intact(blob.root())) return int{kSmallMessagesBroken};
    }
    return large_message_took_the_pipe(near, far, 200, /*sender_gave_up=*/true);
  });
}

TEST_CASE("under an address-space limit too tight for a peer's arena, a channel carries large "
          "messages by pipe") {
  check_in_child([] {
    // 8 GiB: room for everything but the reservation a received arena needs.
    const rlimit limit{rlim_t{8} << 30, rlim_t{8} << 30};
    if (::setrlimit(RLIMIT_AS, &limit) != 0) return int{kNoSandbox};
    auto [near, far] = Channel::pair(shared_options());
    // This end could make arenas, but its receiver has no room to map one: it did not
    // say it reads them, so nothing is sent through one.
    return large_message_took_the_pipe(near, far, 1, /*sender_gave_up=*/false);
  }, "its runtime reserves far more address space than the limit");
}

TEST_CASE("a sender that cannot map an arena under its address-space limit sends large "
          "messages by pipe instead of failing them") {
  check_in_child([] {
    // The receiver found room for a peer's arena before the limit: it reads them.
    auto [near, far] = Channel::pair(shared_options());
    const rlimit limit{rlim_t{1} << 30, rlim_t{1} << 30};  // less than the 2 GiB arena
    if (::setrlimit(RLIMIT_AS, &limit) != 0) return int{kNoSandbox};
    return large_message_took_the_pipe(near, far, 1, /*sender_gave_up=*/true);
  }, "its runtime reserves far more address space than the limit");
}

TEST_CASE("an arena that arrives while the receiver is out of descriptors is named as the "
          "cause, and the next large message comes through a new arena") {
  check_in_child([] {
    return arena_lost_then_recovered(RLIMIT_NOFILE, no_more_descriptors(), EMFILE);
  }, "its runtime needs descriptors of its own to report");
}

TEST_CASE("a message built in an arena that the peer then lost goes whole through the pipe, "
          "neither lost nor refused") {
  check_in_child([] {
    Random random(4);
    auto ends = started_pair(random);
    if (!ends) return int{kSmallMessagesBroken};
    auto& [near, far] = *ends;
    // Its payload is in arena 1, its root in the pipe pool: describing it would need a
    // copy of the root in the lost arena, which takes nothing more.
    OutgoingMessage built_before = blob_in_place(near, 2, 512 * KiB, random);
    const int lost =
        lose_first_arena(near, far, random, RLIMIT_NOFILE, no_more_descriptors(), EMFILE);
    if (lost != kCarried) return lost;
    // Asking for arena memory reads the peer's report; this one is built in the pool.
    OutgoingMessage built_after = blob_in_place(near, 3, 512 * KiB, random);
    near.queue(std::move(built_before), Deadline::after(std::chrono::seconds(2)));
    near.queue(std::move(built_after), Deadline::after(std::chrono::seconds(2)));
    const Deadline give_up = Deadline::after(std::chrono::seconds(10));
    std::uint64_t next = 2;
    while (next <= 3 && !give_up.expired()) {
      static_cast<void>(near.try_flush());  // the pipe takes 1 MiB at most: one thread
      auto large = far.try_receive();
      if (!large) continue;
      const auto blob = large->root<test::Blob>();
      if (blob.getSeq() != next++ || !blob_intact(blob)) return int{kLargeMessageBroken};
    }
    if (next != 4) return int{kLargeMessageBroken};
    return near.sender().stats().shared_messages == 1 ? int{kCarried} : int{kUsedSharedMemory};
  }, "its runtime needs descriptors of its own to report");
}

TEST_CASE("an arena the receiver cannot map is named as the cause, and the next large "
          "message comes through a new arena") {
  check_in_child([] {
    // Room for what is mapped now and a little more, not for an arena's reservation.
    return arena_lost_then_recovered(RLIMIT_AS, mapped_bytes() + (rlim_t{64} << 20), ENOMEM);
  }, "its runtime reserves far more address space than the limit");
}

TEST_CASE("a frame the limits allow but memory does not is SystemError ENOMEM, every time, "
          "never a crash") {
  check_in_child([] {
    int ends[2];
    if (::pipe2(ends, O_CLOEXEC | O_NONBLOCK) != 0) return int{kNoSandbox};
    Receiver receiver(UniqueFd(ends[0]), ReceiverOptions{});
    UniqueFd write_end(ends[1]);
    static_cast<void>(receiver.try_receive());  // the ring exists before the limit
    const std::uint32_t header[2] = {0, (60u << 20) / 8};  // one 60 MiB segment
    const std::uint64_t first_word = 0;
    if (::write(write_end.get(), header, sizeof header) != sizeof header ||
        ::write(write_end.get(), &first_word, sizeof first_word) != sizeof first_word) {
      return int{kNoSandbox};
    }
    // Room for 16 MiB more than this process maps now: not for the frame.
    const rlim_t room = mapped_bytes() + (rlim_t{16} << 20);
    const rlimit limit{room, room};
    if (::setrlimit(RLIMIT_AS, &limit) != 0) return int{kNoSandbox};
    for (int attempt = 0; attempt < 3; ++attempt) {
      try {
        static_cast<void>(receiver.try_receive());
        return int{kLargeMessageBroken};
      } catch (const Error& error) {
        if (error.code() != ErrorCode::SystemError || error.sys_errno() != ENOMEM) {
          return int{kLargeMessageBroken};
        }
      }
    }
    return int{kCarried};
  }, "its runtime reserves far more address space than the limit");
}
