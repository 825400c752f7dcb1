// examples/kj_loop: a parent on KJ's event loop talks to a forked child through
// capnsplice::KjChannel (capnsplice/kj.h). Every send and receive of the parent is a
// kj::Promise: the loop never blocks on the child, and could serve sockets, timers and
// other children at the same time. Lines go both ways and each side echoes the other's.
//
//   $ ./kj_loop
//   parent: sent line 0 "hello from the loop"
//   parent: child says line 100 "hello from the child", echoing it
//   parent: child echoed line 0 "HELLO FROM THE LOOP"
//   ...
//   parent: closed its sending end
//   parent: child closed its end (end of stream)
//   parent: child exited with code 0
//   parent: done
//
// The child uses the plain blocking API: either side can use either.
#include <capnsplice/kj.h>
#include <capnsplice/process.h>
#include <kj/async-io.h>
#include <kj/timer.h>

#include <cctype>
#include <cstdio>
#include <string>

#include "echo.capnp.h"

namespace {

constexpr unsigned kParentLines = 3;
constexpr unsigned kChildLines = 2;
const char* const kParentTexts[kParentLines] = {"hello from the loop", "promises all the way",
                                                "nothing blocks"};
const char* const kChildTexts[kChildLines] = {"hello from the child", "i block, and that is fine"};

std::string shout(std::string text) {
  for (char& c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return text;
}

// The child: sends its own lines, echoes the parent's, checks the parent's echoes of its
// own, and exits when the parent closes its end.
int run_child(capnsplice::Channel& parent) {
  for (unsigned i = 0; i < kChildLines; ++i) {
    parent.send_struct<example::Line>([&](example::Line::Builder line) {
      line.setSeq(100 + i);
      line.setText(kChildTexts[i]);
    });
  }
  unsigned echoes_ok = 0;
  try {
    for (;;) {
      auto line = parent.receive_as<example::Line>();
      if (line->getEcho()) {
        const unsigned index = line->getSeq() - 100;
        echoes_ok += index < kChildLines && line->getText().cStr() == shout(kChildTexts[index])
                         ? 1
                         : 0;
        continue;
      }
      std::string text = shout(line->getText().cStr());
      parent.send_struct<example::Line>([&](example::Line::Builder echo) {
        echo.setSeq(line->getSeq());
        echo.setText(text);
        echo.setEcho(true);
      });
    }
  } catch (const capnsplice::Error& error) {
    if (!error.peer_gone()) throw;  // the parent closed its end: done
  }
  return echoes_ok == kChildLines ? 0 : 1;
}

kj::Promise<void> send_line(capnsplice::KjChannel& channel, std::uint32_t seq, kj::StringPtr text,
                            bool echo) {
  // Deadline::immediate(): building never waits for pool room either.
  auto message = channel.channel().new_message(capnsplice::Deadline::immediate());
  auto line = message.init_root<example::Line>();
  line.setSeq(seq);
  line.setText(text);
  line.setEcho(echo);
  return channel.send(std::move(message));
}

// The parent's side of the conversation, as a chain of promises.
struct Conversation {
  capnsplice::KjChannel& child;
  unsigned echoes = 0;
  unsigned child_lines = 0;
  bool mismatch = false;

  kj::Promise<void> send_lines() {
    auto sends = kj::heapArrayBuilder<kj::Promise<void>>(kParentLines);
    for (std::uint32_t i = 0; i < kParentLines; ++i) {
      // eagerlyEvaluate(): print as each send completes, not when the join does.
      sends.add(send_line(child, i, kParentTexts[i], false)
                    .then([i] { std::printf("parent: sent line %u \"%s\"\n", i, kParentTexts[i]); })
                    .eagerlyEvaluate(nullptr));
    }
    return kj::joinPromises(sends.finish());
  }

  // Receives until every echo and every line of the child came.
  kj::Promise<void> receive_lines() {
    if (echoes == kParentLines && child_lines == kChildLines) return kj::READY_NOW;
    return child.receive_as<example::Line>().then(
        [this](capnsplice::Received<example::Line> line) -> kj::Promise<void> {
          if (line->getEcho()) {
            const std::uint32_t seq = line->getSeq();
            std::printf("parent: child echoed line %u \"%s\"\n", seq, line->getText().cStr());
            mismatch |= seq >= kParentLines || line->getText().cStr() != shout(kParentTexts[seq]);
            ++echoes;
            return receive_lines();
          }
          std::printf("parent: child says line %u \"%s\", echoing it\n", line->getSeq(),
                      line->getText().cStr());
          ++child_lines;
          kj::Promise<void> echoed =
              send_line(child, line->getSeq(), shout(line->getText().cStr()).c_str(), true);
          return echoed.then([this] { return receive_lines(); });
        });
  }
};

int run_parent() {
  // Fork first, then set up the loop: the child needs none of it.
  capnsplice::Child forked = capnsplice::fork_with_channel(
      run_child, capnsplice::ChannelOptions().with_name("child"));
  kj::AsyncIoContext io = kj::setupAsyncIo();
  kj::Timer& timer = io.provider->getTimer();
  int code = 0;
  {
    capnsplice::KjChannel child(io.unixEventPort, std::move(forked.channel));
    Conversation conversation{child};

    auto both = kj::heapArrayBuilder<kj::Promise<void>>(2);
    both.add(conversation.send_lines());
    both.add(conversation.receive_lines());
    timer.timeoutAfter(10 * kj::SECONDS, kj::joinPromises(both.finish())).wait(io.waitScope);

    timer.timeoutAfter(10 * kj::SECONDS, child.close_sending()).wait(io.waitScope);
    std::printf("parent: closed its sending end\n");
    // The child exits on end of stream, which closes its end: our receive says so.
    kj::Promise<bool> ended = child.receive().then(
        [](capnsplice::ReceivedMessage) { return false; },
        [](kj::Exception&& exception) {
          return exception.getType() == kj::Exception::Type::DISCONNECTED;
        });
    if (timer.timeoutAfter(10 * kj::SECONDS, kj::mv(ended)).wait(io.waitScope)) {
      std::printf("parent: child closed its end (end of stream)\n");
    } else {
      std::printf("parent: the child sent more than expected\n");
      code = 1;
    }
    if (conversation.mismatch) {
      std::printf("parent: an echo did not match\n");
      code = 1;
    }
  }
  capnsplice::ExitStatus status = forked.process.wait();
  std::printf("parent: child %s\n", status.describe().c_str());
  if (!status.success()) code = 1;
  if (code == 0) std::printf("parent: done\n");
  return code;
}

}  // namespace

int main() {
  try {
    return run_parent();
  } catch (const kj::Exception& exception) {
    std::fprintf(stderr, "parent: %s\n", exception.getDescription().cStr());
  } catch (const std::exception& error) {
    std::fprintf(stderr, "parent: %s\n", error.what());
  }
  return 1;
}
