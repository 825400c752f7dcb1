// bench/units.h — sizes and numbers as people read and type them.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bench {

/// "64 B", "1 KiB", "1.5 KiB", "16 MiB".
std::string size_label(std::size_t bytes);

/// "65536", "64K", "64KiB", "1M", "1MiB", "512B" -> bytes; empty when unreadable.
std::optional<std::size_t> parse_size(std::string_view text);

/// Three significant digits, no exponent: "9.81", "0.0523", "1230".
std::string format_significant(double value);

/// "1.23 M/s", "850 k/s".
std::string format_rate(double per_second);

/// "2.9x".
std::string format_ratio(double ratio);

/// Splits "a,b,c" at `separator`, dropping empty pieces.
std::vector<std::string> split(std::string_view text, char separator);

}  // namespace bench
