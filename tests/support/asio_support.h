// tests/support/asio_support.h — helpers of the Boost.Asio adapter's tests: running an
// io_context until something happened or on threads of its own, the outcome of one
// operation, small messages and pipes that fill quickly.
#pragma once

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <exception>
#include <functional>
#include <numeric>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "capnsplice/asio.h"
#include "support/blob.h"
#include "test.capnp.h"

namespace capnsplice::testing {

namespace net = boost::asio;
using namespace std::chrono_literals;

/// Runs `io` until `done()` or `limit` passed; returns done().
inline bool run_until(net::io_context& io, const std::function<bool()>& done,
               std::chrono::milliseconds limit = 10s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    if (io.stopped()) io.restart();
    if (io.run_one_for(10ms) == 0) std::this_thread::sleep_for(1ms);
  }
  return done();
}

/// Runs an io_context on its own threads. Destroying it stops the context and joins them,
/// so a failed REQUIRE never leaves a thread behind.
class Loop {
 public:
  /// With `keep_alive`, run() waits for more work until the Loop is destroyed; without,
  /// it returns as soon as nothing waits (see ran_out_of_work()).
  explicit Loop(net::io_context& io, int threads = 1, bool keep_alive = true) : io_(io) {
    if (keep_alive) work_.emplace(io.get_executor());
    io.restart();
    for (int i = 0; i < threads; ++i) {
      threads_.emplace_back([this] {
        io_.run();
        ++finished_;
      });
    }
  }
  ~Loop() {
    work_.reset();
    io_.stop();
    for (std::thread& thread : threads_) thread.join();
  }
  /// True when run() returned by itself on every thread within `limit`.
  bool ran_out_of_work(std::chrono::milliseconds limit = 10s) {
    work_.reset();
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (finished_ < static_cast<int>(threads_.size()) &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(1ms);
    }
    return finished_ == static_cast<int>(threads_.size());
  }

 private:
  net::io_context& io_;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work_;
  std::vector<std::thread> threads_;
  std::atomic<int> finished_{0};
};

/// Runs the handlers that are ready, also after the context ran out of work before.
inline void poll(net::io_context& io) {
  io.restart();
  io.poll();
}

/// The capnsplice::Error code in `error`, if it holds one.
inline std::optional<ErrorCode> code_of(const std::exception_ptr& error) {
  try {
    if (error) std::rethrow_exception(error);
  } catch (const Error& e) {
    return e.code();
  } catch (...) {
  }
  return std::nullopt;
}

inline bool peer_gone(const std::exception_ptr& error) {
  const auto code = code_of(error);
  return code == ErrorCode::PeerClosed || code == ErrorCode::TruncatedMessage;
}

/// A checksummed blob of `size` bytes, built for the adapter (never waits).
inline OutgoingMessage make_blob(AsioChannel& adapter, std::uint64_t seq, std::size_t size,
                          Random& random) {
  OutgoingMessage message = adapter.new_message();
  fill_blob(message.init_root<test::Blob>(), seq, size, random);
  return message;
}

/// A copy of a received blob, to send back.
inline OutgoingMessage echo_of(AsioChannel& adapter, ReceivedMessage& request) {
  auto blob = request.root<test::Blob>();
  OutgoingMessage reply = adapter.new_message();
  auto copy = reply.init_root<test::Blob>();
  copy.setSeq(blob.getSeq());
  copy.setChecksum(blob.getChecksum());
  copy.setData(blob.getData());
  return reply;
}

inline void send_seq(Channel& channel, std::uint64_t seq) {
  channel.send_struct<test::Blob>([seq](test::Blob::Builder blob) { blob.setSeq(seq); });
}

/// A pair whose pipes fill quickly: 64 KiB pipes, copy path, at most 64 KiB unsent.
inline std::pair<Channel, Channel> small_pair() {
  return Channel::pair(ChannelOptions()
                           .with_pipe_bytes(64 * KiB)
                           .with_send_path(SendPath::copy)
                           .with_max_unsent_bytes(64 * KiB));
}

/// What one async operation delivered.
struct Outcome {
  bool done = false;
  std::exception_ptr error;
  ReceivedMessage message;
};

inline auto receive_into(Outcome& outcome) {
  return [&outcome](std::exception_ptr error, ReceivedMessage message) {
    outcome = {true, error, std::move(message)};
  };
}
inline auto send_into(Outcome& outcome) {
  return [&outcome](std::exception_ptr error) { outcome = {true, error, {}}; };
}

inline std::vector<std::uint64_t> iota(std::uint64_t count) {
  std::vector<std::uint64_t> values(count);
  std::iota(values.begin(), values.end(), 0);
  return values;
}

}  // namespace capnsplice::testing
