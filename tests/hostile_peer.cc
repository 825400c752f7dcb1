// A hostile peer for tests/hostile_peer_test.cc: writes forged or broken framing to the
// channel descriptor a spawn()ing parent gave it. usage: capnsplice_hostile_peer MODE
//
//   forged-count        a segment table declaring 2^32 segments
//   wrapping-words      two segments of 1 and 2^32-1 words: a 32-bit word sum wraps to 0
//   wrapping-bytes      512 segments of 8 MiB: a 32-bit byte sum wraps to 0
//   over-limit          one segment of 128 MiB
//   truncate            one whole message, then half of one, then exit
//   garbage             three whole messages, then bytes that are no segment table
//   stall               one whole message, then the first 4 KiB of a 60 MiB frame
//   forged-descriptor   a shared-memory descriptor, with no arena ever announced
//   descriptor-ahead    arena 1 and a message in it, then a descriptor naming arena 2,
//                       which it never sends
//   corrupt-descriptor  arena 1 and a message in it, then a marked frame whose
//                       descriptor's root pointer points far outside its segment
//   release-flood       arena 1 and 2000 descriptors of one message in it, never reading
//                       the control link (the parent's release records pile up)
//   arena-then-exit     a message, arena 1 with a descriptor of blob 1 in it, then exit
//                       without ever reading the control link (the parent's records
//                       are still queued in it: the parent's next read of the link
//                       fails with ECONNRESET before it gives the arena record)
//   unsealed-arena      an arena memfd without F_SEAL_FUTURE_WRITE, and a descriptor in it
//   arena-flood         one valid arena and a message in it, then (once the parent took
//                       the arena) 1000 more Arena records, every other one with two
//                       descriptors, while draining what the parent sends; once the
//                       parent has read them all, a message, then a descriptor naming
//                       one of the flooded arenas
//   arena-replaced      arena 1 and a message in it, then (once the parent took it) arena
//                       2 and a message in it, then a descriptor naming arena 1 again
//   arena-stale         arena 5 and a message in it (seq 0), then (once the parent took
//                       it) a second arena 5 and an arena 4, each holding seq 1; once the
//                       parent has read them, a message (seq 2), a descriptor naming
//                       arena 5, one naming arena 4
//
//   doorbell-flood      64 Doorbell records, each with a descriptor (every other one with
//                       two), the first an unsealed memfd of the wrong size, then message
//                       0; once the parent has read them all, messages 1 and 2
//   ringing-doorbell    a valid doorbell and message 0, then bumps the doorbell's counter
//                       every 20 us (spinning) without writing anything more
//
// Like a capnsplice sender, the arena modes announce a new arena only after the parent
// took the one before: a receiver that reads a newer announcement before the message in
// the older arena rightly refuses that message.
//   write-arena         a hostile receiver: says it reads shared memory, sends a message
//                       (ready), takes the parent's arena memfd from the control link and
//                       tries every way to write it; sends a Blob whose data lists each
//                       attempt as "<what>: refused (<errno text>)" or "<what>: ALLOWED"
//
// The control-link records (24 bytes: kind, arena, value, spare) are written as
// src/control_link.cc lays them out. Unless it exits on purpose, the peer then waits to
// be killed: the errors the parent sees come from the bytes, not from end of stream.
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

#include "capnsplice.capnp.h"
#include "capnsplice/process.h"
#include "control_record.h"  // src/: the control link's wire format
#include "support/test_support.h"
#include "test.capnp.h"

namespace {

using capnsplice::kChildControlFd;
using capnsplice::kChildReceiveFd;
using capnsplice::kChildSendFd;

using capnsplice::detail::control_record::kAcceptsShared;
using capnsplice::detail::control_record::kArena;
using capnsplice::detail::control_record::kDoorbell;
using capnsplice::detail::control_record::Record;

constexpr std::size_t kArenaBytes = 1 << 20;

void write_all(const void* data, std::size_t bytes) {
  const auto* at = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t written = ::write(kChildSendFd, at, bytes);
    if (written <= 0) ::_exit(3);
    at += written;
    bytes -= static_cast<std::size_t>(written);
  }
}

void write_words(const std::vector<std::uint32_t>& words) {
  write_all(words.data(), words.size() * sizeof(std::uint32_t));
}

/// A valid frame, as plain Cap'n Proto writes it: the parent must receive it intact.
void write_message(std::uint64_t seq) {
  capnp::MallocMessageBuilder message;
  auto blob = message.initRoot<capnsplice::test::Blob>();
  blob.setSeq(seq);
  blob.setChecksum(capnsplice::testing::checksum(blob.initData(100)));
  capnp::writeMessageToFd(kChildSendFd, message);
}

