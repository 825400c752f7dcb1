# Messages of examples/kj_loop: lines that each side sends and the other echoes back.
@0xf5f28bf3e4a3daf7;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("example");

struct Line {
  seq @0 :UInt32;
  text @1 :Text;
  echo @2 :Bool;  # true: the answer to the other side's line, shouted
}
