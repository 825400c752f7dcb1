// The doorbell (internal): a counter in shared memory that a sender bumps after every
// write into the pipe, so that a receiver that spins watches memory, not the kernel.
//
//   sender                                   receiver
//   DoorbellWriter: memfd page, read-write   DoorbellReader: the same page, read-only
//   +-----------------------------------+    around each write:  ++writing; write;
//   | rings | writing | (zeros)          |                        rings += bytes; --writing
//   +-----------------------------------+    before each read:   seen = rings
//        one page, sealed                    a read found nothing: until rings != seen,
//                                              nothing new is in the pipe from this sender
//
// While `writing` is not zero the receiver reads the pipe (a write is under way); it also
// tells bytes of a write that has not rung yet from bytes of a writer that never rings
// (DoorbellWatch::missed_unless_rung_since).
//
// Only a hint, never trusted for correctness: a receiver that sees no change still ends
// every wait in ppoll() on the pipe and, when it busy-polls, reads the pipe for real
// every kDoorbellTrustedLooks looks. So bytes from another writer of the pipe (a forked
// copy of the sender shares the page and adds too; a raw write() does not), a peer's
// death (end of stream) and a peer that lies about the counter cost latency at most, never
// a lost or late-forever message. The absolute value means nothing: only changes count.
//
// A sender makes the page with its first write when SenderOptions::doorbell is set and
// the end has a control link (ControlLink::offer_doorbell); a receiver with
// ReceiverOptions::doorbell takes it from the link (at most one, the first). The page is
// sealed (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) before it is
// sent, and the receiver refuses one without F_SEAL_SHRINK and F_SEAL_FUTURE_WRITE, or of
// the wrong size: a peer cannot make the receiver's reads fault (SIGBUS) or write
// through the receiver's descriptor.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string_view>

#include "capnsplice/unique_fd.h"
#include "sealed_memfd.h"

namespace capnsplice::detail {

/// Bytes of the doorbell's memfd: one page.
inline constexpr std::size_t kDoorbellBytes = 4096;

/// A busy-polling receiver reads the pipe for real once every this many looks that the
/// doorbell called empty: what a writer that does not ring it put there (and the end of
/// the stream) is seen within them (tens of µs).
inline constexpr std::uint32_t kDoorbellTrustedLooks = 1024;

/// The start of a doorbell page.
struct DoorbellCounters {
  /// Bytes written so far (from any value).
  alignas(64) std::atomic<std::uint64_t> rings;
  /// Writes begun and not rung yet: a spinning receiver starts reading as soon as this
  /// moves, so that its read overlaps the sender's write (with system calls of ~0.4 µs,
  /// waiting for the ring after the write returned made round trips slower than polling
  /// the pipe). The same cache line as `rings`: the receiver watches both.
  std::atomic<std::uint64_t> writing;
};

/// One mapping of a doorbell page.
using DoorbellPage = MemfdPage<DoorbellCounters, kDoorbellBytes>;

/// The sender's side: made lazily, by the first write that finds the option set.
class DoorbellWriter final : public DoorbellPage {
 public:
  /// A fresh page and its memfd (to offer the peer), sealed. Throws SystemError.
  static std::unique_ptr<DoorbellWriter> make(std::string_view context);

  /// Around one write into the pipe (`doorbell` may be null: nothing to ring).
  class Write {
   public:
    explicit Write(DoorbellWriter* doorbell) noexcept : doorbell_(doorbell) {
      if (doorbell_ != nullptr) doorbell_->page_->writing.fetch_add(1);
    }
    ~Write() {
      if (doorbell_ != nullptr) doorbell_->page_->writing.fetch_sub(1);
    }
    Write(const Write&) = delete;
    Write& operator=(const Write&) = delete;

    /// `bytes` more are in the pipe: after the write, so that a reader that sees the
    /// change finds them.
    void rang(std::size_t bytes) const noexcept {
      if (doorbell_ != nullptr) doorbell_->page_->rings.fetch_add(bytes);
    }

   private:
    DoorbellWriter* doorbell_;
  };

  /// The memfd until it was offered (then closed: the mapping keeps the page).
  UniqueFd& memfd() noexcept { return memfd_; }

  DoorbellWriter(void* address, UniqueFd memfd) noexcept
      : DoorbellPage(address), memfd_(std::move(memfd)) {}

 private:
  UniqueFd memfd_;
};

/// The receiver's side, read-only.
class DoorbellReader final : public DoorbellPage {
 public:
  /// Maps the peer's page. Throws ProtocolViolation for one that is not a sealed memfd of
  /// kDoorbellBytes, SystemError when the mapping fails.
  static std::unique_ptr<DoorbellReader> map(UniqueFd memfd, std::string_view context);

  std::uint64_t rings() const noexcept { return page_->rings.load(); }
  std::uint64_t writing() const noexcept { return page_->writing.load(); }

  using DoorbellPage::DoorbellPage;
};

}  // namespace capnsplice::detail
