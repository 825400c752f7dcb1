// SIGPIPE safety (SenderOptions::sigpipe): a reader that goes never kills the writer, the
// process's dispositions stay as they were, and a process that ignores SIGPIPE pays no
// signal-mask changes for it.
#include <catch2/catch.hpp>

#include <csignal>

#include "capnsplice/channel.h"
#include "sigpipe_guard.h"
#include "support/blob.h"
#include "support/error_from.h"
#include "support/signal_disposition.h"

namespace {

using namespace capnsplice;
using namespace capnsplice::testing;

/// Sends `count` small blobs from `near` and receives them on `far`.
void exchange(Channel& near, Channel& far, int count, Random& random) {
  for (int seq = 0; seq < count; ++seq) send_blob(near, seq, 64, random);
  for (int seq = 0; seq < count; ++seq) {
    auto blob = far.receive_as<test::Blob>();
    CHECK(blob->getSeq() == static_cast<std::uint64_t>(seq));
    CHECK(blob_intact(blob.root()));
  }
}

/// Sends to a channel whose peer is gone: must fail with PeerClosed, not kill the process.
void send_to_gone_peer(Channel& near, Random& random) {
  Error error = error_from([&] { send_blob(near, 99, 100000, random); });
  CHECK(error.code() == ErrorCode::PeerClosed);
}

bool sigpipe_pending() {
  sigset_t pending;
  sigpending(&pending);
  return sigismember(&pending, SIGPIPE) == 1;
}

/// SIGPIPE's disposition for the length of a test case, starting from what the sender
/// would know in a fresh process (the cases may also run in one process).
class SigpipeFor : public SignalDisposition {
 public:
  explicit SigpipeFor(void (*handler)(int)) : SignalDisposition(SIGPIPE, handler) {
    detail::forget_sigpipe_finding();
  }
};

void (*sigpipe_handler())(int) {
  struct sigaction current {};
  REQUIRE(::sigaction(SIGPIPE, nullptr, &current) == 0);
  return current.sa_handler;
}

}  // namespace

TEST_CASE("a process that ignores SIGPIPE writes without changing the signal mask") {
  SigpipeFor ignore(SIG_IGN);
  auto [near, far] = Channel::pair(ChannelOptions().with_name("ignoring"));
  Random random(1);
  exchange(near, far, 20, random);
  CHECK(near.sender().stats().writes >= 20);
  CHECK(near.sender().stats().sigpipe_masked_batches == 0);
  { Channel gone = std::move(far); }
  send_to_gone_peer(near, random);
  CHECK(near.sender().stats().sigpipe_masked_batches == 0);
  CHECK(sigpipe_handler() == SIG_IGN);
}

TEST_CASE("with SIGPIPE at its default every batch is written with SIGPIPE blocked") {
  SigpipeFor by_default(SIG_DFL);
  auto [near, far] = Channel::pair(ChannelOptions().with_name("default"));
  Random random(2);
  exchange(near, far, 20, random);
  const SenderStats stats = near.sender().stats();
  CHECK(stats.writes >= 20);
  CHECK(stats.sigpipe_masked_batches == stats.writes);  // one send, one batch, one write
  { Channel gone = std::move(far); }
  send_to_gone_peer(near, random);
  CHECK(sigpipe_handler() == SIG_DFL);
  CHECK_FALSE(sigpipe_pending());
}

TEST_CASE("a process that stops ignoring SIGPIPE is protected from its next write on") {
  auto [near, far] = Channel::pair(ChannelOptions().with_name("changing"));
  Random random(3);
  {
    SigpipeFor ignore(SIG_IGN);
    exchange(near, far, 5, random);
    CHECK(near.sender().stats().sigpipe_masked_batches == 0);
  }
  SigpipeFor by_default(SIG_DFL);
  { Channel gone = std::move(far); }
  send_to_gone_peer(near, random);  // without the mask, this SIGPIPE would end the test
  CHECK(near.sender().stats().sigpipe_masked_batches >= 1);
  CHECK_FALSE(sigpipe_pending());
}

TEST_CASE("process_ignores refuses a process that does not ignore SIGPIPE, with advice") {
  SigpipeFor by_default(SIG_DFL);
  Error error = error_from([] {
    Channel::pair(ChannelOptions().with_name("promised").with_sigpipe(SigpipeSafety::process_ignores));
  });
  CHECK(error.code() == ErrorCode::InvalidArgument);
  CHECK_THAT(error.what(), Catch::Contains("channel 'promised'") &&
                               Catch::Contains("signal(SIGPIPE, SIG_IGN)"));
}

TEST_CASE("process_ignores writes without asking and a gone peer still gives PeerClosed") {
  auto [near, far] = [] {
    SigpipeFor ignore(SIG_IGN);  // what process_ignores is checked against
    return Channel::pair(ChannelOptions().with_sigpipe(SigpipeSafety::process_ignores));
  }();
  Random random(4);
  {
    // Not asked: even at the default disposition (the application broke its promise,
    // harmless while the reader lives) no batch is masked, where automatic masks each.
    SigpipeFor by_default(SIG_DFL);
    exchange(near, far, 20, random);
    CHECK(near.sender().stats().sigpipe_masked_batches == 0);
  }
  SigpipeFor ignore(SIG_IGN);
  { Channel gone = std::move(far); }
  send_to_gone_peer(near, random);
  CHECK(near.sender().stats().sigpipe_masked_batches == 0);
  CHECK_FALSE(sigpipe_pending());
}
