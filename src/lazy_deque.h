// A std::deque that allocates nothing until the first element comes (internal).
//
// libstdc++'s std::deque allocates its map and a 512-byte node as soon as it is made,
// empty or not, and is 80 bytes itself. Each end of a Channel::pair() has a control link
// whose queue of releases owed to the peer stays empty unless the peer stops reading the
// link: as a std::deque it cost every pair 4 allocations and 1.2 KiB of fresh memory,
// which a process making many pairs faults in (~2.5 µs a page here). This one is a
// pointer until the first push, and keeps its deque from then on.
#pragma once

#include <cstddef>
#include <deque>
#include <memory>
#include <utility>

namespace capnsplice::detail {

template <typename T>
class LazyDeque {
 public:
  using iterator = typename std::deque<T>::iterator;
  using const_iterator = typename std::deque<T>::const_iterator;

  bool empty() const noexcept { return !items_ || items_->empty(); }
  std::size_t size() const noexcept { return items_ ? items_->size() : 0; }

  // As with std::deque, these need an element (or `index` < size()).
  T& front() { return items_->front(); }
  const T& front() const { return items_->front(); }
  T& back() { return items_->back(); }
  const T& back() const { return items_->back(); }
  T& operator[](std::size_t index) { return (*items_)[index]; }
  const T& operator[](std::size_t index) const { return (*items_)[index]; }

  void push_back(const T& item) { made().push_back(item); }
  void push_back(T&& item) { made().push_back(std::move(item)); }
  template <typename... Args>
  T& emplace_back(Args&&... args) {
    return made().emplace_back(std::forward<Args>(args)...);
  }
  void pop_front() { items_->pop_front(); }
  void clear() noexcept {
    if (items_) items_->clear();
  }

  // Value-initialized iterators compare equal: an unmade deque is an empty range.
  iterator begin() noexcept { return items_ ? items_->begin() : iterator(); }
  iterator end() noexcept { return items_ ? items_->end() : iterator(); }
  const_iterator begin() const noexcept { return items_ ? items_->cbegin() : const_iterator(); }
  const_iterator end() const noexcept { return items_ ? items_->cend() : const_iterator(); }

 private:
  std::deque<T>& made() {
    if (!items_) items_ = std::make_unique<std::deque<T>>();
    return *items_;
  }

  std::unique_ptr<std::deque<T>> items_;
};

}  // namespace capnsplice::detail