/// The segment table of `sizes` (in words), padded to 8 bytes, with no segments after it.
std::vector<std::uint32_t> segment_table(const std::vector<std::uint32_t>& sizes) {
  std::vector<std::uint32_t> words{static_cast<std::uint32_t>(sizes.size() - 1)};
  words.insert(words.end(), sizes.begin(), sizes.end());
  if (words.size() % 2 != 0) words.push_back(0);
  return words;
}

/// A shared-memory descriptor as a capnsplice sender writes it (src/frame.h: a marked
/// frame, an empty segment 0 and then the SharedMessage): message 1, one segment of
/// `words` words at the start of arena `arena`.
void write_descriptor(std::uint32_t arena, std::uint64_t words) {
  capnp::MallocMessageBuilder message;
  auto descriptor = message.initRoot<capnsplice::wire::SharedMessage>();
  descriptor.setMagic(capnsplice::wire::SharedMessage::EXPECTED_MAGIC);
  descriptor.setArena(arena);
  descriptor.setId(1);
  auto segment = descriptor.initSegments(1)[0];
  segment.setOffset(0);
  segment.setWords(words);
  const kj::ArrayPtr<const capnp::word> frame[] = {nullptr,
                                                   message.getSegmentsForOutput()[0]};
  capnp::writeMessageToFd(kChildSendFd, frame);
}

/// Reads and drops whatever the parent sent; false once it closed its end.
bool drain_received() {
  char buffer[1 << 16];
  const ssize_t got = ::read(kChildReceiveFd, buffer, sizeof buffer);
  return got != 0;
}

/// Waits up to `ms` for the control link to be writable, reading what the parent sends
/// meanwhile (so a parent that sends never blocks on this peer).
void wait_draining(short control_events, int ms) {
  pollfd fds[2] = {{kChildControlFd, control_events, 0}, {kChildReceiveFd, POLLIN, 0}};
  if (::poll(fds, 2, ms) > 0 && (fds[1].revents & POLLIN) != 0) drain_received();
}

/// Sends one record with `fds` attached, waiting while the link is full.
void send_record(std::uint32_t kind, std::uint32_t arena, std::uint64_t value,
                 std::initializer_list<int> fds) {
  Record record{kind, arena, value, 0};
  iovec iov{&record, sizeof record};
  msghdr message{};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(2 * sizeof(int))];
  if (fds.size() != 0) {
    message.msg_control = control;
    message.msg_controllen = CMSG_SPACE(fds.size() * sizeof(int));
    cmsghdr* header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
    std::memcpy(CMSG_DATA(header), fds.begin(), fds.size() * sizeof(int));
  }
  while (::sendmsg(kChildControlFd, &message, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
    if (errno != EAGAIN && errno != EINTR) ::_exit(4);
    wait_draining(POLLOUT, 100);
  }
}

/// A memfd of kArenaBytes holding `contents` at its start, sealed with `seals`.
int make_arena(int seals, const kj::ArrayPtr<const capnp::word>& contents = {}) {
  const int fd = ::memfd_create("capnsplice-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0 || ::ftruncate(fd, kArenaBytes) != 0 ||
      ::pwrite(fd, contents.begin(), contents.size() * sizeof(capnp::word), 0) < 0 ||
      ::fcntl(fd, F_ADD_SEALS, seals) != 0) {
    ::_exit(5);
  }
  return fd;
}

/// What a capnsplice sender seals its arena with.
constexpr int kSenderSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL;

/// A sealed arena holding blob `seq` (100 zero bytes of data) at its start.
struct BlobArena {
  int fd;
  std::uint64_t words;  ///< the blob's, for a descriptor
};

BlobArena make_blob_arena(std::uint64_t seq) {
  capnp::MallocMessageBuilder message;
  auto blob = message.initRoot<capnsplice::test::Blob>();
  blob.setSeq(seq);
  blob.setChecksum(capnsplice::testing::checksum(blob.initData(100)));
  const auto words = message.getSegmentsForOutput()[0];
  return {make_arena(kSenderSeals, words), words.size()};
}

