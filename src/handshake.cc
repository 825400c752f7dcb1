#include "capnsplice/handshake.h"

#include <kj/exception.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "capnsplice.capnp.h"
#include "capnsplice/error.h"
#include "handshake_steps.h"

namespace capnsplice {
namespace {

std::string hex(std::uint64_t value) {
  char text[19];
  std::snprintf(text, sizeof text, "0x%016llx", static_cast<unsigned long long>(value));
  return text;
}

PeerHello read_hello(ReceivedMessage& message, const std::string& context) {
  try {
    auto hello = message.root<wire::Hello>();
    if (hello.getMagic() != wire::Hello::EXPECTED_MAGIC) {
      throw Error(ErrorCode::IncompatiblePeer, context,
                  "the peer's first message is not a capnsplice hello (magic " +
                      hex(hello.getMagic()) + "): it does not speak capnsplice");
    }
    PeerHello peer;
    peer.protocol_version = hello.getProtocolVersion();
    peer.max_message_bytes = static_cast<std::size_t>(hello.getMaxMessageBytes());
    peer.max_segments = hello.getMaxSegments();
    peer.pid = static_cast<pid_t>(hello.getPid());
    peer.application = hello.getApplication();
    peer.application_version = hello.getApplicationVersion();
    return peer;
  } catch (const kj::Exception& error) {
    throw Error(ErrorCode::IncompatiblePeer, context,
                "the peer's first message is not a readable capnsplice hello: " +
                    std::string(error.getDescription().cStr()));
  }
}

/// Empty when the peer suits this end, else what does not match.
std::string mismatch(const PeerHello& peer, const HelloOptions& options) {
  if (peer.protocol_version != kProtocolVersion) {
    return "the peer speaks capnsplice protocol version " + std::to_string(peer.protocol_version) +
           ", this end speaks version " + std::to_string(kProtocolVersion);
  }
  if (!options.application.empty() && (peer.application != options.application ||
                                       peer.application_version != options.application_version)) {
    return "the peer speaks application '" + peer.application + "' version " +
           std::to_string(peer.application_version) + ", this end expects '" + options.application +
           "' version " + std::to_string(options.application_version);
  }
  if (options.largest_message_sent > peer.max_message_bytes) {
    return "this end sends messages of up to " + std::to_string(options.largest_message_sent) +
           " bytes, the peer accepts at most " + std::to_string(peer.max_message_bytes);
  }
  return {};
}

}  // namespace

namespace detail {

void send_hello(Channel& channel, const HelloOptions& options, Deadline deadline) {
  auto message = channel.new_message();
  auto hello = message.init_root<wire::Hello>();
  hello.setMagic(wire::Hello::EXPECTED_MAGIC);
  hello.setProtocolVersion(kProtocolVersion);
  hello.setMaxMessageBytes(options.limits.max_message_bytes);
  hello.setMaxSegments(options.limits.max_segments);
  hello.setPid(static_cast<std::int32_t>(::getpid()));
  hello.setApplication(options.application);
  hello.setApplicationVersion(options.application_version);
  channel.send(std::move(message), deadline);
}

void throw_no_hello(const std::string& context, std::chrono::nanoseconds timeout) {
  throw Error(ErrorCode::Timeout, context,
              "the peer sent no hello within " +
                  std::to_string(
                      std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count()) +
                  " ms");
}

PeerHello check_hello(ReceivedMessage& reply, const HelloOptions& options,
                      const std::string& context) {
  PeerHello peer = read_hello(reply, context);
  if (std::string why = mismatch(peer, options); !why.empty()) {
    throw Error(ErrorCode::IncompatiblePeer, context, why);
  }
  return peer;
}

}  // namespace detail

PeerHello exchange_hello(Channel& channel, const HelloOptions& options) {
  const std::string context = "channel '" + channel.name() + "': hello";
  const Deadline deadline = Deadline::after(options.timeout);
  detail::send_hello(channel, options, deadline);

  ReceivedMessage reply;
  try {
    reply = channel.receive(deadline);
  } catch (const Error& error) {
    if (error.code() != ErrorCode::Timeout) throw;
    detail::throw_no_hello(context, options.timeout);
  }
  return detail::check_hello(reply, options, context);
}

}  // namespace capnsplice
