// capnsplice, capnsplice-send, capnsplice-copy, capnsplice-vmsplice, capnsplice-shm,
// capnsplice-doorbell: the library under test, with its automatic choice of path and with
// each path forced (as far as options can force it: the report's "paths" table shows what
// each sender really did), and with the doorbell.
//
// The sender builds each Chunk in the channel's pool and sends it; the receiver reads
// it in place. Blocking mode is receive() (spins for ReceiverOptions::spin_before_block,
// then sleeps in the kernel); busy-poll mode loops on try_receive_spinning().
#include <capnsplice/channel.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <string>

#include "payload.h"
#include "transport.h"

namespace bench {

namespace {

using capnsplice::demo::Bulk;
using capnsplice::demo::Chunk;

/// "vmsplice 99.9% · copy 0.1%": the share of messages each path carried.
std::string describe_paths(const capnsplice::SenderStats& stats) {
  if (stats.messages == 0) return {};
  // A shared-memory message is counted as copied too: its descriptor is copied into the pipe.
  const std::uint64_t copied =
      stats.copied_messages - std::min(stats.copied_messages, stats.shared_messages);
  const std::pair<const char*, std::uint64_t> paths[] = {
      {"shm", stats.shared_messages}, {"vmsplice", stats.spliced_messages}, {"copy", copied}};
  std::string text;
  for (const auto& [name, count] : paths) {
    if (count == 0) continue;
    char share[48];
    std::snprintf(share, sizeof share, "%s%s %.3g%%", text.empty() ? "" : " · ", name,
                  100.0 * static_cast<double>(count) / static_cast<double>(stats.messages));
    text += share;
  }
  if (!stats.vmsplice_aliases_pages) text += " (this kernel's vmsplice copies)";
  return text;
}

class CapnspliceEndpoint final : public Endpoint {
 public:
  CapnspliceEndpoint(capnsplice::Channel channel, bool batch_streams)
      : channel_(std::move(channel)), batch_streams_(batch_streams) {}

  void send(std::uint64_t seq, std::size_t payload_bytes) override {
    channel_.send(build(seq, payload_bytes));
  }

  /// A stream goes through queue(): the library writes up to 256 messages (or 256 KiB)
  /// per system call.
  void stream(std::uint64_t seq, std::size_t payload_bytes) override {
    if (batch_streams_) {
      channel_.queue(build(seq, payload_bytes));
    } else {
      send(seq, payload_bytes);
    }
  }

  std::uint64_t receive(WaitMode mode) override {
    capnsplice::ReceivedMessage message =
        mode == WaitMode::spin ? receive_spinning() : channel_.receive();
    return check_chunk(message.root<Chunk>());
  }

  /// The payload parts come from allocate_data(): filled in place, no zeroing pass,
  /// built in the shared-memory arena when the path allows.
  void prepare_bulk(std::uint64_t seq, std::size_t payload_bytes) override {
    prepared_ = channel_.new_message();
    auto bulk = prepared_.init_root<Bulk>();
    bulk.setSeq(seq);
    const std::vector<std::size_t> sizes = bulk_part_sizes(payload_bytes);
    auto parts = bulk.initParts(static_cast<unsigned>(sizes.size()));
    for (unsigned i = 0; i < sizes.size(); ++i) {
      auto data = prepared_.allocate_data(sizes[i]);
      fill_part(data.bytes, seq);
      parts.adopt(i, std::move(data.orphan));
    }
  }

  void send_prepared() override { channel_.send(std::move(prepared_)); }

  std::uint64_t receive_bulk(WaitMode mode) override {
    received_ = mode == WaitMode::spin ? receive_spinning() : channel_.receive();
    return bulk_arrived(received_.root<Bulk>());
  }

  void check_bulk() override {
    bench::check_bulk(received_.root<Bulk>());
    received_ = {};  // dropped: its memory goes back to the sender
  }

  std::string paths_taken() override { return describe_paths(channel_.sender().stats()); }

 private:
  capnsplice::OutgoingMessage build(std::uint64_t seq, std::size_t payload_bytes) {
    capnsplice::OutgoingMessage message = channel_.new_message();
    fill_chunk(message.init_root<Chunk>(), seq, payload_bytes);
    return message;
  }

