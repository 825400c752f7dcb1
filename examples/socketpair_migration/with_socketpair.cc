// examples/socketpair_migration, before: Cap'n Proto over a socketpair and fork().
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conversation.h"

int main() {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return 1;
  const pid_t pid = ::fork();
  if (pid == 0) {  // the child
    ::close(fds[0]);
    for (unsigned i = 0; i < kGreetings; ++i) {
      capnp::StreamFdMessageReader request(fds[1]);
      capnp::MallocMessageBuilder reply;
      fill_reply(reply.initRoot<example::Reply>(), request.getRoot<example::Greeting>());
      capnp::writeMessageToFd(fds[1], reply);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  for (unsigned i = 0; i < kGreetings; ++i) {
    capnp::MallocMessageBuilder greeting;
    fill_greeting(greeting.initRoot<example::Greeting>(), i);
    capnp::writeMessageToFd(fds[0], greeting);
    capnp::StreamFdMessageReader reply(fds[0]);
    print_reply(reply.getRoot<example::Reply>());
  }
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
