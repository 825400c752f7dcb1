# Messages of examples/parent_child: the parent asks, the child answers.
@0xf6bd8e1de3591ef0;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("example");

struct Task {
  id @0 :UInt32;
  text @1 :Text;
}

struct Answer {
  id @0 :UInt32;
  words @1 :UInt32;
  shouted @2 :Text;
}
