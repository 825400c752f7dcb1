# Messages of examples/socketpair_migration.
@0xad2ff987a8444495;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("example");

struct Greeting {
  name @0 :Text;
  number @1 :UInt32;
}

struct Reply {
  text @0 :Text;
}
