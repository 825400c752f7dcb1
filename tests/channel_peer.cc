// The program the process tests start across exec. usage: capnsplice_test_peer MODE [ARGS]
//
//   echo                 open the channel from the environment, send every message back
//   hello APP VERSION    the same after exchanging a hello naming APP VERSION
//   inventory [FD...]    report descriptors, environment, parent-death signal and the first
//                        bytes of each FD (read at offset 0) as test::Inventory, then echo
//   host-of-stalled SIG  spawn this program as "stall" with parent-death signal SIG (0:
//                        none), send its pid (as a Blob's seq), wait to be killed
//   stream SEED          send Blobs of random sizes (up to 3 MiB) until the peer is gone
//   sink                 receive until the peer is gone
//   stall                open the channel, never read it, wait to be killed
//   half-frame           write part of a frame by hand, then wait to be killed
//   send-frame HEX       write the frame HEX (e.g. a forged hello) as it is, then sink
//   signals              sink, then exit 10 + 1 if SIGPIPE was ignored at start
//                        + 2 if SIGCHLD was
//   plain                plain Cap'n Proto on descriptors 3 and 4: echo one message (any
//                        root, copied by capnp::AnyPointer)
//   connect NAME [APP VERSION]   connect to a rendezvous, then echo
//
// Exits 0 once the peer is gone, 3 when a hello fails (IncompatiblePeer), 1 on any other
// error. When CAPNSPLICE_TEST_PEER_GONE_AT names a file, the moment the peer was seen
// gone is written to it first (steady clock, ns), so that a test can time how soon the
// peer's death was seen apart from how long this process takes to exit (LeakSanitizer's
// exit scan alone can take most of 100 ms).
#include <capnp/any.h>
#include <capnp/serialize.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "capnsplice/handshake.h"
#include "capnsplice/process.h"
#include "capnsplice/rendezvous.h"
#include "support/blob.h"

namespace {

using namespace capnsplice;

/// Sends every message back until the peer is gone (which main() reports as success).
[[noreturn]] void echo(Channel& channel) {
  for (;;) {
    ReceivedMessage message = channel.receive();
    channel.sender().send_copy(message.segments(), Deadline::never());
  }
}

/// Sends every message back rebuilt in this end's pool, so large ones take the
/// shared-memory path too, until the peer is gone.
[[noreturn]] void echo_rebuilt(Channel& channel) {
  for (;;) {
    ReceivedMessage message = channel.receive();
    OutgoingMessage copy = channel.new_message();
    copy.builder().getRoot<capnp::AnyPointer>().set(message.root<capnp::AnyPointer>());
    channel.send(std::move(copy));
  }
}

std::vector<int> open_fds() {
  std::vector<int> fds;
  DIR* dir = ::opendir("/proc/self/fd");
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') fds.push_back(std::atoi(entry->d_name));
  }
  const int own = ::dirfd(dir);
  ::closedir(dir);
  std::erase(fds, own);
  return fds;
}

bool has_flag(int fd, int command, int flag) { return (::fcntl(fd, command) & flag) != 0; }

/// Up to 64 bytes of `fd` from offset 0 ("" when it cannot be read).
std::string first_bytes(int fd) {
  char buffer[64];
  const ssize_t got = ::pread(fd, buffer, sizeof buffer, 0);
  return got > 0 ? std::string(buffer, static_cast<std::size_t>(got)) : std::string();
}

int inventory(const std::vector<int>& to_read) {
  const std::vector<int> fds = open_fds();
  int death_signal = -1;
  ::prctl(PR_GET_PDEATHSIG, &death_signal);
  const char* inherited = std::getenv("CAPNSPLICE_CHANNEL");
  const char* extra = std::getenv("CAPNSPLICE_TEST_EXTRA");
  const bool nonblocking =
      has_flag(kChildReceiveFd, F_GETFL, O_NONBLOCK) || has_flag(kChildSendFd, F_GETFL, O_NONBLOCK);
  Channel parent = child_channel();
  parent.send_struct<test::Inventory>([&](test::Inventory::Builder report) {
    auto list = report.initOpenFds(static_cast<unsigned>(fds.size()));
    for (unsigned i = 0; i < fds.size(); ++i) list.set(i, fds[i]);
    report.setVariable(inherited != nullptr ? inherited : "");
    report.setVariableAfterOpen(std::getenv("CAPNSPLICE_CHANNEL") != nullptr);
    report.setCloexecAfterOpen(has_flag(kChildReceiveFd, F_GETFD, FD_CLOEXEC) &&
                               has_flag(kChildSendFd, F_GETFD, FD_CLOEXEC));
    report.setNonblockingAtStart(nonblocking);
    report.setExtra(extra != nullptr ? extra : "");
    auto contents = report.initContents(static_cast<unsigned>(to_read.size()));
    for (unsigned i = 0; i < to_read.size(); ++i) contents.set(i, first_bytes(to_read[i]));
    report.setParentDeathSignal(death_signal);
  });
  echo(parent);
}

int stream(std::uint64_t seed) {
  Channel parent = child_channel();
  testing::Random random(seed);
  for (std::uint64_t seq = 0;; ++seq) {
    const std::size_t size = random.below(4) == 0 ? random.below(3 * MiB) : random.below(4096);
    testing::send_blob(parent, seq, size + 1, random);
  }
}