  capnsplice::ReceivedMessage receive_spinning() {
    for (;;) {
      if (auto message = channel_.try_receive_spinning()) return std::move(*message);
      if (channel_.at_end()) return channel_.receive();  // throws PeerClosed
    }
  }

  capnsplice::Channel channel_;
  bool batch_streams_;
  capnsplice::OutgoingMessage prepared_;
  capnsplice::ReceivedMessage received_;
};

class CapnspliceLink final : public Link {
 public:
  CapnspliceLink(capnsplice::ChannelOptions options, bool batch_streams)
      : batch_streams_(batch_streams) {
    auto [a, b] = capnsplice::Channel::pair(std::move(options));
    a_.emplace(std::move(a));
    b_.emplace(std::move(b));
  }

  std::unique_ptr<Endpoint> open(Side side) override {
    std::optional<capnsplice::Channel>& mine = side == Side::a ? a_ : b_;
    (side == Side::a ? b_ : a_).reset();  // the peer's end: closed in this process
    return std::make_unique<CapnspliceEndpoint>(std::move(*mine), batch_streams_);
  }

  void release_in_parent() override {
    a_.reset();
    b_.reset();
  }

 private:
  std::optional<capnsplice::Channel> a_, b_;
  bool batch_streams_;
};

/// A capnsplice transport: the library's defaults, changed only by `choose_path`.
/// Streams use queue() unless `batch_streams` is false.
Transport capnsplice_transport(std::string name, std::string description,
                               void (*choose_path)(capnsplice::ChannelOptions&),
                               bool batch_streams = true, bool large_messages = true) {
  return {.name = name,
          .description = std::move(description),
          .supports_large_messages = large_messages,
          .make_link = [name, choose_path,
                        batch_streams](const LinkParams& params) -> std::unique_ptr<Link> {
            // The traversal limit follows the message size limit; a large message's parts add
            // a few words each.
            auto options = capnsplice::ChannelOptions().with_name(name).with_max_message_bytes(
                max_frame_bytes(std::max(kMaxPayloadBytes, params.payload_bytes)) + 4096);
            choose_path(options);
            return std::make_unique<CapnspliceLink>(std::move(options), batch_streams);
          }};
}

}  // namespace

Transport capnsplice_automatic_transport() {
  return capnsplice_transport(
      "capnsplice",
      "capnsplice defaults: copy below copy_threshold_bytes, vmsplice above, shared memory "
      "from shared_memory_threshold_bytes; streams are queue()d (the library writes up to "
      "256 messages per system call); +spin loops on try_receive_spinning()",
      [](capnsplice::ChannelOptions&) {});
}

Transport capnsplice_send_transport() {
  return capnsplice_transport(
      "capnsplice-send",
      "capnsplice defaults, but a stream sends every message with its own send() "
      "(no batching)",
      [](capnsplice::ChannelOptions&) {}, /*batch_streams=*/false, /*large_messages=*/false);
}

Transport capnsplice_copy_transport() {
  return capnsplice_transport(
      "capnsplice-copy", "capnsplice with every message sent through the pipe by writev copy",
      [](capnsplice::ChannelOptions& options) {
        options.with_send_path(capnsplice::SendPath::copy);
      },
      /*batch_streams=*/true, /*large_messages=*/false);
}

Transport capnsplice_vmsplice_transport() {
  return capnsplice_transport("capnsplice-vmsplice",
                              "capnsplice with every message sent through the pipe by vmsplice",
                              [](capnsplice::ChannelOptions& options) {
                                options.with_send_path(capnsplice::SendPath::vmsplice);
                              });
}

Transport capnsplice_shm_transport() {
  return capnsplice_transport("capnsplice-shm",
                              "capnsplice with every message built in the shared-memory arena "
                              "(SendPath::shared_memory); only a descriptor goes through the pipe",
                              [](capnsplice::ChannelOptions& options) {
                                options.with_send_path(capnsplice::SendPath::shared_memory);
                              });
}

Transport capnsplice_doorbell_transport() {
  return capnsplice_transport(
      "capnsplice-doorbell",
      "capnsplice defaults with ChannelOptions::with_doorbell(): a receiver that spins (+spin, "
      "or the 100 us before a blocking receive sleeps) watches a counter in shared memory "
      "that the peer's sender bumps after each write, instead of polling the pipe",
      [](capnsplice::ChannelOptions& options) { options.with_doorbell(); });
}

}  // namespace bench
