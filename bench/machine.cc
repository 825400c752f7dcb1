#include "machine.h"

#include <sys/utsname.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "capnsplice/channel.h"
#include "units.h"

namespace bench {

namespace {

std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      const std::size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown CPU";
}

std::string pipe_max_size() {
  std::size_t bytes = 0;
  std::ifstream("/proc/sys/fs/pipe-max-size") >> bytes;
  return bytes != 0 ? size_label(bytes) : "unknown";
}

/// The bracketed choice in /sys/kernel/mm/transparent_hugepage/enabled.
std::string transparent_huge_pages() {
  std::string setting;
  std::getline(std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled"), setting);
  const std::size_t open = setting.find('['), close = setting.find(']');
  if (open == std::string::npos || close == std::string::npos) return "unknown";
  return setting.substr(open + 1, close - open - 1);
}

/// The library's own probe (done once per process): whether vmsplice maps the sender's
/// pages into the pipe, or copies them as a 2026 kernel proposal would have it.
std::string vmsplice_behaviour() {
  auto [near, far] = capnsplice::Channel::pair();
  return near.sender().stats().vmsplice_aliases_pages ? "maps pages" : "copies";
}

}  // namespace

std::string describe_machine() {
  utsname system{};
  ::uname(&system);
  return std::to_string(::sysconf(_SC_NPROCESSORS_ONLN)) + " cores · " + cpu_model() + " · " +
         system.sysname + " " + system.release + " " + system.machine + " · pipe-max-size " +
         pipe_max_size() + " · THP " + transparent_huge_pages() + " · vmsplice " +
         vmsplice_behaviour();
}

double load_average() {
  double load = -1;
  std::ifstream("/proc/loadavg") >> load;
  return load;
}

}  // namespace bench
