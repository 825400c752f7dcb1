#include "doorbell.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "capnsplice/error.h"

namespace capnsplice::detail {

namespace {

/// Sealed once the sender's own mapping exists: F_SEAL_FUTURE_WRITE leaves that one
/// writable and no other.
constexpr int kDoorbellSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL;
/// What a receiver needs: no SIGBUS from a shrunk file, no write through its descriptor.
constexpr int kRequiredSeals = F_SEAL_SHRINK | F_SEAL_FUTURE_WRITE;

}  // namespace

DoorbellPage::~DoorbellPage() { ::munmap(counters_, kDoorbellBytes); }

std::unique_ptr<DoorbellWriter> DoorbellWriter::make(std::string_view context) {
  UniqueFd memfd(::memfd_create("capnsplice-doorbell", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!memfd) throw_system_error(context, "memfd_create (doorbell)");
  if (::ftruncate(memfd.get(), kDoorbellBytes) != 0) {
    throw_system_error(context, "ftruncate (doorbell)");
  }
  void* address =
      ::mmap(nullptr, kDoorbellBytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd.get(), 0);
  if (address == MAP_FAILED) throw_system_error(context, "mmap (doorbell)");
  auto writer = std::make_unique<DoorbellWriter>(address, std::move(memfd));
  if (::fcntl(writer->memfd().get(), F_ADD_SEALS, kDoorbellSeals) != 0) {
    throw_system_error(context, "fcntl(F_ADD_SEALS) (doorbell)");
  }
  return writer;
}

std::unique_ptr<DoorbellReader> DoorbellReader::map(UniqueFd memfd, std::string_view context) {
  struct stat info {};
  if (::fstat(memfd.get(), &info) != 0) throw_system_error(context, "fstat (doorbell)");
  const int seals = ::fcntl(memfd.get(), F_GET_SEALS);
  if (!S_ISREG(info.st_mode) || static_cast<std::size_t>(info.st_size) != kDoorbellBytes ||
      seals < 0 || (seals & kRequiredSeals) != kRequiredSeals) {
    throw Error(ErrorCode::ProtocolViolation, context,
                "the peer's doorbell is not a memfd of one page sealed against shrinking "
                "and writing");
  }
  void* address = ::mmap(nullptr, kDoorbellBytes, PROT_READ, MAP_SHARED, memfd.get(), 0);
  if (address == MAP_FAILED) throw_system_error(context, "mmap (the peer's doorbell)");
  return std::make_unique<DoorbellReader>(address);
}

}  // namespace capnsplice::detail
