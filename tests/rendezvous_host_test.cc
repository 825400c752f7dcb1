// A rendezvous client against hosts that do not keep to the protocol: it keeps to its
// own timeout whatever the host does.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <time.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <optional>
#include <thread>

#include "capnsplice/rendezvous.h"
#include "support/blob.h"
#include "support/error_from.h"
#include "support/temp_dir.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

/// A Unix stream socket at `path`: listening there, or connected to it (and then, in
/// the tests, silent).
UniqueFd socket_at(const std::string& path, bool listening) {
  UniqueFd socket(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(socket);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path.c_str(), sizeof address.sun_path - 1);
  const auto* at = reinterpret_cast<const sockaddr*>(&address);
  if (listening) {
    REQUIRE(::bind(socket.get(), at, sizeof address) == 0);
    REQUIRE(::listen(socket.get(), 4) == 0);
  } else {
    REQUIRE(::connect(socket.get(), at, sizeof address) == 0);
  }
  return socket;
}

/// Hands `fds` to `client` as an accepted connection, as src/unix_socket.cc lays it out:
/// the byte 'A' with the descriptors attached.
void hand_over(int client, const int (&fds)[3]) {
  char accepted = 'A';
  iovec iov{&accepted, 1};
  msghdr header{};
  header.msg_iov = &iov;
  header.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof fds)] = {};
  header.msg_control = control;
  header.msg_controllen = sizeof control;
  cmsghdr* message = CMSG_FIRSTHDR(&header);
  message->cmsg_level = SOL_SOCKET;
  message->cmsg_type = SCM_RIGHTS;
  message->cmsg_len = CMSG_LEN(sizeof fds);
  std::memcpy(CMSG_DATA(message), fds, sizeof fds);
  REQUIRE(::sendmsg(client, &header, MSG_NOSIGNAL) == 1);
}

}  // namespace

TEST_CASE("connect_rendezvous keeps to its timeout when the host hands over a control link "
          "that cannot take a record") {
  TempDir dir;
  UniqueFd listening = socket_at(dir.socket(), /*listening=*/true);
  std::thread host([&listening] {
    UniqueFd client(::accept4(listening.get(), nullptr, nullptr, SOCK_CLOEXEC));
    int to_client[2], from_client[2], control[2];
    REQUIRE(::pipe2(to_client, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(from_client, O_CLOEXEC) == 0);
    REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, control) == 0);
    // Fill the queue the client's records go to: its first record finds no room.
    const char record[24] = {};
    while (::send(control[0], record, sizeof record, MSG_DONTWAIT) > 0) {
    }
    hand_over(client.get(), {to_client[0], from_client[1], control[0]});
    // Then never a hello: wait until the client gives up and closes its end (the hello
    // it sends makes the pipe readable; only its closing is a hang-up).
    pollfd gone{from_client[0], 0, 0};
    ::poll(&gone, 1, 20000);
    for (int fd : {to_client[0], to_client[1], from_client[0], from_client[1], control[0],
                   control[1]}) {
      ::close(fd);
    }
  });
  RendezvousOptions options;
  options.hello.timeout = 300ms;
  Error error = error_from([&] { connect_rendezvous(dir.socket(), options); });
  host.join();
  CHECK(error.code() == ErrorCode::Timeout);  // it blocked for ever on the control link
}

TEST_CASE("silent clients hold up no well-behaved one: handshakes wait side by side") {
  TempDir dir;
  RendezvousOptions host_options;
  host_options.hello.timeout = 1s;
  RendezvousListener listener(dir.socket(), host_options);
  const UniqueFd silent[] = {socket_at(dir.socket(), false), socket_at(dir.socket(), false)};
  std::optional<Connection> served;
  std::thread host([&] {
    const Deadline give_up = Deadline::after(10s);
    while (!served && !give_up.expired()) {
      try {
        served.emplace(listener.accept(give_up));
      } catch (const Error&) {  // a silent client's hello timed out: serve on
      }
    }
  });
  // Served one after the other, the two silent clients would take 2 s first.
  RendezvousOptions client_options;
  client_options.hello.timeout = 1500ms;
  std::optional<Connection> connected;
  Error failed(ErrorCode::SystemError, "", "not run");
  try {
    connected.emplace(connect_rendezvous(dir.socket(), client_options));
  } catch (const Error& error) {
    failed = error;
  }
  host.join();
  INFO(failed.what());
  REQUIRE(connected.has_value());
  REQUIRE(served.has_value());
  Random random(1);
  send_blob(connected->channel, 7, 100, random);
  CHECK(served->channel.receive_as<test::Blob>(Deadline::after(10s))->getSeq() == 7);
}

