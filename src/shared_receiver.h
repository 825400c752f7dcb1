// The receiving half of the shared-memory path (internal): opens the messages that
// marked frames describe. The path as a whole is described in shared_path.h.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <capnp/common.h>

#include "capnsplice/options.h"
#include "control_link.h"
#include "idle_trimmer.h"
#include "received_message_state.h"
#include "shared_arena.h"

namespace capnsplice::detail {

/// The receiving half: opens the messages that marked frames describe.
class SharedReceiver final : public Trimmable {
 public:
  /// Tells the peer on `link` that this end reads shared-memory messages, when this
  /// process can (memfd arenas, and address space for a peer's arena). The receiver does
  /// it when it is made; the SharedReceiver itself comes with the first marked frame, so
  /// a channel end that never receives one does not hold it.
  static void announce(ControlLink& link);

  /// Follows the descriptors that come through `link` (after announce()).
  SharedReceiver(std::shared_ptr<ControlLink> link, const ReceiveLimits& limits,
                 std::string context);
  ~SharedReceiver() { unschedule(); }

  /// Fills `state` with the message that `descriptor` (segment 1 of a marked frame)
  /// describes, checking every field: its arena must be the latest one the peer
  /// announced (ControlLink::take_arena), which the peer does before it sends any
  /// descriptor naming it, so nothing here waits. A marked frame from a peer that
  /// announced no arena is MalformedFrame (a plain Cap'n Proto peer: a message without
  /// a root pointer); anything else wrong with it is ProtocolViolation.
  void open(kj::ArrayPtr<const capnp::word> descriptor, ReceivedMessageState& state);

  /// Lets go of arenas the peer has replaced or retired (ControlLink::send_retire; the
  /// link is read for that at most every kIdleArenaCheckInterval). Unmapping the last
  /// mapping of an arena frees its pages, which takes milliseconds per 100 MiB (17 ms for
  /// 256 MiB here), so the receiver calls this when it has nothing to read rather than in
  /// open(), where it would delay the message that names the new arena. Messages still
  /// reading an arena keep it mapped until they are dropped.
  void release_retired() noexcept;

  /// Lets go of the arenas the peer retired, like release_retired() but on the trimmer
  /// thread: a receiver that nothing calls (idle in an event loop, or blocked) still
  /// unmaps an arena its idle peer dropped. Looks again while an arena is mapped.
  bool trim_if_idle() noexcept override;

 private:
  /// Reads the link and lets go of what the peer retired; `arenas_mutex_` held.
  void release_retired_locked() noexcept;
  void open_descriptor(kj::ArrayPtr<const capnp::word> descriptor, ReceivedMessageState& state);
  std::shared_ptr<ReceiveArena> arena(std::uint32_t id);

  std::shared_ptr<ControlLink> link_;
  const ReceiveLimits limits_;
  const std::string context_;
  /// Guards the arenas: the receiving thread opens messages, the trimmer lets go.
  std::mutex arenas_mutex_;
  /// The arena mapped last. Older ones live on only in the messages that read them, so
  /// a peer announcing arena after arena pins no more mappings than the application
  /// holds messages.
  std::shared_ptr<ReceiveArena> arena_;
  /// Arenas replaced since the receiver last had nothing to read; at most
  /// kMaxRetiredArenas, so a receiver that never idles still lets go of them.
  std::vector<std::shared_ptr<ReceiveArena>> retired_;
  std::chrono::nanoseconds next_retire_check_{0};
};

}  // namespace capnsplice::detail
