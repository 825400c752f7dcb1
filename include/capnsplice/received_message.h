// capnsplice/received_message.h — a message that arrived, read in place.
#pragma once

#include <capnp/message.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "capnsplice/unique_fd.h"

namespace capnsplice {

namespace detail {
struct ReceivedMessageState;
class ReceiverCore;
}  // namespace detail

/// A received Cap'n Proto message. It views the bytes in the receiver's buffer where
/// they landed — no copy after the pipe — and holds that buffer space until it is
/// destroyed. Move-only; may be kept, moved to and destroyed on another thread.
///
/// Holding many messages for a long time fills the receive buffer; the receiver
/// then reads further messages into buffers of their own, so nothing stalls.
///
///   capnsplice::ReceivedMessage message = channel.receive();
///   Chunk::Reader chunk = message.root<Chunk>();
class ReceivedMessage {
 public:
  ReceivedMessage() noexcept;
  ReceivedMessage(ReceivedMessage&&) noexcept;
  ReceivedMessage& operator=(ReceivedMessage&&) noexcept;
  ~ReceivedMessage();

  /// The message's reader, with the receiver's traversal and nesting limits.
  /// Throws InvalidArgument on an empty (moved-from) message.
  capnp::MessageReader& reader();

  /// The root struct. Content errors are Cap'n Proto's kj::Exception, as usual.
  template <typename Root>
  typename Root::Reader root() {
    return reader().getRoot<Root>();
  }

  /// The segments, e.g. to forward the message with Sender::send_copy().
  kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments() const;

  /// Size of the frame on the wire, segment table included.
  std::size_t frame_bytes() const noexcept;

  /// How many descriptors came with the message and were not taken yet.
  std::size_t descriptor_count() const noexcept;

  /// The descriptors the peer attached (OutgoingMessage::attach), in the order attached,
  /// each a new descriptor of this process (close-on-exec): the caller's from now on. Once:
  /// a second call returns none. Those never taken close with the message.
  std::vector<UniqueFd> take_descriptors() noexcept;

  explicit operator bool() const noexcept { return state_ != nullptr; }

 private:
  friend class detail::ReceiverCore;
  explicit ReceivedMessage(std::unique_ptr<detail::ReceivedMessageState> state) noexcept;

  std::unique_ptr<detail::ReceivedMessageState> state_;
};

/// A received message together with its root, for a known struct type:
///
///   capnsplice::Received<Chunk> chunk = channel.receive_as<Chunk>();
///   uint64_t seq = chunk->getSeq();
template <typename Root>
class Received {
 public:
  explicit Received(ReceivedMessage message)
      : message_(std::move(message)), root_(message_.root<Root>()) {}

  typename Root::Reader root() const { return root_; }
  const typename Root::Reader* operator->() const { return &root_; }
  ReceivedMessage& message() noexcept { return message_; }

 private:
  ReceivedMessage message_;
  typename Root::Reader root_;
};

}  // namespace capnsplice