TEST_CASE("a socket file swapped for a symlink while a listener starts never lends its mode "
          "to the symlink's target") {
  TempDir dir;
  const std::string socket = dir.socket();
  const std::string target = dir.path + "/target";
  UniqueFd file(::open(target.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
  REQUIRE(file);
  REQUIRE(::fchmod(file.get(), 0600) == 0);
  // Someone who can write the directory watches for the socket file and swaps it for a
  // symlink to the target the moment it appears (rename replaces it atomically).
  const std::string staged = dir.path + "/staged";
  std::atomic<bool> stop{false};
  std::thread attacker([&] {
    while (!stop) {
      struct stat info {};
      if (::lstat(socket.c_str(), &info) == 0 && S_ISSOCK(info.st_mode)) {
        ::symlink(target.c_str(), staged.c_str());
        ::rename(staged.c_str(), socket.c_str());
      }
    }
  });
  RendezvousOptions options;
  options.socket_mode = 0666;
  int started = 0;
  for (int i = 0; i < 1000; ++i) {
    ::unlink(socket.c_str());  // whatever the attacker left there
    try {
      RendezvousListener listener(socket, options);
      ++started;
    } catch (const Error&) {  // the symlink was there first: refused, as it should be
    }
  }
  stop = true;
  attacker.join();
  struct stat info {};
  REQUIRE(::stat(target.c_str(), &info) == 0);
  INFO(started << " listeners started");
  CHECK((info.st_mode & 0777) == 0600);
}

TEST_CASE("a listener whose handshake slots are all taken sleeps instead of spinning on the "
          "clients still waiting") {
  TempDir dir;
  RendezvousOptions options;
  options.backlog = 1;  // one handshake slot
  options.hello.timeout = 5s;
  RendezvousListener listener(dir.socket(), options);
  const UniqueFd silent[] = {socket_at(dir.socket(), false), socket_at(dir.socket(), false)};
  timespec cpu_before{}, cpu_after{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu_before);
  Error error = error_from([&] { listener.accept(Deadline::after(1s)); });
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu_after);
  CHECK(error.code() == ErrorCode::Timeout);
  const double cpu_seconds = static_cast<double>(cpu_after.tv_sec - cpu_before.tv_sec) +
                             static_cast<double>(cpu_after.tv_nsec - cpu_before.tv_nsec) * 1e-9;
  INFO(cpu_seconds << " s of CPU in a 1 s accept");
  CHECK(cpu_seconds < 0.3);  // it spun the whole second before
}

TEST_CASE("a socket path of 107 bytes, the most an address holds, still serves") {
  TempDir dir;
  std::string deep = dir.path;
  while (deep.size() < 90) {
    deep += "/d";
    REQUIRE(::mkdir(deep.c_str(), 0755) == 0);
  }
  const std::string path = deep + "/" + std::string(107 - deep.size() - 1, 's');
  REQUIRE(path.size() == 107);
  RendezvousListener listener(path);
  std::optional<Connection> served;
  std::thread host([&] { served.emplace(listener.accept(Deadline::after(10s))); });
  Connection client = connect_rendezvous(path);
  host.join();
  REQUIRE(served.has_value());
  Random random(2);
  send_blob(client.channel, 3, 10, random);
  CHECK(served->channel.receive_as<test::Blob>(Deadline::after(10s))->getSeq() == 3);
}
