// Descriptors that came ahead of their messages (internal).
//
// A message with descriptors travels in two parts (descriptor passing in README.md): the
// sender first puts the descriptors on the control link, in a Descriptors record that
// carries a sequence number, then the message on the pipe in a marked frame whose
// wire::Attachment names the same number. The record is sent before the frame is
// queued, so by the time the receiver parses the frame its record is in the link's
// socket; this inbox files what the link read until the frame comes for it.
//
//   control link:  [Descriptors seq 7, fds a b] [Descriptors seq 8, fd c]
//   pipe:          ... [ empty | Attachment{seq 7, count 2} | message segments ] ...
//                                       └─ take(7, 2) hands a and b to the message
//
// Records are matched by number, not by order: two threads of one sender may queue
// their frames in the other order than their records. What a peer can make this end
// hold is bounded: ReceiveLimits::max_descriptors_per_message per record,
// max_descriptors_waiting in all (beyond either, the record's descriptors are closed on
// arrival and only a note that it was refused is kept), kMaxFiledRecords records.
//
// An honest sender never meets those bounds: it keeps no more descriptors in flight
// than the receiver said it holds waiting, and learns what went from the running total
// of descriptors released here (taken by their message, refused, or dropped as the
// oldest), which the link reports back (DescriptorsReleased). A record the sender
// cancels (its message was dropped unsent) it counts out itself.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "capnsplice/options.h"
#include "capnsplice/unique_fd.h"

namespace capnsplice::detail {

/// Records (taken or refused ones included) an inbox keeps at most; the oldest goes
/// first, with its descriptors, to make room.
inline constexpr std::size_t kMaxFiledRecords = 256;

class DescriptorInbox {
 public:
  /// Files a Descriptors record numbered `sequence` that said it carries `announced`
  /// descriptors and came with `fds`; `truncated`: the kernel closed some of them
  /// (MSG_CTRUNC: this process had no descriptor left, or there were too many).
  void file(std::uint64_t sequence, std::uint32_t announced, std::vector<UniqueFd> fds,
            bool truncated, const ReceiveLimits& limits);

  /// Whether any record came (a marked frame of descriptors from a peer that sent none
  /// is no capnsplice frame: MalformedFrame).
  bool any_filed() const noexcept { return any_filed_; }

  /// The `count` descriptors of record `sequence`, once; none when no such record came.
  /// Throws ProtocolViolation (naming `context`) for a record that was refused on
  /// arrival or that carries another number of descriptors.
  std::optional<std::vector<UniqueFd>> take(std::uint64_t sequence, std::uint32_t count,
                                            const std::string& context);

  /// The sender dropped message `sequence` unsent: its record's descriptors close.
  void cancel(std::uint64_t sequence) noexcept;

  /// Descriptors held for messages still to come.
  std::size_t waiting() const noexcept { return waiting_; }

  /// Descriptors, as their records counted them, of every record this inbox let go of
  /// but those cancelled (taken, refused, dropped as the oldest): what the sender may
  /// count as no longer in flight.
  std::uint64_t released() const noexcept { return released_; }

 private:
  struct Record {
    std::uint64_t sequence = 0;
    std::uint32_t announced = 0;  // as the sender counted them
    std::vector<UniqueFd> fds;
    std::string refused;  // why its descriptors were closed on arrival ("" if kept)
  };

  /// Removes `at`, counting its descriptors as released; returns the record.
  Record remove(std::vector<Record>::iterator at) noexcept;

  std::vector<Record> records_;  // in arrival order
  std::size_t waiting_ = 0;
  std::uint64_t released_ = 0;
  bool any_filed_ = false;
};

}  // namespace capnsplice::detail
