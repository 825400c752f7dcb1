#include "descriptor_inbox.h"

#include <algorithm>

#include "capnsplice/error.h"

namespace capnsplice::detail {

void DescriptorInbox::file(std::uint64_t sequence, std::uint32_t announced,
                           std::vector<UniqueFd> fds, bool truncated,
                           const ReceiveLimits& limits) {
  any_filed_ = true;
  Record record{sequence, announced, {}, {}};
  const std::string numbers = "descriptors of message " + std::to_string(sequence) + " (";
  if (truncated) {
    record.refused = numbers + "said " + std::to_string(announced) +
                     ") did not all arrive: this process had no descriptor left "
                     "(RLIMIT_NOFILE), or the peer sent more than " +
                     std::to_string(kMaxDescriptorsPerMessage);
  } else if (fds.size() != announced) {
    record.refused = numbers + std::to_string(fds.size()) + ") are not the " +
                     std::to_string(announced) + " its record says";
  } else if (fds.size() > limits.max_descriptors_per_message) {
    record.refused = numbers + std::to_string(fds.size()) +
                     ") are more than ReceiveLimits::max_descriptors_per_message (" +
                     std::to_string(limits.max_descriptors_per_message) + ")";
  } else if (waiting_ + fds.size() > limits.max_descriptors_waiting) {
    record.refused = numbers + std::to_string(fds.size()) + ") came while " +
                     std::to_string(waiting_) +
                     " descriptors waited for their messages, more than "
                     "ReceiveLimits::max_descriptors_waiting (" +
                     std::to_string(limits.max_descriptors_waiting) + ") in all";
  }
  if (record.refused.empty()) {
    waiting_ += fds.size();
    record.fds = std::move(fds);
  }  // else `fds` closes here: a refused record costs no descriptor
  if (records_.size() == kMaxFiledRecords) remove(records_.begin());
  records_.push_back(std::move(record));
}

std::optional<std::vector<UniqueFd>> DescriptorInbox::take(std::uint64_t sequence,
                                                           std::uint32_t count,
                                                           const std::string& context) {
  const auto found = std::find_if(records_.begin(), records_.end(),
                                  [&](const Record& record) { return record.sequence == sequence; });
  if (found == records_.end()) return std::nullopt;
  Record record = remove(found);
  if (!record.refused.empty()) {
    throw Error(ErrorCode::ProtocolViolation, context,
                record.refused + ": they were closed on arrival, and the message is dropped");
  }
  if (record.fds.size() != count) {
    throw Error(ErrorCode::ProtocolViolation, context,
                "message " + std::to_string(sequence) + " says it carries " +
                    std::to_string(count) + " descriptors, its record brought " +
                    std::to_string(record.fds.size()) +
                    ": they were closed, and the message is dropped");
  }
  return std::move(record.fds);
}

void DescriptorInbox::cancel(std::uint64_t sequence) noexcept {
  const auto found = std::find_if(records_.begin(), records_.end(),
                                  [&](const Record& record) { return record.sequence == sequence; });
  if (found == records_.end()) return;
  released_ -= found->announced;  // the sender counted them out itself
  remove(found);                   // its descriptors close here
}

DescriptorInbox::Record DescriptorInbox::remove(std::vector<Record>::iterator at) noexcept {
  Record record = std::move(*at);
  records_.erase(at);
  waiting_ -= record.fds.size();
  released_ += record.announced;
  return record;
}

}  // namespace capnsplice::detail
