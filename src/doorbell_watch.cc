#include "doorbell_watch.h"

#include <sched.h>

#include "capnsplice/error.h"
#include "control_link.h"

namespace capnsplice::detail {

DoorbellWatch::DoorbellWatch(bool wanted, std::shared_ptr<ControlLink> link)
    : link_(wanted ? std::move(link) : nullptr) {
  if (link_) link_->want_doorbell();
}

DoorbellWatch::~DoorbellWatch() = default;

void DoorbellWatch::look_on_link(std::string_view context) noexcept {
  const auto now = std::chrono::steady_clock::now();
  if (now < next_look_) return;
  next_look_ = now + std::chrono::milliseconds(1);
  try {
    UniqueFd memfd = link_->take_doorbell();
    if (!memfd) return;  // not yet
    reader_ = DoorbellReader::map(std::move(memfd), context);
    seen_valid_ = false;  // nothing is known until the next read
  } catch (...) {
    // Not a doorbell, no memory for it, or a broken link: poll the pipe, as without.
  }
  link_->refuse_doorbells();  // one that comes later is closed on arrival
  link_.reset();
}

void DoorbellWatch::missed_unless_rung_since(std::uint64_t seen) noexcept {
  seen_valid_ = false;
  if (!reader_ || reader_->rings() != seen || reader_->writing() != 0) return;
  if (++misses_ >= kMaxMisses) reader_.reset();
}

void DoorbellWatch::yield_now() noexcept { ::sched_yield(); }

}  // namespace capnsplice::detail
