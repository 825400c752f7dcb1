// The shared-memory path of a channel (internal): large messages travel as a small
// descriptor on the pipe while their segments stay in the sender's arena.
//
//   sender                                            receiver
//   builder asks for >= threshold bytes
//     -> SharedSender::allocate (arena)
//   send: segments not in the arena are copied in;
//     blocks held under a message id;
//     pipe <- SharedMessage{arena, id, segments} -->  SharedReceiver::open(frame)
//                                                       checks every field, maps the
//                                                       arena read-only (once), builds a
//                                                       reader over the arena segments
//   SendArena::release(id) <-- the arena's release    <-- ReceivedMessage dropped
//     (taken in by the next     ring (release_ring.h),
//     allocation)               or a Release record on
//                               the control link
//
// Arenas are replaced, not kept for ever: pages an arena once used stay resident until
// it is destroyed (shared_arena.h), so once nothing in it is held or being built and its
// footprint passed SenderOptions::arena_keep_bytes (SendArena::should_retire_locked), the
// sender starts the next one
// (ids strictly increase) and drops the old. The receiver maps each new arena when a
// descriptor first names it and lets go of the older one when it next has nothing to
// read (freeing the pages is slow); messages still reading it keep it mapped until they
// are dropped.
//
// Every segment of a shared message lives in the arena, none in the receiver's own
// buffers: reads that a concurrent writer could redirect stay inside the arena's guard
// zones (shared_arena.h).
#pragma once

//
// The parts: shared_descriptor.h (the descriptor), shared_sender.h, shared_receiver.h,
// shared_arena.h (the arenas), release_ring.h (releases), control_link.h (arenas,
// retirements, and releases the ring cannot take).
#pragma once

#include "shared_descriptor.h"
#include "shared_receiver.h"
#include "shared_sender.h"
