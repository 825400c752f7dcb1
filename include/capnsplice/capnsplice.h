// capnsplice/capnsplice.h — everything in one include.
//
//   #include <capnsplice/capnsplice.h>
//
//   auto [parent, child] = capnsplice::Channel::pair();
//   parent.send_struct<Chunk>([](Chunk::Builder chunk) { chunk.setSeq(1); });
//   auto chunk = child.receive_as<Chunk>();
#pragma once

#include "capnsplice/channel.h"
#include "capnsplice/child_process.h"
#include "capnsplice/deadline.h"
#include "capnsplice/error.h"
#include "capnsplice/frame.h"
#include "capnsplice/handshake.h"
#include "capnsplice/options.h"
#include "capnsplice/outgoing_message.h"
#include "capnsplice/poller.h"
#include "capnsplice/process.h"
#include "capnsplice/received_message.h"
#include "capnsplice/receiver.h"
#include "capnsplice/rendezvous.h"
#include "capnsplice/request.h"
#include "capnsplice/sender.h"
#include "capnsplice/unique_fd.h"
