// capnsplice/outgoing_message.h — a message being built for sending.
#pragma once

#include <capnp/message.h>
#include <capnp/orphan.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "capnsplice/unique_fd.h"

namespace capnsplice {

namespace detail {
class ControlLink;
class SenderCore;
class PooledMessageBuilder;
}

/// A Cap'n Proto message under construction, built directly in the sender's pool of
/// page-aligned memory so that sending it needs no copy. Obtain one from
/// Sender::new_message() or Channel::new_message(), fill it, then hand it over with
/// send(std::move(message)); after that it is empty and cannot be touched.
///
///   auto message = channel.new_message();
///   auto chunk = message.init_root<Chunk>();
///   chunk.setSeq(7);
///   channel.send(std::move(message));
///
/// Builders obtained from the message (`chunk` above) point into the pool: like any
/// Cap'n Proto builder they must not be used once the message is sent or destroyed.
/// Dropping a message without sending it returns its memory to the pool.
class OutgoingMessage {
 public:
  /// An empty message (as left behind by a move).
  OutgoingMessage() noexcept;
  OutgoingMessage(OutgoingMessage&&) noexcept;
  OutgoingMessage& operator=(OutgoingMessage&&) noexcept;
  ~OutgoingMessage();

  /// The underlying builder. Throws InvalidArgument on an empty (sent) message.
  capnp::MessageBuilder& builder();

  template <typename Root>
  typename Root::Builder init_root() {
    return builder().initRoot<Root>();
  }

  template <typename Root>
  typename Root::Builder get_root() {
    return builder().getRoot<Root>();
  }

  /// Memory for a Data value that the caller fills completely, handed out without the
  /// zeroing pass Cap'n Proto builders otherwise pay, and sent as a segment of its own
  /// (spliced, never copied on this side). Adopt it into the message:
  ///
  ///   auto payload = message.allocate_data(size);
  ///   read_frame_into(payload.bytes);               // fill every byte
  ///   chunk.adoptPayload(std::move(payload.orphan));
  ///
  /// Bytes left unfilled are sent as whatever the memory held before.
  struct DataBuffer {
    kj::ArrayPtr<kj::byte> bytes;
    capnp::Orphan<capnp::Data> orphan;
  };
  DataBuffer allocate_data(std::size_t size);

  /// Attaches a descriptor: the receiver gets a descriptor of the same open file (a
  /// memfd, a socket, a pipe end, a file) with this message, in the order attached
  /// (ReceivedMessage::take_descriptors). The message owns `fd` from now on: closed once
  /// the message is sent, or when the message is dropped unsent. Only a capnsplice peer
  /// that said it takes descriptors gets them (see Sender::send); at most
  /// kMaxDescriptorsPerMessage per message (InvalidArgument beyond, or for an empty
  /// message or descriptor, and once a send that found the queue full left the message
  /// with the caller: its descriptors went ahead already, send it again as it is).
  void attach(UniqueFd fd);

  /// Attaches a close-on-exec duplicate of `fd`, which stays the caller's. Throws
  /// SystemError (EBADF, EMFILE) when it cannot be duplicated.
  void attach_copy(int fd);

  /// Descriptors attached so far.
  std::size_t attached() const noexcept { return descriptors_.size() + descriptors_sent_; }

  /// False once the message was sent (moved from).
  explicit operator bool() const noexcept { return builder_ != nullptr; }

 private:
  friend class detail::SenderCore;
  explicit OutgoingMessage(std::unique_ptr<detail::PooledMessageBuilder> builder) noexcept;
  /// The builder; throws InvalidArgument on an empty (sent) message.
  detail::PooledMessageBuilder& pooled();

  std::unique_ptr<detail::PooledMessageBuilder> builder_;
  /// Attached, until the sender puts them on the control link.
  std::vector<UniqueFd> descriptors_;
  /// Once they are there (a send that then found the queue full leaves the message with
  /// the caller): the record's number, how many it carries, and the link it went on,
  /// told to cancel it if the message is dropped unsent.
  std::uint64_t descriptor_sequence_ = 0;
  std::uint32_t descriptors_sent_ = 0;
  std::weak_ptr<detail::ControlLink> descriptor_link_;

  /// Tells the link to cancel descriptors that went ahead of a frame never queued.
  void cancel_sent_descriptors() noexcept;
};

}  // namespace capnsplice
