#include "doorbell.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "capnsplice/error.h"
#include "sealed_memfd.h"

namespace capnsplice::detail {

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
  if (::fcntl(writer->memfd().get(), F_ADD_SEALS, kOwnerSeals) != 0) {
    throw_system_error(context, "fcntl(F_ADD_SEALS) (doorbell)");
  }
  return writer;
}

std::unique_ptr<DoorbellReader> DoorbellReader::map(UniqueFd memfd, std::string_view context) {
  require_peer_memfd(memfd.get(), kDoorbellBytes, "doorbell", context);
  void* address = ::mmap(nullptr, kDoorbellBytes, PROT_READ, MAP_SHARED, memfd.get(), 0);
  if (address == MAP_FAILED) throw_system_error(context, "mmap (the peer's doorbell)");
  return std::make_unique<DoorbellReader>(address);
}

}  // namespace capnsplice::detail
