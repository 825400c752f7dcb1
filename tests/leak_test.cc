// Nothing leaks: descriptors, memory mappings, children, socket files.
#include <catch2/catch.hpp>
#include <fstream>
#include <string>
#include <thread>

#include "capnsplice/process.h"
#include "capnsplice/rendezvous.h"
#include "support/blob.h"
#include "support/process_support.h"
#include "support/sanitizer.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

int mapping_count() {
  std::ifstream maps("/proc/self/maps");
  int count = 0;
  for (std::string line; std::getline(maps, line);) ++count;
  return count;
}

void send_seq(Channel& channel, std::uint64_t seq) {
  channel.send_struct<test::Blob>([seq](test::Blob::Builder blob) { blob.setSeq(seq); });
}

}  // namespace

TEST_CASE("10,000 channel create and destroy cycles leak no descriptor and no mapping") {
  make_thread_wake_fd();
  const int fds_before = open_fd_count();
  const int maps_before = mapping_count();
  for (std::uint64_t cycle = 0; cycle < 10'000; ++cycle) {
    auto [near, far] = Channel::pair();
    send_seq(near, cycle);  // pool and receive ring exist only once used
    REQUIRE(far.receive().root<test::Blob>().getSeq() == cycle);
    if (cycle == 0) {
      // 2 pipes: the control sockets come with the first large message, and a blocking
      // receive waits on its thread's eventfd, not one per receiver
      CHECK(open_fd_count() == fds_before + 4);
    }
  }
  const int fds_after = open_fd_count();
  std::printf("descriptors: %d before, %d after 10,000 cycles; mappings: %d before, %d after\n",
              fds_before, fds_after, maps_before, mapping_count());
  CHECK(fds_after == fds_before);
  // The allocator may keep an arena or two; a sanitizer's allocator maps more as it goes.
  CHECK(mapping_count() <= maps_before + (kUnderSanitizer ? 32 : 2));
}

TEST_CASE("spawning, forking and reaping 200 children leaks no descriptor and no zombie") {
  make_thread_wake_fd();
  const int fds_before = open_fd_count();
  for (int cycle = 0; cycle < 100; ++cycle) {
    Child spawned = spawn_peer({"echo"});
    send_seq(spawned.channel, 1);
    spawned.channel.receive(Deadline::after(10s));
    Child forked = fork_with_channel([](Channel&) { return 0; });
    REQUIRE(forked.process.wait().success());
    if (cycle % 2 == 0) spawned.process.kill();  // the rest are killed by the handle
  }
  std::printf("descriptors: %d before, %d after 200 children\n", fds_before, open_fd_count());
  CHECK(open_fd_count() == fds_before);
  CHECK(no_children_left());
}

TEST_CASE("500 rendezvous connections leak no descriptor and leave no socket file") {
  const std::string path = "/tmp/capnsplice-leak-" + std::to_string(::getpid()) + ".sock";
  make_thread_wake_fd();
  const int fds_before = open_fd_count();
  {
    RendezvousListener listener(path);
    std::thread clients([&path] {
      for (std::uint64_t i = 0; i < 500; ++i) {
        Connection host = connect_rendezvous(path);
        send_seq(host.channel, i);
      }
    });
    for (std::uint64_t i = 0; i < 500; ++i) {
      Connection client = listener.accept(Deadline::after(10s));
      REQUIRE(client.channel.receive(Deadline::after(10s)).root<test::Blob>().getSeq() == i);
    }
    clients.join();
  }
  std::printf("descriptors: %d before, %d after 500 rendezvous connections\n", fds_before,
              open_fd_count());
  CHECK(open_fd_count() == fds_before);
  CHECK(::access(path.c_str(), F_OK) != 0);
}
