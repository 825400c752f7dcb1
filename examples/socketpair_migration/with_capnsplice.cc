// examples/socketpair_migration, after: the same program with capnsplice.
//
// What changed: fork_with_channel() replaces socketpair() + fork() + close(); messages
// are built in the channel's pool (new_message) and sent with send(), received with
// receive_as() — no copy after the pipe; the child handle reaps the child. What did not:
// the schema, the conversation, the wire format (standard Cap'n Proto framing).
#include <capnsplice/capnsplice.h>
#include <capnsplice/process.h>

#include "conversation.h"

int main() {
  capnsplice::Child child = capnsplice::fork_with_channel([](capnsplice::Channel& parent) {
    for (unsigned i = 0; i < kGreetings; ++i) {
      auto request = parent.receive_as<example::Greeting>();
      capnsplice::OutgoingMessage reply = parent.new_message();
      fill_reply(reply.init_root<example::Reply>(), request.root());
      parent.send(std::move(reply));
    }
    return 0;
  });
  for (unsigned i = 0; i < kGreetings; ++i) {
    capnsplice::OutgoingMessage greeting = child.channel.new_message();
    fill_greeting(greeting.init_root<example::Greeting>(), i);
    child.channel.send(std::move(greeting));
    auto reply = child.channel.receive_as<example::Reply>();
    print_reply(reply.root());
  }
  child.channel.close_sending();
  return child.process.wait().success() ? 0 : 1;
}
