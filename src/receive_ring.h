// The receiver's buffer (internal): a mirrored ring that messages are read from in place.
//
//   positions (monotonic, in bytes; the byte at position p lives at p % capacity):
//
//        oldest lease          parse                 head
//             v                  v                     v
//   ..........[ msg ][ msg ][ msg ][ partial frame ]...........free...........
//             <---- leased: ReceivedMessages view these bytes ---->
//
// The memory is mapped twice back to back (MappedMemory::mirrored), so a frame that
// wraps past the end of the ring is still contiguous: Cap'n Proto reads it in place,
// and reads land in one contiguous run of free space.
//
// Each ReceivedMessage holds a lease on its frame's bytes and a shared_ptr to the
// ring, so the memory outlives the Receiver if messages do. Leases are released in
// any order and from any thread; space comes back in stream order.
//
// Pages are faulted in as reads first reach them, and given back (MADV_REMOVE) by the
// trimmer thread (idle_trimmer.h) once the ring has been idle for kIdleTrimAfter with
// nothing leased, nothing read and not parsed, and no read in progress: the receiving
// thread tells the ring where it is (start_read, filled_to, lease), so the trimmer never
// needs the Receiver, which may be blocked in a receive() on another thread.
#pragma once

#include <capnp/common.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string_view>

#include "idle_trimmer.h"
#include "mapped_memory.h"

namespace capnsplice::detail {

/// Memory of its own for a frame that does not fit in the ring.
struct FrameBuffer {
  std::unique_ptr<capnp::word[]> words;
  std::size_t bytes = 0;

  std::byte* data() const noexcept { return reinterpret_cast<std::byte*>(words.get()); }
};

class ReceiveRing final : public Trimmable {
 public:
  ReceiveRing(std::size_t capacity, std::string_view context)
      : memory_(MappedMemory::mirrored(capacity, context)) {}
  ~ReceiveRing() { unschedule(); }

  std::size_t capacity() const noexcept { return memory_.size(); }

  /// The byte at ring position `position`; up to capacity() bytes from there are
  /// contiguous.
  std::byte* at(std::uint64_t position) const noexcept {
    return memory_.data() + position % memory_.size();
  }

  /// Marks the bytes from `begin` to `end` (where parsing goes on) as viewed by a
  /// message; returns the lease id.
  std::uint64_t lease(std::uint64_t begin, std::uint64_t end);

  /// The receiving thread is about to read into the ring; bytes [parse, head) are read
  /// and not yet parsed. Until filled_to(), the trimmer keeps away. Returns
  /// oldest_leased_or(parse).
  std::uint64_t start_read(std::uint64_t parse, std::uint64_t head);

  /// Bytes up to `head` have been read (the read is over), or the bytes from `head` on
  /// moved to a frame buffer of their own.
  void filled_to(std::uint64_t head);

  /// Gives the ring's pages and the spare frame buffer back once idle (see above).
  bool trim_if_idle() noexcept override;

  /// The message holding `lease_id` is gone.
  void release(std::uint64_t lease_id);

  /// The start of the oldest leased byte, or `parse` when nothing is leased (every
  /// byte before `parse` is then reusable).
  std::uint64_t oldest_leased_or(std::uint64_t parse);

  /// A frame buffer of at least `bytes` (uninitialised): the one last given back if it
  /// is large enough, so a stream of large messages does not fault in fresh memory for
  /// each one.
  FrameBuffer take_frame_buffer(std::size_t bytes);

  /// Keeps `buffer` for the next large frame (only one is kept: the largest).
  void give_back(FrameBuffer buffer);

 private:
  struct Lease {
    std::uint64_t begin;
    bool released;
  };

  MappedMemory memory_;
  std::mutex mutex_;
  std::deque<Lease> leases_;  // in stream order; front has id first_id_
  std::uint64_t first_id_ = 0;
  FrameBuffer spare_;
  // Where the receiving thread is, as it last said.
  std::uint64_t parse_ = 0;
  std::uint64_t head_ = 0;
  bool reading_ = false;
  std::uint64_t reads_ = 0;
  IdleClock idle_;
};

}  // namespace capnsplice::detail
