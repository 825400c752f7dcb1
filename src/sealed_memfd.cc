#include "sealed_memfd.h"

#include <sys/stat.h>

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
                        std::string_view context) {
  struct stat info {};
  if (::fstat(fd, &info) != 0) throw_system_error(context, "fstat (" + std::string(what) + ")");
  if (!S_ISREG(info.st_mode) || static_cast<std::size_t>(info.st_size) != bytes) {
    throw Error(ErrorCode::ProtocolViolation, context,
                "the peer's shared-memory " + std::string(what) +
                    " is not a memfd of the announced size (" + std::to_string(bytes) +
                    " bytes)");
  }
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0 || (seals & kPeerRequiredSeals) != kPeerRequiredSeals) {
    throw Error(ErrorCode::ProtocolViolation, context,
                "the peer's shared-memory " + std::string(what) + " lacks " +
                    missing_seals(seals < 0 ? 0 : seals, kPeerRequiredSeals) +
                    ", which a capnsplice " + std::string(what) + " is sealed with");
  }
}

}  // namespace capnsplice::detail
