// Page-aligned memory mappings owned by RAII handles (internal).
#pragma once

#include <cstddef>
#include <string_view>
#include <utility>

namespace capnsplice::detail {

/// Owns one mmap()ed region and unmaps it when destroyed. Move-only.
///
/// Unmapping is safe even while a pipe still holds pages of the region after
/// vmsplice: the pipe owns page references, so the bytes stay intact until read.
class MappedMemory {
 public:
  MappedMemory() noexcept = default;
  MappedMemory(MappedMemory&& other) noexcept
      : base_(std::exchange(other.base_, nullptr)),
        mapping_bytes_(std::exchange(other.mapping_bytes_, 0)),
        data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)),
        shared_(std::exchange(other.shared_, false)) {}
  MappedMemory& operator=(MappedMemory&& other) noexcept;
  MappedMemory(const MappedMemory&) = delete;
  MappedMemory& operator=(const MappedMemory&) = delete;
  ~MappedMemory() { unmap(); }

  /// Whether anonymous memory is backed by transparent huge pages.
  enum class HugePages {
    never,
    /// Aligned to 2 MiB and advised MADV_HUGEPAGE at once.
    advised,
    /// Aligned to 2 MiB, small pages until advise_huge_pages(true).
    later,
  };

  /// Zero-filled private memory of at least `bytes` (rounded up to pages), backed by
  /// huge pages as `huge_pages` says. Throws SystemError naming `context`.
  static MappedMemory anonymous(std::size_t bytes, HugePages huge_pages, std::string_view context);

  /// A ring of `bytes` (a multiple of the page size) mapped twice, back to back:
  /// data()[i] and data()[i + bytes] are the same byte, so any run of up to
  /// `bytes` bytes starting inside the first copy is contiguous in memory.
  ///
  ///   virtual:  [ copy A: 0 .. bytes ) [ copy B: bytes .. 2*bytes )
  ///                   \________ same memfd pages ________/
  ///
  /// Where memfd_create is refused, the pages are shared anonymous memory instead.
  static MappedMemory mirrored(std::size_t bytes, std::string_view context);

  /// `bytes` of address space that reads as zeros and cannot be written: no memory is
  /// used until something is mapped over it (MAP_FIXED).
  static MappedMemory readable_reservation(std::size_t bytes, std::string_view context);

  /// Asks the kernel to back pages faulted in from now on with huge pages (MADV_HUGEPAGE),
  /// or not (MADV_NOHUGEPAGE). Advice only: where THP is off it changes nothing.
  void advise_huge_pages(bool huge) const noexcept;

  /// Gives the pages of [offset, offset + bytes) back to the kernel; they read as zeros
  /// afterwards (private memory: MADV_DONTNEED; mirrored memory: MADV_REMOVE, both copies).
  /// Safe while a pipe holds pages of the range after vmsplice: the pipe keeps its own
  /// references, and later writes here land in fresh pages.
  void discard(std::size_t offset, std::size_t bytes) const noexcept;

  std::byte* data() const noexcept { return data_; }
  /// Usable size (for mirrored memory: the size of one copy).
  std::size_t size() const noexcept { return size_; }
  explicit operator bool() const noexcept { return data_ != nullptr; }

 private:
  /// 2 * `size` bytes of inaccessible address space, for mirrored() to map over.
  static MappedMemory mirror_reservation(std::size_t size, std::string_view context);
  void unmap() noexcept;

  void* base_ = nullptr;
  std::size_t mapping_bytes_ = 0;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  bool shared_ = false;  // mirrored: pages of a memfd or shared anonymous memory
};

/// The system page size.
std::size_t page_size() noexcept;

/// Rounds `bytes` up to a multiple of `alignment` (a power of two).
constexpr std::size_t round_up(std::size_t bytes, std::size_t alignment) noexcept {
  return (bytes + alignment - 1) & ~(alignment - 1);
}

}  // namespace capnsplice::detail