int half_frame() {
  // One segment of 1000 words announced, 100 bytes of it written, in one write so the
  // parent sees all 108 bytes at once.
  std::uint32_t partial[27] = {0, 1000};
  if (::write(kChildSendFd, partial, sizeof partial) != sizeof partial) return 1;
  for (;;) ::pause();
}

/// Writes the bytes spelled by `hex` to the send descriptor, whole.
int write_hex(const char* hex) {
  std::vector<unsigned char> bytes;
  for (const char* at = hex; at[0] != '\0' && at[1] != '\0'; at += 2) {
    const char pair[3] = {at[0], at[1], '\0'};
    bytes.push_back(static_cast<unsigned char>(std::strtoul(pair, nullptr, 16)));
  }
  for (std::size_t done = 0; done < bytes.size();) {
    const ssize_t written = ::write(kChildSendFd, bytes.data() + done, bytes.size() - done);
    if (written <= 0) return 1;
    done += static_cast<std::size_t>(written);
  }
  return 0;
}

bool ignored(int signal) {
  struct sigaction current {};
  return ::sigaction(signal, nullptr, &current) == 0 && current.sa_handler == SIG_IGN;
}

[[noreturn]] void sink(Channel& channel) {
  for (;;) channel.receive();
}

int plain() {
  capnp::StreamFdMessageReader request(kChildReceiveFd);
  capnp::MallocMessageBuilder reply;
  reply.getRoot<capnp::AnyPointer>().set(request.getRoot<capnp::AnyPointer>());
  capnp::writeMessageToFd(kChildSendFd, reply);
  return 0;
}

[[noreturn]] void host_of_stalled(int parent_death_signal) {
  Channel parent = child_channel();
  Child stalled = spawn({.program = "/proc/self/exe",
                         .arguments = {"stall"},
                         .parent_death_signal = parent_death_signal});
  parent.send_struct<test::Blob>([&](test::Blob::Builder blob) {
    blob.setSeq(static_cast<std::uint64_t>(stalled.process.pid()));
  });
  for (;;) ::pause();
}

HelloOptions hello_from(int argc, char** argv, int first) {
  HelloOptions hello;
  if (argc > first + 1) {
    hello.application = argv[first];
    hello.application_version = static_cast<std::uint32_t>(std::atoi(argv[first + 1]));
  }
  return hello;
}

int run(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "echo") {
    Channel parent = child_channel();
    echo(parent);
  } else if (mode == "echo-rebuilt") {
    Channel parent = child_channel();
    echo_rebuilt(parent);
  } else if (mode == "hello") {
    Channel parent = child_channel();
    exchange_hello(parent, hello_from(argc, argv, 2));
    echo(parent);
  } else if (mode == "inventory") {
    std::vector<int> to_read;
    for (int i = 2; i < argc; ++i) to_read.push_back(std::atoi(argv[i]));
    return inventory(to_read);
  } else if (mode == "host-of-stalled" && argc > 2) {
    host_of_stalled(std::atoi(argv[2]));
  } else if (mode == "stream" && argc > 2) {
    return stream(std::strtoull(argv[2], nullptr, 10));
  } else if (mode == "sink") {
    Channel parent = child_channel();
    sink(parent);
  } else if (mode == "stall") {
    Channel parent = child_channel();
    for (;;) ::pause();
  } else if (mode == "half-frame") {
    return half_frame();
  } else if (mode == "send-frame" && argc > 2) {
    if (write_hex(argv[2]) != 0) return 1;
    Channel parent = child_channel();
    sink(parent);
  } else if (mode == "signals") {
    const int code = 10 + (ignored(SIGPIPE) ? 1 : 0) + (ignored(SIGCHLD) ? 2 : 0);
    Channel parent = child_channel();
    try {
      sink(parent);
    } catch (const Error& error) {
      if (!error.peer_gone()) throw;
    }
    return code;
  } else if (mode == "plain") {
    return plain();
  } else if (mode == "connect" && argc > 2) {
    RendezvousOptions options;
    options.hello = hello_from(argc, argv, 3);
    Connection host = connect_rendezvous(argv[2], options);
    echo(host.channel);
  }
  std::fprintf(stderr, "usage: capnsplice_test_peer MODE [ARGS] (see the source)\n");
  return 2;
}

/// See the comment at the top: CAPNSPLICE_TEST_PEER_GONE_AT.
void record_when_peer_was_seen_gone() {
  const auto seen_at = std::chrono::steady_clock::now().time_since_epoch();
  const char* path = std::getenv("CAPNSPLICE_TEST_PEER_GONE_AT");
  if (path == nullptr) return;
  if (std::FILE* file = std::fopen(path, "w")) {
    std::fprintf(file, "%lld\n",
                 static_cast<long long>(
                     std::chrono::duration_cast<std::chrono::nanoseconds>(seen_at).count()));
    std::fclose(file);
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Error& error) {
    if (error.peer_gone()) {
      record_when_peer_was_seen_gone();
      return 0;
    }
    std::fprintf(stderr, "capnsplice_test_peer: %s\n", error.what());
    if (error.code() == ErrorCode::IncompatiblePeer) return 3;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "capnsplice_test_peer: %s\n", error.what());
  }
  return 1;
}
