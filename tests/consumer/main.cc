// Uses the installed headers and library: one message through a channel.
#include <capnp/any.h>
#include <capnsplice/capnsplice.h>

#include <iostream>

int main() {
  auto [near, far] = capnsplice::Channel::pair();
  auto message = near.new_message();
  message.init_root<capnp::AnyPointer>().setAs<capnp::Text>("42");
  near.send(std::move(message));
  auto received = far.receive();
  std::cout << "consumer received "
            << received.root<capnp::AnyPointer>().getAs<capnp::Text>().cStr() << "\n";
}
