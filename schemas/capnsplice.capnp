# capnsplice's own messages: what two ends say to each other before any application data.
#
# Compiled into the library; installed so that a peer written without capnsplice (plain
# Cap'n Proto over the same pipes) can speak the hello too.
@0xc21ee19e79e148a9;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("capnsplice::wire");

# The first message each end sends on a channel that starts with a hello (every
# rendezvous connection; spawned and forked children when both sides ask for it).
# Both ends send theirs at once, then read the other's, so neither waits on the other.
struct Hello {
  const expectedMagic :UInt64 = 0x636c70736e706163;  # "capnsplc" as a little-endian word

  magic @0 :UInt64;
  # Always Hello.expectedMagic: a first message without it is not a capnsplice hello.

  protocolVersion @1 :UInt32;
  # The capnsplice protocol this end speaks; ends with different versions do not talk.

  maxMessageBytes @2 :UInt64;
  # The largest message this end accepts (its ReceiveLimits.max_message_bytes).

  maxSegments @3 :UInt32;
  # The most segments per message this end accepts.

  pid @4 :Int32;
  # The sender's process id, for logs.

  application @5 :Text;
  # The application protocol spoken on top ("" when the end does not say).

  applicationVersion @6 :UInt32;
  # Its version; compared only when both ends name the same application.
}

# On the pipe in place of a large message that lives in the sender's shared-memory
# arena (see src/shared_arena.h), as segment 1 of a frame whose segment 0 is empty: that
# framing, which no Cap'n Proto message has, marks it (include/capnsplice/frame.h), never
# its content. Only sent to a peer that announced it reads these on the channel's
# control link, and only after the arena it names; the receiver checks every field
# before reading anything.
struct SharedMessage {
  const expectedMagic :UInt64 = 0x6873636c70736e63;  # "cnsplcsh" as a little-endian word

  magic @0 :UInt64;
  # Always SharedMessage.expectedMagic.

  arena @1 :UInt32;
  # Which of the sender's arenas (announced on the control link, with its memfd).

  id @2 :UInt64;
  # The sender's id for this message; the receiver hands it back when it is done.

  segments @3 :List(SharedSegment);
  # The message's segments, in order, as places in the arena.
}

struct SharedSegment {
  offset @0 :UInt64;  # bytes from the start of the arena; a multiple of 8
  words @1 :UInt64;   # length in 8-byte words
}

# In a message that carries descriptors (SCM_RIGHTS), segment 1 of its frame: the frame
# is marked (segment 0 empty, include/capnsplice/frame.h), this is segment 1, and the
# message's own segments follow from segment 2. The descriptors themselves travel on the
# channel's control link in a Descriptors record with the same sequence number, sent
# before the frame. Only sent to a peer that announced on the link that it takes
# descriptors (and how many per message).
struct Attachment {
  const expectedMagic :UInt64 = 0x7364666c70736e63;  # "cnsplfds" as a little-endian word
  magic @0 :UInt64;
  # Always Attachment.expectedMagic.
  sequence @1 :UInt64;
  # Numbers the sender's messages with descriptors, from 1; names the record to take.
  count @2 :UInt32;
  # How many descriptors the record carries.
}
