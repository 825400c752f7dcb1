// The "host" workload on capnsplice: one capnsplice Channel per plugin (library
// defaults), served on one thread by the Boost.Asio adapter (capnsplice/asio.h).
//
// Per plugin the host keeps plan.window requests in flight: the replies, taken by one
// async_receive_batch at a time (all that are there), are checked and each answered
// with a new request through async_send; the adapter writes the requests of one turn of
// the loop together. Requests are built in the channel's pool (new_message() never waits).
// The loop's 1 ms tick (HostSession) is a steady_timer on the same io_context.
//
// The plugin is the same as the socketpair one, on a Channel: a blocking receive(),
// then every request that read brought (has_buffered_message()), each answered with
// queue(), and one flush() for them all. It does not spin before sleeping
// (spin_before_block 0), like the socketpair plugin: N spinning plugins would take the
// cores the host runs on.

// Every handler the loop runs is timed (HostSession::step): see asio_step_timing.h.
#define BOOST_ASIO_CUSTOM_HANDLER_TRACKING "hosts/asio_step_timing.h"
#include <capnsplice/asio.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <exception>
#include <memory>
#include <stdexcept>
#include <vector>

#include "host_workload.h"
#include "payload.h"

namespace bench {

namespace {

using capnsplice::demo::Chunk;

/// The plugin: answers every request until the host goes away.
int run_plugin(capnsplice::Channel& host, const HostPlan& plan) {
  const auto answer = [&](capnsplice::ReceivedMessage request) {
    const std::uint64_t seq = check_chunk(request.root<Chunk>());
    capnsplice::OutgoingMessage reply = host.new_message();
    fill_chunk(reply.init_root<Chunk>(), seq, plan.reply_bytes);
    host.queue(std::move(reply));
  };
  for (;;) {
    try {
      answer(host.receive());
    } catch (const capnsplice::Error& error) {
      if (error.code() == capnsplice::ErrorCode::PeerClosed) return 0;
      throw;
    }
    // What the same read brought (as the socketpair plugin parses its buffer): a
    // try_receive() here would read the pipe again, mostly to find it empty.
    while (host.has_buffered_message()) answer(host.receive());
    host.flush();
  }
}

/// The host's side of one plugin.
class PluginClient {
 public:
  PluginClient(boost::asio::io_context& io, capnsplice::Channel&& channel, const HostPlan& plan,
               HostSession& session, std::exception_ptr& failure)
      : channel_(io.get_executor(), std::move(channel)),
        io_(io),
        plan_(plan),
        session_(session),
        failure_(failure) {}

  void start() {
    for (std::size_t i = 0; i < plan_.window; ++i) send_request();
    receive_reply();
  }

 private:
  void send_request() {
    capnsplice::OutgoingMessage request = channel_.new_message();
    fill_chunk(request.init_root<Chunk>(), next_request_++, plan_.request_bytes);
    channel_.async_send(std::move(request), [this](std::exception_ptr error) {
      if (error) fail(error);
    });
  }

  /// Takes every reply there is in one completion, as the epoll host reads all it can.
  void receive_reply() {
    channel_.async_receive_batch(
        kMaxRepliesAtOnce,
        [this](std::exception_ptr error, std::vector<capnsplice::ReceivedMessage> replies) {
          if (error) return fail(error);
          for (capnsplice::ReceivedMessage& reply : replies) {
            if (check_chunk(reply.root<Chunk>()) != next_reply_++) {
              return fail(std::make_exception_ptr(std::runtime_error("a reply came out of order")));
            }
            session_.count_reply();
            send_request();
          }
          receive_reply();
        });
  }

  static constexpr std::size_t kMaxRepliesAtOnce = 64;

  void fail(std::exception_ptr error) {
    if (!failure_) failure_ = error;
    io_.stop();
  }

  capnsplice::AsioChannel channel_;
  boost::asio::io_context& io_;
  const HostPlan& plan_;
  HostSession& session_;
  std::exception_ptr& failure_;
  std::uint64_t next_request_ = 0, next_reply_ = 0;
};

/// Runs `session`'s 1 ms tick on `timer` until the measured time is over, then stops `io`.
void keep_ticking(boost::asio::io_context& io, boost::asio::steady_timer& timer,
                  HostSession& session) {
  timer.expires_at(session.next_tick());
  timer.async_wait([&io, &timer, &session](boost::system::error_code error) {
    if (error) return;
    if (session.tick()) return keep_ticking(io, timer, session);
    io.stop();
  });
}

}  // namespace

void report_asio_step(HostSession& session, std::chrono::steady_clock::time_point began) {
  session.step(began);
}

HostOutcome run_capnsplice_asio_host(const HostPlan& plan) {
  std::vector<capnsplice::Channel> host_ends;
  host_ends.reserve(plan.plugins);
  std::vector<ChildProcess> children;
  children.reserve(plan.plugins);
  for (std::size_t i = 0; i < plan.plugins; ++i) {
    // The plugin's receive sleeps at once (see the top); the host end never blocks, so
    // the option changes nothing there. The benchmark ignores SIGPIPE (main.cc), as
    // servers do, and the socketpair host's writes rely on it: these say so, and their
    // writes cost no system call for SIGPIPE either (SigpipeSafety).
    auto ends = capnsplice::Channel::pair(
        capnsplice::ChannelOptions()
            .with_name("plugin-" + std::to_string(i))
            .with_spin_before_block(std::chrono::nanoseconds(0))
            .with_sigpipe(capnsplice::SigpipeSafety::process_ignores));
    host_ends.push_back(std::move(ends.first));
    children.push_back(ChildProcess::spawn([&] {
      host_ends.clear();  // the host's ends, this one's included: closed in the plugin
      return run_plugin(ends.second, plan);
    }));
  }  // the plugin's end closes here, in the host

  boost::asio::io_context io(1);  // one thread runs it
  HostSession session(plan);
  std::exception_ptr failure;
  std::vector<std::unique_ptr<PluginClient>> clients;
  for (capnsplice::Channel& channel : host_ends) {
    clients.push_back(
        std::make_unique<PluginClient>(io, std::move(channel), plan, session, failure));
  }
  for (auto& client : clients) client->start();
  boost::asio::steady_timer timer(io);
  keep_ticking(io, timer, session);
  asio_step_session = &session;
  io.run();
  asio_step_session = nullptr;
  if (failure) std::rethrow_exception(failure);
  return session.outcome();
}

}  // namespace bench
