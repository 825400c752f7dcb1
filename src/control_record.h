// The records of a channel end's control link, as they travel (internal; the wire
// format of the link, beside the pipes' Cap'n Proto framing). What each kind means and
// when it is sent: control_link.h. Tests that play a peer include this header rather
// than copy the layout.
#pragma once

#include <cstdint>

namespace capnsplice::detail::control_record {

/// What a record says.
enum Kind : std::uint32_t {
  kAcceptsShared = 1,
  kArena = 2,  ///< carries the arena's memfd
  kRelease = 3,
  kRetire = 4,
  kArenaLost = 5,
  kDoorbell = 6,     ///< carries the doorbell's memfd (doorbell.h)
  kReleaseRing = 7,  ///< carries an arena's release ring memfd (release_ring.h)
  kWake = 8,
  kDescriptors = 9,  ///< carries a message's descriptors (descriptor_inbox.h)
  kAcceptsDescriptors = 10,
  kDescriptorsReleased = 11,
  kDescriptorsCancelled = 12,
};

/// One SOCK_SEQPACKET packet, in the host's byte order (both ends are on one host).
struct Record {
  std::uint32_t kind;
  std::uint32_t arena;  ///< arena id; Descriptors: how many it carries;
                        ///< AcceptsDescriptors: most per message
  std::uint64_t value;  ///< Arena: capacity in bytes; Release: message id;
                        ///< Descriptors, DescriptorsCancelled: sequence;
                        ///< AcceptsDescriptors: most waiting; DescriptorsReleased: total
  std::uint64_t spare;  ///< zero
};
static_assert(sizeof(Record) == 24);

}  // namespace capnsplice::detail::control_record
