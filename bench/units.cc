#include "units.h"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace bench {

std::string size_label(std::size_t bytes) {
  struct Unit {
    std::size_t bytes;
    const char* name;
  };
  for (Unit unit : {Unit{1 << 30, "GiB"}, Unit{1 << 20, "MiB"}, Unit{1 << 10, "KiB"}}) {
    if (bytes >= unit.bytes) {
      std::string number =
          format_significant(static_cast<double>(bytes) / static_cast<double>(unit.bytes));
      if (number.find('.') != std::string::npos) {  // "64.0" -> "64", "1.50" -> "1.5"
        number.erase(number.find_last_not_of('0') + 1);
        if (number.back() == '.') number.pop_back();
      }
      return number + " " + unit.name;
    }
  }
  return std::to_string(bytes) + " B";
}

std::optional<std::size_t> parse_size(std::string_view text) {
  std::size_t number = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), number);
  if (error != std::errc() || end == text.data()) return std::nullopt;
  std::string_view suffix(end, static_cast<std::size_t>(text.data() + text.size() - end));
  if (!suffix.empty() && suffix.back() == 'B') suffix.remove_suffix(1);
  if (suffix.size() == 2 && suffix.back() == 'i') suffix.remove_suffix(1);
  if (suffix.empty()) return number;
  if (suffix.size() != 1) return std::nullopt;
  switch (suffix.front()) {
    case 'k':
    case 'K':
      return number << 10;
    case 'm':
    case 'M':
      return number << 20;
    case 'g':
    case 'G':
      return number << 30;
    default:
      return std::nullopt;
  }
}

std::string format_significant(double value) {
  if (value == 0 || !std::isfinite(value)) return value == 0 ? "0" : "-";
  const int digits_before_point = static_cast<int>(std::floor(std::log10(std::fabs(value)))) + 1;
  const int decimals = std::max(0, 3 - digits_before_point);
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", decimals, value);
  return text;
}

std::string format_rate(double per_second) {
  if (per_second >= 1e6) return format_significant(per_second / 1e6) + " M/s";
  if (per_second >= 1e3) return format_significant(per_second / 1e3) + " k/s";
  return format_significant(per_second) + " /s";
}

std::string format_ratio(double ratio) { return format_significant(ratio) + "x"; }

std::vector<std::string> split(std::string_view text, char separator) {
  std::vector<std::string> pieces;
  while (!text.empty()) {
    const std::size_t at = text.find(separator);
    const std::string_view piece = text.substr(0, at);
    if (!piece.empty()) pieces.emplace_back(piece);
    if (at == std::string_view::npos) break;
    text.remove_prefix(at + 1);
  }
  return pieces;
}

}  // namespace bench
