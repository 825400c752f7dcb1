#include "child_descriptors.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "capnsplice/error.h"

namespace capnsplice::detail {
namespace {

bool is_channel_number(int fd) { return fd >= kChildReceiveFd && fd <= kChildControlFd; }

/// Throws InvalidArgument unless `extra` can be given to the child as asked.
void check_extra(const std::vector<InheritedFd>& extra, const std::string& context) {
  auto refuse = [&](const InheritedFd& entry, const std::string& why) {
    throw Error(ErrorCode::InvalidArgument, context,
                "SpawnOptions::descriptors: parent descriptor " + std::to_string(entry.parent_fd) +
                    " as child descriptor " + std::to_string(entry.child_fd) + ": " + why);
  };
  for (std::size_t i = 0; i < extra.size(); ++i) {
    const InheritedFd& entry = extra[i];
    if (entry.child_fd < 0 || entry.child_fd > kMaxChildFd) {
      refuse(entry, "choose a child number from 0 to " + std::to_string(kMaxChildFd));
    }
    if (is_channel_number(entry.child_fd)) {
      refuse(entry, "the channel's descriptors are 3, 4 and 5 in the child: choose another");
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (extra[j].child_fd == entry.child_fd) refuse(entry, "that child number is given twice");
    }
    if (entry.parent_fd < 0 || ::fcntl(entry.parent_fd, F_GETFD) < 0) {
      refuse(entry, "the parent descriptor is not open");
    }
  }
}

/// Closes every open descriptor numbered `first` to `last` (async-signal-safe).
void close_numbers(unsigned first, unsigned last) noexcept {
  if (first > last || ::syscall(SYS_close_range, first, last, 0) == 0) return;
  rlimit limit{};  // a kernel before 5.9: one close per possible number
  const rlim_t end = ::getrlimit(RLIMIT_NOFILE, &limit) == 0 ? limit.rlim_cur : 1024;
  for (rlim_t fd = first; fd <= last && fd < end && fd < (1U << 20); ++fd) {
    ::close(static_cast<int>(fd));
  }
}

}  // namespace

ChildDescriptors::ChildDescriptors(const int (&channel_ends)[3],
                                   const std::vector<InheritedFd>& extra,
                                   const std::string& context) {
  check_extra(extra, context);
  std::vector<InheritedFd> wanted = {{channel_ends[0], kChildReceiveFd},
                                     {channel_ends[1], kChildSendFd},
                                     {channel_ends[2], kChildControlFd}};
  wanted.insert(wanted.end(), extra.begin(), extra.end());
  int highest_target = kChildControlFd;
  for (const InheritedFd& entry : wanted) highest_target = std::max(highest_target, entry.child_fd);
  close_from_ = highest_target + 1;
  // The copies (and spawn's report pipe) are numbered above every target: they must fit
  // under this process's descriptor limit.
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 &&
      static_cast<rlim_t>(close_from_) + wanted.size() + 1 > limit.rlim_cur) {
    throw Error(ErrorCode::InvalidArgument, context,
                "SpawnOptions::descriptors: child descriptor " + std::to_string(highest_target) +
                    " needs " + std::to_string(wanted.size() + 1) +
                    " descriptors numbered above it, past this process's limit of " +
                    std::to_string(limit.rlim_cur) +
                    " (RLIMIT_NOFILE): choose lower numbers or raise the limit");
  }

  for (const InheritedFd& entry : wanted) {
    UniqueFd copy(::fcntl(entry.parent_fd, F_DUPFD_CLOEXEC, close_from_));
    if (!copy) throw_system_error(context, "fcntl(F_DUPFD_CLOEXEC)");
    moves_.push_back({copy.get(), entry.child_fd});
    copies_.push_back(std::move(copy));
  }
  for (int fd = kChildControlFd + 1; fd < close_from_; ++fd) {
    const bool target = std::any_of(wanted.begin(), wanted.end(),
                                    [fd](const InheritedFd& entry) { return entry.child_fd == fd; });
    if (!target) gaps_.push_back(fd);
  }
}

int ChildDescriptors::apply(int keep) const noexcept {
  for (const Move& move : moves_) {
    if (::dup2(move.source, move.target) < 0) return errno;
  }
  for (int fd : gaps_) ::close(fd);  // EBADF: it was not open, as wanted
  const auto first = static_cast<unsigned>(close_from_);
  if (keep >= close_from_) {
    close_numbers(first, static_cast<unsigned>(keep) - 1);
    close_numbers(static_cast<unsigned>(keep) + 1, ~0U);
  } else {
    close_numbers(first, ~0U);
  }
  return 0;
}

}  // namespace capnsplice::detail
