// The two halves of exchange_hello() (internal), for a host that runs many handshakes at
// once (RendezvousListener::accept) and so cannot wait for one peer's hello at a time.
#pragma once

#include <chrono>
#include <string>

#include "capnsplice/handshake.h"

namespace capnsplice::detail {

/// Sends this end's hello on `channel`.
void send_hello(Channel& channel, const HelloOptions& options, Deadline deadline);

/// Throws Timeout: the peer sent no hello within `timeout`.
[[noreturn]] void throw_no_hello(const std::string& context, std::chrono::nanoseconds timeout);

/// Reads the peer's hello from `reply` and checks it against `options`. Throws
/// IncompatiblePeer naming what differs (or that it is no readable hello).
PeerHello check_hello(ReceivedMessage& reply, const HelloOptions& options,
                      const std::string& context);

}  // namespace capnsplice::detail
