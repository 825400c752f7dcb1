#include "sealed_memfd.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <utility>

#include "capnsplice/error.h"

namespace capnsplice::detail {

namespace {

/// The seals of `required` missing from `seals`, by name.
std::string missing_seals(int seals, int required) {
  std::string names;
  for (auto [seal, name] : {std::pair{F_SEAL_SHRINK, "F_SEAL_SHRINK"},
                            std::pair{F_SEAL_FUTURE_WRITE, "F_SEAL_FUTURE_WRITE"}}) {
    if ((required & seal) != 0 && (seals & seal) == 0) {
      names += (names.empty() ? "" : " | ") + std::string(name);
    }
  }
  return names;
}

}  // namespace

void require_peer_memfd(int fd, std::size_t bytes, std::string_view what,
                        std::string_view context, int required) {
  struct stat info {};
  if (::fstat(fd, &info) != 0) throw_system_error(context, "fstat (" + std::string(what) + ")");
  if (!S_ISREG(info.st_mode) || static_cast<std::size_t>(info.st_size) != bytes) {
    throw Error(ErrorCode::ProtocolViolation, context,
                "the peer's shared-memory " + std::string(what) +
                    " is not a memfd of the announced size (" + std::to_string(bytes) +
                    " bytes)");
  }
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0 || (seals & required) != required) {
    throw Error(ErrorCode::ProtocolViolation, context,
                "the peer's shared-memory " + std::string(what) + " lacks " +
                    missing_seals(seals < 0 ? 0 : seals, required) +
                    ", which a capnsplice " + std::string(what) + " is sealed with");
  }
}

OwnMemfdMapping make_sealed_memfd_mapping(std::size_t bytes, int seals, std::string_view what,
                                          std::string_view context) {
  std::string name = "capnsplice-" + std::string(what);
  std::replace(name.begin(), name.end(), ' ', '-');
  OwnMemfdMapping made;
  made.memfd.reset(::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!made.memfd) throw_system_error(context, "memfd_create (" + std::string(what) + ")");
  if (::ftruncate(made.memfd.get(), static_cast<off_t>(bytes)) != 0) {
    throw_system_error(context, "ftruncate (" + std::string(what) + ")");
  }
  made.address = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, made.memfd.get(), 0);
  if (made.address == MAP_FAILED) throw_system_error(context, "mmap (" + std::string(what) + ")");
  // Only now: F_SEAL_FUTURE_WRITE, if asked for, leaves the mapping above writable.
  if (::fcntl(made.memfd.get(), F_ADD_SEALS, seals) != 0) {
    const int error = errno;
    ::munmap(made.address, bytes);
    throw_system_error(context, "fcntl(F_ADD_SEALS) (" + std::string(what) + ")", error);
  }
  return made;
}

void* map_peer_memfd(int fd, std::size_t bytes, int required, int protection,
                     std::string_view what, std::string_view context) {
  require_peer_memfd(fd, bytes, what, context, required);
  void* address = ::mmap(nullptr, bytes, protection, MAP_SHARED, fd, 0);
  if (address == MAP_FAILED) {
    throw_system_error(context, "mmap (the peer's " + std::string(what) + ")");
  }
  return address;
}

}  // namespace capnsplice::detail
