// examples/plugin_host: one thread serves four plugin processes through a Poller.
//
// The host starts four instances of one plugin executable, keeps a few requests in
// flight to each, and matches each response to its request by id. Plugin 2 crashes on
// purpose halfway through; the host notices, reaps it and keeps serving the others.
// It exits 0 once the other three have answered everything.
#include <capnsplice/capnsplice.h>
#include <capnsplice/handshake.h>
#include <capnsplice/poller.h>
#include <capnsplice/process.h>

#include <cstdio>
#include <deque>
#include <filesystem>
#include <map>
#include <string>

#include "plugin.capnp.h"

namespace {

constexpr int kPlugins = 4;
constexpr int kRequestsEach = 20;
constexpr int kInFlight = 3;
constexpr int kCrashing = 2;  // this one is told to crash after 5 answers

struct Plugin {
  capnsplice::Child child;
  std::map<std::uint64_t, std::uint64_t> in_flight;  // request id -> number asked about
  int sent = 0;
  int answered = 0;
  bool gone = false;
};

std::uint64_t next_request_id = 1;

void send_request(Plugin& plugin) {
  const std::uint64_t id = next_request_id++;
  const std::uint64_t number = 1000 + id * 7;
  plugin.child.channel.send_struct<example::Request>([&](example::Request::Builder request) {
    request.setId(id);
    request.setNumber(number);
  });
  plugin.in_flight[id] = number;
  ++plugin.sent;
}

Plugin start_plugin(int index) {
  const auto program =
      std::filesystem::read_symlink("/proc/self/exe").parent_path() / "plugin_host_plugin";
  capnsplice::SpawnOptions options{
      .program = program.string(),
      .arguments = {std::to_string(index)},
      .channel = capnsplice::ChannelOptions().with_name("plugin-" + std::to_string(index)),
  };
  if (index == kCrashing) options.arguments.insert(options.arguments.end(), {"--crash-after", "5"});
  Plugin plugin{capnsplice::spawn(options)};
  // Both sides check they speak the same application before any work is sent.
  capnsplice::exchange_hello(plugin.child.channel,
                             {.application = "collatz", .application_version = 1});
  return plugin;
}

/// Takes every response waiting on the plugin's channel; returns true when it is done.
bool take_responses(Plugin& plugin) {
  while (auto message = plugin.child.channel.try_receive()) {
    auto response = message->root<example::Response>();
    if (plugin.in_flight.erase(response.getId()) == 0) {
      throw std::runtime_error("response to unknown request " + std::to_string(response.getId()));
    }
    if (++plugin.answered == kRequestsEach) return true;
    if (plugin.sent < kRequestsEach) send_request(plugin);
  }
  return false;
}

}  // namespace

int main() {
  try {
    std::deque<Plugin> plugins;  // a deque: the poller holds pointers to the channels
    capnsplice::Poller poller;
    for (int i = 0; i < kPlugins; ++i) {
      Plugin& plugin = plugins.emplace_back(start_plugin(i));
      poller.add(plugin.child.channel, static_cast<std::uint64_t>(i));
      for (int k = 0; k < kInFlight; ++k) send_request(plugin);
    }

    while (poller.size() > 0) {
      auto events = poller.wait(capnsplice::Deadline::after(std::chrono::seconds(10)));
      if (events.empty()) throw std::runtime_error("no plugin answered for 10 s");
      for (const capnsplice::PollEvent& event : events) {
        Plugin& plugin = plugins[event.key];
        // A plugin that exits between messages ends its stream: at_end(). One that dies
        // in the middle of a message is TruncatedMessage, an exception.
        std::string why_gone;
        try {
          if (take_responses(plugin)) {
            poller.remove(plugin.child.channel);
            plugin.child.channel.close_sending();  // the plugin sees PeerClosed and exits
            continue;
          }
          if (!plugin.child.channel.at_end()) continue;
          why_gone = "end of stream";
        } catch (const capnsplice::Error& error) {
          if (!error.peer_gone()) throw;
          why_gone = error.what();
        }
        poller.remove(plugin.child.channel);
        plugin.gone = true;
        std::printf("host: noticed plugin %llu is gone (%s) after %d of %d answers: %s\n",
                    static_cast<unsigned long long>(event.key),
                    plugin.child.process.wait().describe().c_str(), plugin.answered,
                    kRequestsEach, why_gone.c_str());
      }
    }

    bool as_expected = true;
    for (int i = 0; i < kPlugins; ++i) {
      Plugin& plugin = plugins[static_cast<std::size_t>(i)];
      if (plugin.gone) {
        as_expected = as_expected && i == kCrashing;
        continue;
      }
      const capnsplice::ExitStatus status = plugin.child.process.wait();
      std::printf("host: plugin %d answered %d requests and %s\n", i, plugin.answered,
                  status.describe().c_str());
      as_expected =
          as_expected && i != kCrashing && status.success() && plugin.answered == kRequestsEach;
    }
    std::printf("host: %s\n", as_expected ? "done" : "something unexpected happened");
    return as_expected ? 0 : 1;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "host: %s\n", error.what());
    return 1;
  }
}