/// Offers a valid doorbell (sealed like a capnsplice sender's), writes message 0 and
/// rings the doorbell every 20 us for ever (spinning) without writing anything more.
[[noreturn]] void ring_without_writing() {
  const int fd = ::memfd_create("capnsplice-doorbell", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0 || ::ftruncate(fd, 4096) != 0) ::_exit(5);
  void* page = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (page == MAP_FAILED || ::fcntl(fd, F_ADD_SEALS, kSenderSeals) != 0) ::_exit(5);
  send_record(kDoorbell, 0, 4096, {fd});
  write_message(0);
  auto* counter = static_cast<volatile std::uint64_t*>(page);
  for (;;) {  // faster than the parent's spin (100 us): a sleep would take longer here
    *counter = *counter + 1;
    const auto next = std::chrono::steady_clock::now() + std::chrono::microseconds(20);
    while (std::chrono::steady_clock::now() < next) {
    }
  }
}

/// Returns once the parent has read every record sent (unread ones still count against
/// this socket: SIOCOUTQ), draining what it sends meanwhile.
void wait_until_records_read() {
  for (int unread = 1; unread > 0;) {
    if (::ioctl(kChildControlFd, SIOCOUTQ, &unread) != 0) ::_exit(6);
    wait_draining(0, 10);
  }
}

/// Announces arena `id` holding blob `seq`, writes a descriptor of the blob in it, and
/// returns once the parent has taken the arena to read it.
BlobArena send_in_new_arena(std::uint32_t id, std::uint64_t seq) {
  const BlobArena arena = make_blob_arena(seq);
  send_record(kArena, id, kArenaBytes, {arena.fd});
  write_descriptor(id, arena.words);
  wait_until_records_read();
  return arena;
}

/// Floods the link with Arena records for ids 2 to 1001 after one honest arena, then
/// proves the parent read them all before naming one of them.
void flood_arenas() {
  const BlobArena arena = send_in_new_arena(1, 0);
  for (std::uint32_t id = 2; id < 1002; ++id) {
    if (id % 2 == 0) {
      send_record(kArena, id, kArenaBytes, {arena.fd});
    } else {
      send_record(kArena, id, kArenaBytes, {arena.fd, arena.fd});
    }
  }
  wait_until_records_read();
  write_message(1);
  write_descriptor(500, arena.words);
  while (drain_received()) {
  }
}

/// Announces arenas whose ids are not above the latest: the parent must drop them.
void announce_stale_arenas() {
  const BlobArena first = send_in_new_arena(5, 0);
  const BlobArena other = make_blob_arena(1);
  send_record(kArena, 5, kArenaBytes, {other.fd});
  send_record(kArena, 4, kArenaBytes, {other.fd});
  wait_until_records_read();
  write_message(2);
  write_descriptor(5, first.words);
  write_descriptor(4, other.words);
  while (drain_received()) {
  }
}

/// "<what>: refused (<errno text>)" or "<what>: ALLOWED", and a newline.
std::string attempt(const char* what, bool allowed) {
  const int error = errno;
  return std::string(what) +
         (allowed ? ": ALLOWED" : ": refused (" + std::string(std::strerror(error)) + ")") + "\n";
}

/// Takes the parent's arena memfd off the link and tries to write it; the verdict goes
/// back as a Blob whose data is the list of attempts.
void attack_arena() {
  send_record(kAcceptsShared, 0, 0, {});
  write_message(0);  // sent after the announcement: the parent may now send shared
  Record record{};
  iovec iov{&record, sizeof record};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  msghdr message{};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  while (record.kind != kArena) {  // the parent's own announcement comes first
    message.msg_control = control;
    message.msg_controllen = sizeof control;
    pollfd control_link{kChildControlFd, POLLIN, 0};
    if (::poll(&control_link, 1, 10000) != 1 ||
        ::recvmsg(kChildControlFd, &message, MSG_DONTWAIT) != sizeof record) {
      ::_exit(7);
    }
  }
  if (CMSG_FIRSTHDR(&message) == nullptr) ::_exit(8);
  int fd;
  std::memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&message)), sizeof fd);
  const std::size_t size = record.value;
  // Writes go to the middle of the arena, free space: if one were allowed, the parent's
  // bytes would still be what they were.
  const off_t middle = static_cast<off_t>(size / 2 / 4096 * 4096);
  std::string report;
  void* readable = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  report += attempt("mmap(PROT_READ, MAP_SHARED)", readable != MAP_FAILED);
  report += attempt("mmap(PROT_READ | PROT_WRITE, MAP_SHARED)",
                    ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) != MAP_FAILED);
  char byte = 0;
  report +=
      attempt("write()", ::pread(fd, &byte, 1, middle) == 1 && ::pwrite(fd, &byte, 1, middle) == 1);
  report +=
      attempt("mprotect(PROT_WRITE) of the read-only mapping",
              readable != MAP_FAILED && ::mprotect(readable, size, PROT_READ | PROT_WRITE) == 0);
  report += attempt("fallocate(FALLOC_FL_PUNCH_HOLE)",
                    ::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, middle, 4096) == 0);
  const int reopened = ::open(("/proc/self/fd/" + std::to_string(fd)).c_str(), O_RDWR);
  report += attempt("write() through /proc/self/fd reopened O_RDWR",
                    reopened >= 0 && ::pwrite(reopened, &byte, 1, middle) == 1);
  capnp::MallocMessageBuilder verdict;
  auto blob = verdict.initRoot<capnsplice::test::Blob>();
  blob.setData(kj::arrayPtr(reinterpret_cast<const kj::byte*>(report.data()), report.size()));
  capnp::writeMessageToFd(kChildSendFd, verdict);
}

