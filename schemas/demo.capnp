# Schema of the demo, the command-line tool and the benchmark.
@0xd1c5a0e6b2f4a813;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("capnsplice::demo");

# One piece of a stream: a sequence number and a payload.
struct Chunk {
  seq @0 :UInt64;
  payload @1 :Data;
}

# A large message: Cap'n Proto caps one Data value at 2^29 - 1 bytes, so a message of a
# GiB or more holds its bytes in several parts.
struct Bulk {
  seq @0 :UInt64;
  parts @1 :List(Data);
}
