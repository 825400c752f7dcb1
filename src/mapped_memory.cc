#include "mapped_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include "capnsplice/error.h"
#include "capnsplice/unique_fd.h"

namespace capnsplice::detail {

namespace {
constexpr std::size_t kHugePageBytes = std::size_t{2} * 1024 * 1024;
}  // namespace

std::size_t page_size() noexcept {
  static const std::size_t size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

MappedMemory& MappedMemory::operator=(MappedMemory&& other) noexcept {
  if (this != &other) {
    unmap();
    base_ = std::exchange(other.base_, nullptr);
    mapping_bytes_ = std::exchange(other.mapping_bytes_, 0);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    shared_ = std::exchange(other.shared_, false);
  }
  return *this;
}

void MappedMemory::unmap() noexcept {
  if (base_ != nullptr) {
    ::munmap(base_, mapping_bytes_);
    base_ = nullptr;
    data_ = nullptr;
    mapping_bytes_ = size_ = 0;
  }
}

MappedMemory MappedMemory::anonymous(std::size_t bytes, HugePages huge_pages,
                                     std::string_view context) {
  const std::size_t size = round_up(bytes == 0 ? 1 : bytes, page_size());
  // For huge pages, over-allocate and start at a 2 MiB boundary: THP only backs
  // aligned 2 MiB ranges.
  const std::size_t slack =
      huge_pages != HugePages::never && size >= kHugePageBytes ? kHugePageBytes : 0;
  void* base = ::mmap(nullptr, size + slack, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) throw_system_error(context, "mmap");
  MappedMemory memory;
  memory.base_ = base;
  memory.mapping_bytes_ = size + slack;
  memory.data_ = static_cast<std::byte*>(base);
  if (slack != 0) {
    auto address = reinterpret_cast<std::uintptr_t>(base);
    memory.data_ += round_up(address, kHugePageBytes) - address;
  }
  memory.size_ = size;
  if (huge_pages == HugePages::advised) memory.advise_huge_pages(true);
  return memory;
}

void MappedMemory::advise_huge_pages(bool huge) const noexcept {
  // Only advice: where THP is off this fails harmlessly.
  if (data_ != nullptr) ::madvise(data_, size_, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
}

void MappedMemory::discard(std::size_t offset, std::size_t bytes) const noexcept {
  if (data_ == nullptr || bytes == 0) return;
  // MADV_REMOVE frees a memfd's pages themselves (and so in both mirrored copies);
  // MADV_DONTNEED only drops this mapping's references, which for private memory is the
  // same thing.
  ::madvise(data_ + offset, bytes, shared_ ? MADV_REMOVE : MADV_DONTNEED);
}

MappedMemory MappedMemory::readable_reservation(std::size_t bytes, std::string_view context) {
  const std::size_t size = round_up(bytes == 0 ? 1 : bytes, page_size());
  void* base = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) throw_system_error(context, "mmap (reservation)");
  MappedMemory memory;
  memory.base_ = base;
  memory.mapping_bytes_ = size;
  memory.data_ = static_cast<std::byte*>(base);
  memory.size_ = size;
  return memory;
}

MappedMemory MappedMemory::mirror_reservation(std::size_t size, std::string_view context) {
  void* base = ::mmap(nullptr, 2 * size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) throw_system_error(context, "mmap");
  MappedMemory memory;
  memory.base_ = base;
  memory.mapping_bytes_ = 2 * size;
  memory.data_ = static_cast<std::byte*>(base);
  memory.size_ = size;
  return memory;
}

MappedMemory MappedMemory::mirrored(std::size_t bytes, std::string_view context) {
  const std::size_t size = round_up(bytes == 0 ? 1 : bytes, page_size());
  UniqueFd file(::memfd_create("capnsplice-ring", MFD_CLOEXEC));
  if (file && ::ftruncate(file.get(), static_cast<off_t>(size)) != 0) {
    throw_system_error(context, "ftruncate");
  }
  MappedMemory memory = mirror_reservation(size, context);
  memory.shared_ = true;
  if (!file) {
    // memfd_create refused (a seccomp sandbox): shared anonymous pages, which mremap with
    // an old size of 0 maps a second time (mremap(2)).
    if (::mmap(memory.data_, size, PROT_READ | PROT_WRITE,
               MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) {
      throw_system_error(context, "mmap (shared)");
    }
    if (::mremap(memory.data_, 0, size, MREMAP_MAYMOVE | MREMAP_FIXED, memory.data_ + size) ==
        MAP_FAILED) {
      throw_system_error(context, "mremap (mirror)");
    }
    return memory;
  }
  for (std::size_t half = 0; half < 2; ++half) {
    void* at = memory.data_ + half * size;
    if (::mmap(at, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, file.get(), 0) ==
        MAP_FAILED) {
      throw_system_error(context, "mmap (mirror)");
    }
  }
  return memory;
}

}  // namespace capnsplice::detail
