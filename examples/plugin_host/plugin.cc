// examples/plugin_host: the plugin. The host starts sixteen instances of this one
// executable; each answers Requests with the checksum of their payload until the host
// closes the channel. Two instances are told to misbehave, to give the host something to
// survive:
//
//   plugin_host_plugin INSTANCE                          answers every request
//   plugin_host_plugin INSTANCE --crash-after N          aborts after N answers
//   plugin_host_plugin INSTANCE --stop-reading-after N   after N answers, stops reading
//
// The plugin is an ordinary blocking program: only the host needs an event loop.
#include <capnsplice/capnsplice.h>
#include <capnsplice/process.h>
#include <sys/prctl.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <thread>

#include "plugin.capnp.h"

namespace {

/// What this instance was told to do: -1 means never.
struct Role {
  int crash_after = -1;
  int stop_reading_after = -1;
};

Role parse_role(int argc, char** argv) {
  Role role;
  if (argc > 3 && std::strcmp(argv[2], "--crash-after") == 0) role.crash_after = std::atoi(argv[3]);
  if (argc > 3 && std::strcmp(argv[2], "--stop-reading-after") == 0) {
    role.stop_reading_after = std::atoi(argv[3]);
  }
  return role;
}

/// Dies the way a plugin with a fatal bug dies: abort(), no destructor runs, nothing is
/// flushed, and the host's requests in flight are never answered.
[[noreturn]] void crash() {
  ::prctl(PR_SET_DUMPABLE, 0);  // a deliberate crash: leave no core file behind
  std::abort();
}

/// Stops reading without exiting, as a plugin stuck in an endless loop or a deadlock
/// does: nothing tells the host. The host kills it after a second; the bound only keeps an
/// orphan from lingering if the host itself died.
void stop_reading() { std::this_thread::sleep_for(std::chrono::seconds(30)); }

std::uint64_t checksum(capnp::Data::Reader bytes) {
  return std::accumulate(bytes.begin(), bytes.end(), std::uint64_t{0});
}

}  // namespace

int main(int argc, char** argv) {
  const Role role = parse_role(argc, argv);
  try {
    capnsplice::Channel host = capnsplice::child_channel();
    for (int answered = 0;; ++answered) {
      if (answered == role.stop_reading_after) {
        stop_reading();
        return 1;  // the host should have killed us by now
      }
      auto request = host.receive_as<example::Request>();
      if (answered == role.crash_after) crash();  // with this request unanswered
      host.send_struct<example::Response>([&](example::Response::Builder response) {
        response.setId(request->getId());
        response.setChecksum(checksum(request->getPayload()));
      });
    }
  } catch (const capnsplice::Error& error) {
    if (error.peer_gone()) return 0;  // the host is done with us (or died)
    std::fprintf(stderr, "plugin %s: %s\n", argc > 1 ? argv[1] : "?", error.what());
    return 1;
  }
}
