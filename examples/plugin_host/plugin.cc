// examples/plugin_host: the plugin. Started by the host (one executable, several
// instances); answers Requests until the host closes the channel.
//
// usage (by the host): plugin_host_plugin INSTANCE [--crash-after N]
#include <capnsplice/capnsplice.h>
#include <capnsplice/handshake.h>
#include <capnsplice/process.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "plugin.capnp.h"

namespace {

std::uint32_t collatz_steps(std::uint64_t n) {
  std::uint32_t steps = 0;
  for (; n > 1; ++steps) n = n % 2 == 0 ? n / 2 : 3 * n + 1;
  return steps;
}

}  // namespace

int main(int argc, char** argv) {
  const int crash_after =
      argc > 3 && std::strcmp(argv[2], "--crash-after") == 0 ? std::atoi(argv[3]) : -1;
  try {
    capnsplice::Channel host = capnsplice::child_channel();
    capnsplice::exchange_hello(host, {.application = "collatz", .application_version = 1});
    for (int answered = 0;; ++answered) {
      auto request = host.receive_as<example::Request>();
      if (answered == crash_after) {
        // Crash on purpose, mid-conversation: no destructor runs, nothing is flushed,
        // exactly as if the plugin had hit a fatal bug or been killed with kill -9.
        std::raise(SIGKILL);
      }
      host.send_struct<example::Response>([&](example::Response::Builder response) {
        response.setId(request->getId());
        response.setSteps(collatz_steps(request->getNumber()));
      });
    }
  } catch (const capnsplice::Error& error) {
    if (error.peer_gone()) return 0;  // the host is done with us
    std::fprintf(stderr, "plugin %s: %s\n", argc > 1 ? argv[1] : "?", error.what());
    return 1;
  }
}
