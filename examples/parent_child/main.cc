// examples/parent_child: a parent spawns a child with a channel; typed messages flow
// both ways.
//
//   $ ./parent_child
//   parent: task 0 "the quick brown fox" -> 4 words, "THE QUICK BROWN FOX"
//   ...
//   parent: child exited with code 0
//
// The same executable is the child: the parent starts it again with "--child".
#include <capnsplice/capnsplice.h>
#include <capnsplice/process.h>

#include <cctype>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>

#include "parent_child.capnp.h"

namespace {

int run_child() {
  // One call: the channel the parent made, from the environment.
  capnsplice::Channel parent = capnsplice::child_channel();
  try {
    for (;;) {
      auto task = parent.receive_as<example::Task>();
      std::string text = task->getText();
      std::istringstream words(text);
      unsigned count = 0;
      for (std::string word; words >> word;) ++count;
      for (char& c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      parent.send_struct<example::Answer>([&](example::Answer::Builder answer) {
        answer.setId(task->getId());
        answer.setWords(count);
        answer.setShouted(text);
      });
    }
  } catch (const capnsplice::Error& error) {
    if (!error.peer_gone()) throw;  // the parent closed its end: the work is done
  }
  return 0;
}

int run_parent() {
  capnsplice::Child child = capnsplice::spawn({
      .program = "/proc/self/exe",
      .arguments = {"--child"},
      .channel = capnsplice::ChannelOptions().with_name("child"),
  });
  const char* texts[] = {"the quick brown fox", "jumps over", "the lazy dog"};
  for (std::uint32_t id = 0; id < 3; ++id) {
    child.channel.send_struct<example::Task>([&](example::Task::Builder task) {
      task.setId(id);
      task.setText(texts[id]);
    });
  }
  for (int received = 0; received < 3; ++received) {
    auto answer = child.channel.receive_as<example::Answer>(
        capnsplice::Deadline::after(std::chrono::seconds(10)));
    std::printf("parent: task %u \"%s\" -> %u words, \"%s\"\n", answer->getId(),
                texts[answer->getId()], answer->getWords(), answer->getShouted().cStr());
  }
  child.channel.close_sending();  // the child sees PeerClosed and exits
  capnsplice::ExitStatus status = child.process.wait();
  std::printf("parent: child %s\n", status.describe().c_str());
  return status.success() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return argc > 1 && std::strcmp(argv[1], "--child") == 0 ? run_child() : run_parent();
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s: %s\n", argc > 1 ? "child" : "parent", error.what());
    return 1;
  }
}
