#include "capnsplice/unique_fd.h"

#include <unistd.h>

namespace capnsplice {

void UniqueFd::reset(int fd) noexcept {
  if (fd_ >= 0) {
    // close() on Linux releases the descriptor even when it reports EINTR, so
    // retrying could close a descriptor another thread just received.
    ::close(fd_);
  }
  fd_ = fd;
}

}  // namespace capnsplice
