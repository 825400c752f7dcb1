// The descriptors a spawned child starts with, and how to put them there (internal).
//
// A child gets its channel's three descriptors at 3, 4 and 5 and any the caller names
// (SpawnOptions::descriptors) at the numbers it chose; everything else it would inherit
// is closed. Moving descriptors into place one dup2() after another has a trap: when one
// source is another move's target (parent 7 -> child 8 and parent 8 -> child 7), an
// earlier dup2 overwrites a later one's source. So every source is first copied (in
// the parent, close-on-exec) above the highest target, and the child's moves only read
// those copies:
//
//   parent:  7 ──copy──> 1030    8 ──copy──> 1031        (copies: close-on-exec)
//   child:   dup2(1030, 8)  dup2(1031, 7)                 (targets: inheritable)
//            close 6 and every other number up to the highest target that is no target
//            close everything above the highest target   (closes the copies too)
#pragma once

#include <string>
#include <vector>

#include "capnsplice/process.h"
#include "capnsplice/unique_fd.h"

namespace capnsplice::detail {

class ChildDescriptors {
 public:
  /// One dup2 the child makes: from a copy the parent holds to the child's number.
  struct Move {
    int source;
    int target;
  };

  /// The channel's ends (`channel_ends`: receive, send, control, at kChildReceiveFd,
  /// kChildSendFd, kChildControlFd) and `extra`. Throws InvalidArgument, naming
  /// `context`, for a number that is negative, above kMaxChildFd, one of the channel's
  /// or given twice, and for a parent descriptor that is not open; then nothing was
  /// made. SystemError when a copy cannot be made (EMFILE).
  ChildDescriptors(const int (&channel_ends)[3], const std::vector<InheritedFd>& extra,
                   const std::string& context);

  const std::vector<Move>& moves() const noexcept { return moves_; }

  /// Numbers from kChildControlFd + 1 up to the highest target that are no target: the
  /// child closes them (a descriptor the parent left inheritable must not get through).
  const std::vector<int>& gaps() const noexcept { return gaps_; }

  /// Every number from here up is closed in the child.
  int close_from() const noexcept { return close_from_; }

  /// Makes the moves and closes in the calling process: for a child between fork() and
  /// exec (async-signal-safe: system calls only). `keep`, at or above close_from(), stays
  /// open (-1: none). 0, or the errno of the dup2 that failed.
  int apply(int keep) const noexcept;

 private:
  std::vector<UniqueFd> copies_;  // close-on-exec, above every target
  std::vector<Move> moves_;
  std::vector<int> gaps_;
  int close_from_ = kChildControlFd + 1;
};

}  // namespace capnsplice::detail
