// capnsplice/handshake.h — the hello two ends exchange before any application data.
//
// Each end sends one Hello (schemas/capnsplice.capnp: protocol version, receive limits,
// pid, application name and version) and reads the other's. A peer that speaks another
// protocol version, another application, or accepts smaller messages than this end
// needs fails at once with IncompatiblePeer, instead of misreading messages later:
//
//   capnsplice::PeerHello peer = capnsplice::exchange_hello(channel, {
//       .application = "thumbnailer", .application_version = 2});
//
// Every rendezvous connection starts with a hello. Spawned and forked children exchange
// one only when both sides call exchange_hello() (a child that is plain Cap'n Proto can
// send the Hello struct itself).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "capnsplice/channel.h"
#include "capnsplice/deadline.h"
#include "capnsplice/options.h"

namespace capnsplice {

/// The capnsplice protocol version this library speaks. 2: shared-memory arenas come
/// sealed against writes through the receiver's descriptor (F_SEAL_FUTURE_WRITE), and a
/// receiver refuses an arena without that seal. 3: a sender replaces an idle arena that
/// grew past arena_keep_bytes with a fresh one (higher id), which a version-2 receiver
/// refuses. 4: a shared-memory descriptor is a marked frame (frame.h: an empty segment
/// 0, then the descriptor) instead of a one-segment message with a magic word, which
/// ordinary messages could imitate.
inline constexpr std::uint32_t kProtocolVersion = 4;

/// What this end says about itself and requires of its peer.
struct HelloOptions {
  /// The application protocol on top of capnsplice. When not empty, the peer must name
  /// the same one with the same version; empty accepts any peer.
  std::string application;
  std::uint32_t application_version = 0;
  /// The limits this end's receiver enforces, announced to the peer. Fill in the
  /// channel's own (ChannelOptions::receiver.limits) when they are not the defaults.
  ReceiveLimits limits;
  /// The largest message this end will send: the hello fails when the peer accepts less.
  /// 0: no requirement.
  std::size_t largest_message_sent = 0;
  /// How long to wait for the peer's hello.
  std::chrono::nanoseconds timeout = std::chrono::seconds(5);
};

/// What the peer said in its hello.
struct PeerHello {
  std::uint32_t protocol_version = 0;
  std::size_t max_message_bytes = 0;  ///< the peer's receive limit: do not send more
  std::uint32_t max_segments = 0;
  pid_t pid = 0;
  std::string application;
  std::uint32_t application_version = 0;
};

/// Sends this end's hello, then receives and checks the peer's (within options.timeout).
/// Throws IncompatiblePeer naming what differs, Timeout, or the channel's errors
/// (PeerClosed when the peer went away first).
PeerHello exchange_hello(Channel& channel, const HelloOptions& options = {});

}  // namespace capnsplice
