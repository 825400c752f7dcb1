# Messages of examples/plugin_host: the host asks for Collatz step counts; plugins answer.
@0xaa653ca15fd9600e;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("example");

struct Request {
  id @0 :UInt64;       # chosen by the host; the response carries it back
  number @1 :UInt64;
}

struct Response {
  id @0 :UInt64;       # the request answered
  steps @1 :UInt32;    # Collatz steps from `number` down to 1
}
