#include "control_pair.h"

#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <utility>

namespace capnsplice::detail {

/// Every ControlPair alive in this process, for the pthread_atfork handler: a fork()
/// must find none unmade. Its lock is held from the handler's start until fork() returns
/// in both processes, so no pair is made, added or dropped halfway through a fork.
struct ControlPairRegistry {
  std::mutex mutex;
  ControlPair* first = nullptr;

  static ControlPairRegistry& get() {
    static ControlPairRegistry* const registry = [] {
      auto* made = new ControlPairRegistry;  // never destroyed: pairs may outlive statics
      ::pthread_atfork(&before_fork, &after_fork, &after_fork);
      return made;
    }();
    return *registry;
  }

  static void before_fork() noexcept {
    ControlPairRegistry& registry = get();
    registry.mutex.lock();
    for (ControlPair* pair = registry.first; pair != nullptr; pair = pair->next_) {
      pair->make_for_fork();
    }
  }
  static void after_fork() noexcept { get().mutex.unlock(); }

  void add(ControlPair* pair) {
    std::lock_guard lock(mutex);
    pair->next_ = first;
    if (first != nullptr) first->previous_ = pair;
    first = pair;
  }

  void remove(ControlPair* pair) noexcept {
    std::lock_guard lock(mutex);
    if (pair->previous_ != nullptr) {
      pair->previous_->next_ = pair->next_;
    } else {
      first = pair->next_;
    }
    if (pair->next_ != nullptr) pair->next_->previous_ = pair->previous_;
  }
};

ControlPair::ControlPair(std::string name) : name_(std::move(name)) {
  ControlPairRegistry::get().add(this);
}

ControlPair::~ControlPair() {
  ControlPairRegistry::get().remove(this);
  for (auto& fd : fds_) {
    if (const int open = fd.exchange(-1); open >= 0) ::close(open);
  }
}

bool ControlPair::make() {
  std::lock_guard lock(mutex_);
  return make_locked();
}

bool ControlPair::make_locked() {
  // Once made, an end that closed since leaves the other's socket to find the end of
  // the link, as with an eager pair. Unmade, an end that went has nobody to link.
  if (made_) return true;
  if (closed_[0] || closed_[1] || frozen_) return false;
  int fds[2];
  // Left blocking, as Channel::pair_with_remote_end's: the link uses MSG_DONTWAIT.
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0) return false;
  fds_[0].store(fds[0], std::memory_order_release);
  fds_[1].store(fds[1], std::memory_order_release);
  made_ = true;
  return true;
}

bool ControlPair::defer_announcement(int side) {
  std::lock_guard lock(mutex_);
  if (made_) return false;
  announced_[side] = true;
  return true;
}

bool ControlPair::announced(int side) const {
  std::lock_guard lock(mutex_);
  return announced_[side];
}

bool ControlPair::defer_descriptor_announcement(int side, DescriptorLimits limits) {
  std::lock_guard lock(mutex_);
  if (made_) return false;
  descriptor_limits_[side] = limits;
  return true;
}

std::optional<DescriptorLimits> ControlPair::announced_descriptor_limits(int side) const {
  std::lock_guard lock(mutex_);
  return descriptor_limits_[side];
}

void ControlPair::close(int side) noexcept {
  std::lock_guard lock(mutex_);
  closed_[side] = true;
  if (const int open = fds_[side].exchange(-1); open >= 0) ::close(open);
}

void ControlPair::make_for_fork() noexcept {
  std::lock_guard lock(mutex_);
  static_cast<void>(make_locked());
  frozen_ = true;
}

}  // namespace capnsplice::detail
