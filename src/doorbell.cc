#include "doorbell.h"

#include "capnsplice/error.h"

namespace capnsplice::detail {

std::unique_ptr<DoorbellWriter> DoorbellWriter::make(std::string_view context) {
  OwnMemfdMapping page = make_sealed_memfd_mapping(kDoorbellBytes, kOwnerSeals, "doorbell", context);
  return std::make_unique<DoorbellWriter>(page.address, std::move(page.memfd));
}

std::unique_ptr<DoorbellReader> DoorbellReader::map(UniqueFd memfd, std::string_view context) {
  return std::make_unique<DoorbellReader>(map_peer_memfd(
      memfd.get(), kDoorbellBytes, kPeerRequiredSeals, PROT_READ, "doorbell", context));
}

}  // namespace capnsplice::detail
