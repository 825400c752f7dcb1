# Schemas used only by the tests.
@0xe3b1c7d2a9f04b65;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("capnsplice::test");

# A payload with a checksum the receiver recomputes.
struct Blob {
  seq @0 :UInt64;
  checksum @1 :UInt64;
  data @2 :Data;
  parts @3 :List(Data);
}

# The verdict a child process sends back to the test.
struct Report {
  messages @0 :UInt64;
  bytes @1 :UInt64;
  mismatches @2 :UInt64;
  outOfOrder @3 :UInt64;
  frameErrors @4 :UInt64;  # the stream itself was corrupt: reading stopped
  signals @5 :UInt64;      # fault tests: signals the reporting process took meanwhile
}

struct Empty {}

# What a spawned test peer found in its own process (process tests).
struct Inventory {
  openFds @0 :List(Int32);        # /proc/self/fd before the channel was opened
  variable @1 :Text;              # CAPNSPLICE_CHANNEL as inherited
  variableAfterOpen @2 :Bool;     # still set after child_channel()
  cloexecAfterOpen @3 :Bool;      # both channel descriptors close-on-exec after child_channel()
  nonblockingAtStart @4 :Bool;    # an inherited channel descriptor had O_NONBLOCK
  extra @5 :Text;                 # CAPNSPLICE_TEST_EXTRA, to check added environment
  contents @6 :List(Text);        # the first bytes of each descriptor named on the command line
  parentDeathSignal @7 :Int32;    # prctl(PR_GET_PDEATHSIG)
}

# A struct laid out as capnsplice's SharedMessage descriptor (3 data words, 1 pointer).
# With `first` set to SharedMessage.expectedMagic, a one-segment message of it has the
# shape a capnsplice receiver once took for a shared-memory descriptor.
struct Lookalike {
  first @0 :UInt64;
  second @1 :UInt64;
  third @2 :UInt64;
  payload @3 :Data;
}
