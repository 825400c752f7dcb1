# Messages of examples/plugin_host: the host sends payloads; a plugin answers with their
# checksum, which the host checks.
@0xaa653ca15fd9600e;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("example");

struct Request {
  id @0 :UInt64;        # chosen by the host; the response carries it back
  payload @1 :Data;     # 512 B or 64 KiB
}

struct Response {
  id @0 :UInt64;        # the request answered
  checksum @1 :UInt64;  # the sum of the payload's bytes
}
