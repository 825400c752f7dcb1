// The doorbell (internal): a counter in shared memory that a sender bumps after every
// write into the pipe, so that a receiver that spins watches memory, not the kernel.
//
//   sender                                   receiver
//   DoorbellWriter: memfd page, read-write   DoorbellReader: the same page, read-only
//   +-------------------------------+        after each write:   counter += bytes
//   | atomic<uint64> counter | zero |        before each read:   seen = counter
//   +-------------------------------+        a read found nothing: until counter != seen,
//        one page, sealed                      nothing new is in the pipe from this sender
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

namespace capnsplice::detail {

/// Bytes of the doorbell's memfd: one page.
inline constexpr std::size_t kDoorbellBytes = 4096;

/// A busy-polling receiver reads the pipe for real once every this many looks that the
/// doorbell called empty: what a writer that does not ring it put there (and the end of
/// the stream) is seen within them (tens of µs).
inline constexpr std::uint32_t kDoorbellTrustedLooks = 1024;

/// One mapping of a doorbell page; unmapped when destroyed.
class DoorbellPage {
 public:
  explicit DoorbellPage(void* address) noexcept
      : counter_(static_cast<std::atomic<std::uint64_t>*>(address)) {}
  ~DoorbellPage();
  DoorbellPage(const DoorbellPage&) = delete;
  DoorbellPage& operator=(const DoorbellPage&) = delete;

 protected:
  std::atomic<std::uint64_t>* counter_;
};

/// The sender's side: made lazily, by the first write that finds the option set.
class DoorbellWriter final : public DoorbellPage {
 public:
  /// A fresh page and its memfd (to offer the peer), sealed. Throws SystemError.
  static std::unique_ptr<DoorbellWriter> make(std::string_view context);

  /// `bytes` more are in the pipe. After the write, so that a reader that sees the change
  /// finds them.
  void rang(std::size_t bytes) noexcept { counter_->fetch_add(bytes, std::memory_order_release); }

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

  std::uint64_t value() const noexcept { return counter_->load(std::memory_order_acquire); }

  using DoorbellPage::DoorbellPage;
};

}  // namespace capnsplice::detail
