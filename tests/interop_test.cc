// The wire is standard Cap'n Proto stream framing: plain Cap'n Proto peers and the
// capnp tool read what capnsplice writes, and capnsplice reads what they write.
#include <catch2/catch.hpp>

#include <capnp/serialize.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <string>
#include <thread>

#include "capnsplice/channel.h"
#include "demo.capnp.h"
#include "support/blob.h"
#include "support/error_from.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using capnsplice::demo::Chunk;

struct RawPipe {
  UniqueFd read_end;
  UniqueFd write_end;
  RawPipe() {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    read_end.reset(fds[0]);
    write_end.reset(fds[1]);
  }
};

struct CommandResult {
  int exit_code;
  std::string output;
};

/// Runs a shell command, capturing stdout and stderr together.
CommandResult run(const std::string& command) {
  std::string full = command + " 2>&1";
  FILE* pipe = ::popen(full.c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string output;
  std::array<char, 4096> buffer;
  while (std::size_t got = std::fread(buffer.data(), 1, buffer.size(), pipe)) {
    output.append(buffer.data(), got);
  }
  int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

const std::string kPipeTool = CAPNSPLICE_PIPE;
const std::string kCapnp = CAPNP_EXECUTABLE;
const std::string kSchema = DEMO_SCHEMA;

}  // namespace

TEST_CASE("a capnsplice receiver reads what capnp::writeMessageToFd writes") {
  RawPipe pipe;
  Receiver receiver(std::move(pipe.read_end));
  std::thread writer([fd = pipe.write_end.get()] {
    Random random(1);
    for (int i = 0; i < 50; ++i) {
      // Small first segments make many of these multi-segment.
      capnp::MallocMessageBuilder builder(i % 2 == 0 ? 1024 : 4);
      fill_blob(builder.initRoot<test::Blob>(), i, random.below(300000), random, i % 3);
      capnp::writeMessageToFd(fd, builder);
    }
  });
  for (int i = 0; i < 50; ++i) {
    auto message = receiver.receive();
    auto blob = message.root<test::Blob>();
    CHECK(blob.getSeq() == static_cast<std::uint64_t>(i));
    CHECK(blob_intact(blob));
  }
  writer.join();
}

TEST_CASE("a receiver on a pipe end opened read-write reads from it and never into it") {
  // vmsplice takes its direction from the descriptor's mode: on an O_RDWR end (a FIFO
  // opened that way, a reopened /proc/self/fd) it would splice the receive buffer into
  // the pipe and the receiver would parse its own stale bytes.
  RawPipe pipe;
  const std::string path = "/proc/self/fd/" + std::to_string(pipe.read_end.get());
  UniqueFd read_write(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  REQUIRE(read_write);
  Receiver receiver(std::move(read_write));
  Random random(2);
  for (int i = 0; i < 3; ++i) {
    capnp::MallocMessageBuilder builder;
    fill_blob(builder.initRoot<test::Blob>(), i, 20000, random);
    capnp::writeMessageToFd(pipe.write_end.get(), builder);
    auto message = receiver.receive_for(std::chrono::seconds(5));
    CHECK(message.root<test::Blob>().getSeq() == static_cast<std::uint64_t>(i));
    CHECK(blob_intact(message.root<test::Blob>()));
  }
  int queued = -1;
  REQUIRE(::ioctl(pipe.write_end.get(), FIONREAD, &queued) == 0);
  CHECK(queued == 0);  // nothing was written back into the pipe
}

TEST_CASE("capnp::StreamFdMessageReader reads what a capnsplice sender writes") {
  for (SendPath path : {SendPath::automatic, SendPath::copy, SendPath::vmsplice}) {
    RawPipe pipe;
    SenderOptions options;
    options.path = path;
    options.pool_bytes = 256 * KiB;  // small: some messages get several segments
    Sender sender(std::move(pipe.write_end), options);
    std::thread writer([&sender] {
      Random random(2);
      for (int i = 0; i < 50; ++i) {
        auto message = sender.new_message();
        fill_blob(message.init_root<test::Blob>(), i, random.below(400000), random, i % 3);
        sender.send(std::move(message));
      }
    });
    capnp::ReaderOptions reader_options;
    reader_options.traversalLimitInWords = 1 << 26;
    for (int i = 0; i < 50; ++i) {
      capnp::StreamFdMessageReader reader(pipe.read_end.get(), reader_options);
      auto blob = reader.getRoot<test::Blob>();
      CHECK(blob.getSeq() == static_cast<std::uint64_t>(i));
      CHECK(blob_intact(blob));
    }
    writer.join();
  }
}

TEST_CASE("capnp decode shows every message capnsplice-pipe produces into a pipe") {
  for (const char* path : {"auto", "vmsplice"}) {
    CommandResult result = run(kPipeTool + " produce --count 3 --size 5 --path " + path + " | " +
                               kCapnp + " decode " + kSchema + " Chunk");
    CHECK(result.exit_code == 0);
    CHECK_THAT(result.output, Catch::Contains("seq = 0") && Catch::Contains("seq = 1") &&
                                  Catch::Contains("seq = 2"));
    CHECK_THAT(result.output, Catch::Contains(R"(payload = "\002\002\002\002\002")"));
  }
}

TEST_CASE("capnp decode reads large spliced messages from capnsplice-pipe") {
  CommandResult result = run(kPipeTool + " produce --count 20 --size 300000 | " + kCapnp +
                             " decode " + kSchema + " Chunk | grep -c 'seq = '");
  CHECK(result.output == "20\n");
}

TEST_CASE("capnsplice-pipe consume reads what capnp encode writes") {
  CommandResult result =
      run("printf '(seq = 0, payload = \"hello\")\\n(seq = 1, payload = \"world!\")\\n' | " +
          kCapnp + " encode " + kSchema + " Chunk | " + kPipeTool + " consume");
  CHECK(result.exit_code == 0);
  CHECK(result.output == "2 messages, 11 payload bytes\n");
}

TEST_CASE("the library's receiver reads what capnp encode writes") {
  FILE* encoded = ::popen(("printf '(seq = 0, payload = \"abc\")\\n' | " + kCapnp + " encode " +
                           kSchema + " Chunk")
                              .c_str(),
                          "r");
  REQUIRE(encoded != nullptr);
  Receiver receiver(UniqueFd(::dup(::fileno(encoded))));
  auto message = receiver.receive();
  CHECK(message.root<Chunk>().getPayload().size() == 3);
  CHECK(error_from([&] { receiver.receive(); }).code() == ErrorCode::PeerClosed);
  ::pclose(encoded);
}

TEST_CASE("capnsplice-pipe round-trips through a pipe and through a file") {
  CommandResult piped =
      run(kPipeTool + " produce --count 2000 --size 70000 | " + kPipeTool + " consume");
  CHECK(piped.output == "2000 messages, 140000000 payload bytes\n");
  char file[] = "/tmp/capnsplice-interop-XXXXXX";
  int fd = ::mkstemp(file);
  REQUIRE(fd >= 0);
  ::close(fd);
  CHECK(run(kPipeTool + " produce --count 100 --size 100000 > " + file).exit_code == 0);
  CommandResult from_file = run(kPipeTool + " consume < " + file);
  CHECK(from_file.output == "100 messages, 10000000 payload bytes\n");
  ::unlink(file);
}

TEST_CASE("capnsplice-pipe consume reports bad input and exits 1") {
  CommandResult garbage = run("printf 'this is not a capnp frame' | " + kPipeTool + " consume");
  CHECK(garbage.exit_code == 1);
  CHECK_THAT(garbage.output, Catch::Contains("[MalformedFrame]") ||
                                 Catch::Contains("[MessageTooLarge]") ||
                                 Catch::Contains("[TruncatedMessage]"));
  CommandResult truncated =
      run(kPipeTool + " produce --count 3 --size 100 | head -c 200 | " + kPipeTool + " consume");
  CHECK(truncated.exit_code == 1);
  CHECK_THAT(truncated.output, Catch::Contains("[TruncatedMessage]"));
  CommandResult reordered = run("printf '(seq = 1)\\n' | " + kCapnp + " encode " + kSchema +
                                " Chunk | " + kPipeTool + " consume");
  CHECK(reordered.exit_code == 1);
  CHECK_THAT(reordered.output, Catch::Contains("has seq 1, expected 0"));
}
