// Making Channel ends of pipes capnsplice made (internal).
//
// Channel::from_fds() takes the application's descriptors: it asks the kernel what they
// are and never changes their capacity. The ends capnsplice made itself — both ends of
// Channel::pair(), the local end of pair_with_remote_end(), and the remote end once a
// spawn()ed child or a rendezvous client adopts it — skip what is known already and let
// their sender raise its pipe when traffic needs it (pipe_capacity.h).
#pragma once

#include <memory>

#include "capnsplice/channel.h"
#include "pipe_io.h"

namespace capnsplice::detail {

class ControlLink;

struct ChannelMaker {
  /// An end of descriptors described by `receive_facts` and `send_facts` (the send end
  /// already non-blocking, unless the caller wants it blocking). `link` may be null.
  static Channel make(UniqueFd receive_fd, const DescriptorFacts& receive_facts, UniqueFd send_fd,
                      const DescriptorFacts& send_facts, const ChannelOptions& options,
                      std::shared_ptr<ControlLink> link);

  /// The end a spawn()ed child or a rendezvous client got from capnsplice: probed (they
  /// crossed a process boundary), made non-blocking, and raisable like the parent's.
  static Channel adopt(UniqueFd receive_fd, UniqueFd send_fd, const ChannelOptions& options,
                       UniqueFd control_fd);
};

}  // namespace capnsplice::detail