[[noreturn]] void wait_to_be_killed() {
  for (;;) ::pause();
}

int run(const std::string& mode) {
  if (mode == "forged-count") {
    write_words({0xFFFFFFFFu, 1});
  } else if (mode == "wrapping-words") {
    write_words(segment_table({1, 0xFFFFFFFFu}));
  } else if (mode == "wrapping-bytes") {
    write_words(segment_table(std::vector<std::uint32_t>(512, 1u << 20)));
  } else if (mode == "over-limit") {
    write_words(segment_table({1u << 24}));
  } else if (mode == "truncate") {
    write_message(0);
    std::vector<std::uint32_t> half = segment_table({1000});
    half.resize(half.size() + 1000);  // 4000 of the 8000 segment bytes
    write_words(half);
    return 0;
  } else if (mode == "garbage") {
    for (std::uint64_t seq = 0; seq < 3; ++seq) write_message(seq);
    write_words({0xDEADBEEFu, 0x0BADF00Du, 0xFFFFFFFFu, 0x12345678u});
  } else if (mode == "stall") {
    write_message(0);
    std::vector<std::uint32_t> start = segment_table({60u << 17});  // 60 MiB of words
    start.resize(start.size() + 1024);
    write_words(start);
  } else if (mode == "forged-descriptor") {
    write_message(0);
    write_descriptor(7, 1);  // an arena this peer never put on the control link
  } else if (mode == "descriptor-ahead") {
    const BlobArena arena = send_in_new_arena(1, 0);
    write_descriptor(2, arena.words);
  } else if (mode == "release-flood") {
    const BlobArena arena = make_blob_arena(0);
    send_record(kArena, 1, kArenaBytes, {arena.fd});
    for (int i = 0; i < 2000; ++i) write_descriptor(1, arena.words);
  } else if (mode == "arena-then-exit") {
    write_message(0);
    const BlobArena arena = make_blob_arena(1);
    send_record(kArena, 1, kArenaBytes, {arena.fd});
    write_descriptor(1, arena.words);
    return 0;
  } else if (mode == "corrupt-descriptor") {
    send_in_new_arena(1, 0);
    // A struct pointer whose offset (2^29 words) leaves the 2-word segment.
    const std::vector<std::uint32_t> frame = {1, 0, 2, 0, 0x7FFFFFFCu, 0x00010003u, 0, 0};
    write_words(frame);
  } else if (mode == "unsealed-arena") {
    write_message(0);
    send_record(kArena, 1, kArenaBytes, {make_arena(F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)});
    write_descriptor(1, 1);
  } else if (mode == "arena-flood") {
    flood_arenas();
  } else if (mode == "arena-replaced") {
    const BlobArena first = send_in_new_arena(1, 0);
    send_in_new_arena(2, 1);
    write_descriptor(1, first.words);
  } else if (mode == "arena-stale") {
    announce_stale_arenas();
  } else if (mode == "doorbell-flood") {
    const int unsealed = make_arena(F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    // Few enough to fit the link's buffer unread: message 0 tells the parent that all
    // of them are queued, so its first look at the link takes them all.
    for (int i = 0; i < 64; ++i) {
      if (i % 2 == 0) {
        send_record(kDoorbell, 0, 4096, {unsealed});
      } else {
        send_record(kDoorbell, 0, 4096, {unsealed, unsealed});
      }
    }
    write_message(0);
    wait_until_records_read();
    for (std::uint64_t seq = 1; seq < 3; ++seq) write_message(seq);
  } else if (mode == "ringing-doorbell") {
    ring_without_writing();
  } else if (mode == "write-arena") {
    attack_arena();
  } else {
    std::fprintf(stderr, "usage: capnsplice_hostile_peer MODE (see the source)\n");
    return 2;
  }
  wait_to_be_killed();
}

}  // namespace

int main(int argc, char** argv) { return run(argc > 1 ? argv[1] : ""); }
