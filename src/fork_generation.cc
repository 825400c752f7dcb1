#include "fork_generation.h"

#include <pthread.h>

namespace capnsplice::detail {

std::atomic<std::uint64_t> forks_since_load{0};

namespace {

void count_fork() noexcept { forks_since_load.fetch_add(1, std::memory_order_relaxed); }

// Registered when the library is loaded (whatever reads fork_generation() links this
// file), and before the static initialisers of the application, which may already make
// channels and fork: no fork() from then on goes uncounted.
[[gnu::constructor(101)]] void register_fork_counter() noexcept {
  ::pthread_atfork(nullptr, nullptr, count_fork);
}

}  // namespace

}  // namespace capnsplice::detail
