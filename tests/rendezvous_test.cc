// The named rendezvous (a Unix socket that hands out pipe pairs) and the hello on connect.
#include "capnsplice/rendezvous.h"

#include <capnp/serialize.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "capnsplice.capnp.h"
#include "capnsplice/handshake.h"
#include "support/blob.h"
#include "support/process_support.h"
#include "support/temp_dir.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;
using namespace std::chrono_literals;

constexpr uid_t kOtherUid = 65534;  // nobody

std::string abstract_name(const char* what) {
  return "@capnsplice-test-" + std::string(what) + "-" + std::to_string(::getpid());
}

/// Drops to uid/gid `kOtherUid` (in a forked child).
bool become_other_user() {
  return ::setgroups(0, nullptr) == 0 && ::setgid(kOtherUid) == 0 && ::setuid(kOtherUid) == 0;
}

void check_echo(Channel& channel, std::uint64_t seq) {
  Random random(seq);
  send_blob(channel, seq, 50 * KiB, random);
  auto echoed = channel.receive_as<test::Blob>(Deadline::after(10s));
  CHECK(echoed->getSeq() == seq);
  CHECK(blob_intact(echoed.root()));
}

/// Accepts one client spawned as `connect NAME ...` and checks who it is.
void serve_spawned_client(RendezvousListener& listener, std::uint64_t seq) {
  Child client = spawn_peer({"connect", listener.name()});
  {
    Connection connection = listener.accept(Deadline::after(10s));
    CHECK(connection.peer.pid == client.process.pid());
    CHECK(connection.peer.uid == ::geteuid());
    CHECK(connection.hello.pid == client.process.pid());
    CHECK(connection.hello.protocol_version == kProtocolVersion);
    check_echo(connection.channel, seq);
  }
  CHECK(client.process.wait().success());  // it saw the host close the channel
}

bool running_as_root() {
  if (::geteuid() == 0) return true;
  WARN("not root: cannot arrange a client of another uid; this case checked nothing");
  return false;
}

}  // namespace

TEST_CASE("a client started elsewhere connects by path and gets a channel to the host") {
  TempDir dir;
  {
    RendezvousListener listener(dir.socket());
    struct stat info {};
    REQUIRE(::stat(dir.socket().c_str(), &info) == 0);
    CHECK((info.st_mode & 0777) == 0600);
    serve_spawned_client(listener, 1);
    serve_spawned_client(listener, 2);  // each client gets fresh pipes
  }
  CHECK(::access(dir.socket().c_str(), F_OK) != 0);  // the socket file is removed
}

TEST_CASE("a client connects by abstract name") {
  RendezvousListener listener(abstract_name("abstract"));
  serve_spawned_client(listener, 3);
}

