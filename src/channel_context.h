// The prefix of a channel's error messages (internal): "channel 'name': operation".
#pragma once

#include <algorithm>
#include <string>
#include <string_view>

namespace capnsplice::detail {

/// "channel 'name': operation", sized once and filled in place: Channel::pair() makes
/// four of these per pair (a chain of appends cost it a tenth of its instructions).
inline std::string channel_context(std::string_view name, std::string_view operation) {
  constexpr std::string_view kOpen = "channel '";
  constexpr std::string_view kClose = "': ";
  std::string context(kOpen.size() + name.size() + kClose.size() + operation.size(), '\0');
  char* out = context.data();
  for (const std::string_view part : {kOpen, name, kClose, operation}) {
    out = std::copy(part.begin(), part.end(), out);
  }
  return context;
}

}  // namespace capnsplice::detail
