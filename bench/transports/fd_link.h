// bench/transports/fd_link.h — links made of plain descriptors (pipes, a socketpair),
// shared by the transports that read and write file descriptors themselves.
#pragma once

#include <capnsplice/unique_fd.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <span>

#include "transport.h"

namespace bench {

using capnsplice::UniqueFd;

/// The descriptors one side reads from and writes to.
struct SideFds {
  UniqueFd read;
  UniqueFd write;
};

/// A link whose sides are descriptor pairs; `make_endpoint` wraps one side's pair.
class FdLink final : public Link {
 public:
  using EndpointFactory = std::function<std::unique_ptr<Endpoint>(SideFds fds)>;

  FdLink(SideFds a, SideFds b, EndpointFactory make_endpoint)
      : a_(std::move(a)), b_(std::move(b)), make_endpoint_(std::move(make_endpoint)) {}

  std::unique_ptr<Endpoint> open(Side side) override;
  void release_in_parent() override { a_ = {}, b_ = {}; }

 private:
  SideFds a_, b_;
  EndpointFactory make_endpoint_;
};

/// Two blocking pipes, A->B and B->A, each raised to `capacity` bytes (F_SETPIPE_SZ;
/// the same 1 MiB capnsplice asks for, so that the comparison is of paths, not sizes).
std::unique_ptr<Link> make_pipe_link(std::size_t capacity, FdLink::EndpointFactory make_endpoint);

/// One AF_UNIX stream socketpair with the kernel's default buffer sizes.
std::unique_ptr<Link> make_socketpair_link(FdLink::EndpointFactory make_endpoint);

/// The pipe capacity used for plain pipes: as much as capnsplice's channels get.
std::size_t default_pipe_capacity();

/// Busy-poll mode: spins on poll(fd, 0) until `fd` is readable (or hung up). Block mode:
/// returns at once, the caller's read blocks.
void wait_readable(int fd, WaitMode mode);

/// Writes all of `bytes`, looping on partial writes. Throws when the peer is gone.
void write_all(int fd, std::span<const std::byte> bytes);

/// Reads exactly `bytes.size()` bytes. Throws at end of stream.
void read_exact(int fd, std::span<std::byte> bytes);

}  // namespace bench