TEST_CASE(
    "connecting to a host whose queue of waiting clients stays full fails with Timeout at "
    "the hello timeout") {
  const std::string name = abstract_name("full-queue");
  RendezvousOptions host_options;
  host_options.backlog = 0;
  RendezvousListener listener(name, host_options);  // never accepts
  // Queue clients of our own until the kernel refuses one for lack of room.
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path + 1, name.data() + 1, name.size() - 1);
  const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
  std::vector<UniqueFd> waiting;
  for (;;) {
    UniqueFd client(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (::connect(client.get(), reinterpret_cast<sockaddr*>(&address), length) != 0) {
      REQUIRE(errno == EAGAIN);
      break;
    }
    waiting.push_back(std::move(client));
    REQUIRE(waiting.size() < 100);
  }
  RendezvousOptions options;
  options.hello.timeout = 300ms;
  const auto started = std::chrono::steady_clock::now();
  Error error = error_from([&] { connect_rendezvous(name, options); });
  const double took_ms = ms_since(started);
  CHECK(error.code() == ErrorCode::Timeout);
  CHECK_THAT(error.what(), Catch::Contains("queue of waiting clients stayed full"));
  CHECK(took_ms >= 300);
  CHECK(took_ms < 10'000);  // not for ever, as a blocking connect would
}

TEST_CASE("the data flows on pipes, not on the socket") {
  RendezvousListener listener(abstract_name("pipes"));
  // What the client saw, checked after join: Catch2 asserts on one thread only.
  bool client_on_pipe = false;
  std::uint64_t client_seq = 0;
  std::thread client([name = listener.name(), &client_on_pipe, &client_seq] {
    Connection host = connect_rendezvous(name);
    struct stat info {};
    client_on_pipe = ::fstat(host.channel.receive_fd(), &info) == 0 && S_ISFIFO(info.st_mode);
    client_seq = host.channel.receive_as<test::Blob>(Deadline::after(10s))->getSeq();
  });
  Connection connection = listener.accept(Deadline::after(10s));
  struct stat info {};
  REQUIRE(::fstat(connection.channel.receive_fd(), &info) == 0);
  CHECK(S_ISFIFO(info.st_mode));
  connection.channel.send_struct<test::Blob>([](test::Blob::Builder blob) { blob.setSeq(4); });
  client.join();
  CHECK(client_on_pipe);
  CHECK(client_seq == 4);
}

TEST_CASE("a stale socket file left by a crashed host is replaced, a live one is not") {
  TempDir dir;
  {
    // A socket bound and closed without unlinking: what a host killed with -9 leaves.
    int stale = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::snprintf(address.sun_path, sizeof address.sun_path, "%s", dir.socket().c_str());
    REQUIRE(::bind(stale, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    ::close(stale);
  }
  RendezvousListener listener(dir.socket());
  Error error = error_from([&] { RendezvousListener second(dir.socket()); });
  CHECK(error.sys_errno() == EADDRINUSE);
  CHECK_THAT(error.what(), Catch::Contains("another host is listening"));
  serve_spawned_client(listener, 5);  // the first host's socket file survived
}

TEST_CASE("a client of another user is refused by the socket file's mode") {
  if (!running_as_root()) return;
  TempDir dir;
  RendezvousListener listener(dir.socket());
  const pid_t child = fork_child([&] {
    if (!become_other_user()) return 10;
    try {
      connect_rendezvous(dir.socket());
    } catch (const Error& error) {
      return error.sys_errno() == EACCES ? 0 : 11;
    }
    return 12;
  });
  CHECK(wait_child(child) == 0);
  CHECK_THROWS_AS(listener.accept(Deadline::after(100ms)), Error);  // nobody got through
}

TEST_CASE(
    "a client of another user is refused by the host's uid check even when the "
    "socket file's mode lets it connect") {
  if (!running_as_root()) return;
  TempDir dir;
  RendezvousOptions relaxed;
  relaxed.socket_mode = 0666;
  RendezvousListener listener(dir.socket(), relaxed);
  const pid_t child = fork_child([&] {
    if (!become_other_user()) return 10;
    RendezvousOptions trusting;  // the client accepts the root host: only the host refuses
    trusting.allowed_uids = {0};
    try {
      connect_rendezvous(dir.socket(), trusting);
    } catch (const Error& error) {
      const bool told = std::string(error.what())
                            .find("the host refused this connection: uid 65534 may not connect") !=
                        std::string::npos;
      return error.code() == ErrorCode::PeerRefused && told ? 0 : 11;
    }
    return 12;
  });
  Error error = error_from([&] { listener.accept(Deadline::after(10s)); });
  CHECK(error.code() == ErrorCode::PeerRefused);
  CHECK_THAT(error.what(), Catch::Contains("uid 65534)"));
  CHECK(wait_child(child) == 0);
}

TEST_CASE("a client refuses a host run by another user, unless it allows that user") {
  if (!running_as_root()) return;
  const std::string name = abstract_name("other-host");
  // The host runs as another user: first it is refused, then accepted on purpose.
  Child host = fork_with_channel([&](Channel& parent) {
    if (!become_other_user()) return 10;
    RendezvousOptions options;
    options.allowed_uids = {0};
    RendezvousListener listener(name, options);
    parent.send_struct<test::Empty>([](auto) {});
    for (;;) {  // the refusing client hangs up, during the handover or the hello
      try {
        Connection client = listener.accept(Deadline::after(10s));
        client.channel.send_struct<test::Blob>([](test::Blob::Builder blob) { blob.setSeq(6); });
        return 0;
      } catch (const Error& error) {
        if (!error.peer_gone()) return 12;
      }
    }
  });
  host.channel.receive(Deadline::after(10s));  // listening

  Error error = error_from([&] { connect_rendezvous(name); });
  CHECK(error.code() == ErrorCode::PeerRefused);
  CHECK_THAT(error.what(), Catch::Contains("uid 65534) is not an allowed user"));

  RendezvousOptions trusting;
  trusting.allowed_uids = {kOtherUid};
  Connection connection = connect_rendezvous(name, trusting);
  CHECK(connection.peer.uid == kOtherUid);
  CHECK(connection.channel.receive_as<test::Blob>(Deadline::after(10s))->getSeq() == 6);
  CHECK(host.process.wait().exit_code() == 0);
}

TEST_CASE("a rendezvous client speaking another application fails at once on both sides") {
  RendezvousOptions options;
  options.hello = {.application = "thumbnailer", .application_version = 1};
  RendezvousListener listener(abstract_name("mismatch"), options);
  Child client = spawn_peer({"connect", listener.name(), "transcoder", "1"});
  Error error = error_from([&] { listener.accept(Deadline::after(10s)); });
  CHECK(error.code() == ErrorCode::IncompatiblePeer);
  CHECK_THAT(error.what(), Catch::Contains("the peer speaks application 'transcoder' version 1, "
                                           "this end expects 'thumbnailer' version 1"));
  CHECK(client.process.wait().exit_code() == 3);  // IncompatiblePeer on its side too
}

TEST_CASE("connecting where nobody listens fails with a SystemError naming the place") {
  TempDir dir;
  Error no_file = error_from([&] { connect_rendezvous(dir.socket()); });
  CHECK(no_file.sys_errno() == ENOENT);
  CHECK_THAT(no_file.what(), Catch::StartsWith("rendezvous '" + dir.socket() + "': connect"));
  CHECK(error_from([] { connect_rendezvous("@capnsplice-nobody-here"); }).sys_errno() ==
        ECONNREFUSED);
}

TEST_CASE("a rendezvous name longer than a socket address takes is InvalidArgument") {
  Error error = error_from([] { RendezvousListener(std::string(200, 'x')); });
  CHECK(error.code() == ErrorCode::InvalidArgument);
  CHECK(error.sys_errno() == 0);
  CHECK(error_from([] { connect_rendezvous(""); }).code() == ErrorCode::InvalidArgument);
}

TEST_CASE("a hello from another protocol version fails with IncompatiblePeer") {
  auto [near, far] = Channel::pair(ChannelOptions().with_name("versions"));
  far.send_struct<wire::Hello>([](wire::Hello::Builder hello) {
    hello.setMagic(wire::Hello::EXPECTED_MAGIC);
    hello.setProtocolVersion(99);
  });
  Error error = error_from([&near = near] { exchange_hello(near); });
  CHECK(error.code() == ErrorCode::IncompatiblePeer);
  CHECK_THAT(error.what(),
             Catch::Equals("channel 'versions': hello: the peer speaks capnsplice protocol "
                           "version 99, this end speaks version " +
                                               std::to_string(kProtocolVersion) +
                                               " [IncompatiblePeer]"));
}

TEST_CASE("across exec, a hello from another protocol version fails at once on both sides") {
  // The child's first message is a hello claiming version 99; this end speaks kProtocolVersion.
  capnp::MallocMessageBuilder forged;
  auto hello = forged.initRoot<wire::Hello>();
  hello.setMagic(wire::Hello::EXPECTED_MAGIC);
  hello.setProtocolVersion(99);
  hello.setMaxMessageBytes(ReceiveLimits{}.max_message_bytes);
  const kj::Array<capnp::word> frame = capnp::messageToFlatArray(forged);
  std::string hex;
  for (capnp::byte byte : frame.asBytes()) {
    static constexpr char kDigits[] = "0123456789abcdef";
    hex += {kDigits[byte >> 4], kDigits[byte & 15]};
  }
  Child forger = spawn_peer({"send-frame", hex});
  auto started = std::chrono::steady_clock::now();
  Error error = error_from([&] { exchange_hello(forger.channel); });
  CHECK(ms_since(started) < 1000);  // at once, not after the hello's 5 s timeout
  CHECK(error.code() == ErrorCode::IncompatiblePeer);
  CHECK_THAT(error.what(),
             Catch::Equals("channel 'peer': hello: the peer speaks capnsplice protocol "
                           "version 99, this end speaks version " +
                                               std::to_string(kProtocolVersion) +
                                               " [IncompatiblePeer]"));

  // The other way round: the child calls exchange_hello(), this end claims version 99.
  Child child = spawn_peer({"hello"});
  child.channel.send_copy(forged);
  started = std::chrono::steady_clock::now();
  auto status = child.process.wait_for(10s);
  CHECK(ms_since(started) < 1000);
  REQUIRE(status.has_value());
  CHECK(status->exit_code() == 3);  // the test peer's code for IncompatiblePeer
  auto its_hello = child.channel.receive_as<wire::Hello>(Deadline::after(10s));
  CHECK(its_hello->getProtocolVersion() == kProtocolVersion);
}

TEST_CASE("a first message that is not a hello fails with IncompatiblePeer") {
  auto [near, far] = Channel::pair();
  Random random(7);
  send_blob(far, 0x1234, 100, random);
  Error error = error_from([&near = near] { exchange_hello(near); });
  CHECK(error.code() == ErrorCode::IncompatiblePeer);
  CHECK_THAT(error.what(), Catch::Contains("not a capnsplice hello"));
}

TEST_CASE("a peer that accepts smaller messages than this end sends fails the hello") {
  auto [near, far] = Channel::pair();
  std::thread peer([&far = far] {
    HelloOptions small;
    small.limits.max_message_bytes = 1 * MiB;
    exchange_hello(far, small);
  });
  HelloOptions big;
  big.largest_message_sent = 2 * MiB;
  Error error = error_from([&near = near, &big] { exchange_hello(near, big); });
  peer.join();
  CHECK(error.code() == ErrorCode::IncompatiblePeer);
  CHECK_THAT(error.what(), Catch::Contains("this end sends messages of up to 2097152 bytes, "
                                           "the peer accepts at most 1048576"));
}

TEST_CASE("a peer that never says hello fails it with Timeout") {
  auto [near, far] = Channel::pair(ChannelOptions().with_name("silent"));
  HelloOptions impatient;
  impatient.timeout = 50ms;
  Error error = error_from([&near = near, &impatient] { exchange_hello(near, impatient); });
  CHECK(error.code() == ErrorCode::Timeout);
  CHECK_THAT(error.what(), Catch::Contains("channel 'silent': hello: the peer sent no hello"));
}
