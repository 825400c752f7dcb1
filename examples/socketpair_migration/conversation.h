// examples/socketpair_migration: what the parent and the child say to each other — the
// part of the program that stays the same when the transport changes. Compare
// with_socketpair.cc and with_capnsplice.cc (`diff -u` them) to see what does change.
#pragma once

#include <cstdio>
#include <string>

#include "greeting.capnp.h"

inline constexpr unsigned kGreetings = 3;

/// The parent's i-th greeting.
inline void fill_greeting(example::Greeting::Builder greeting, unsigned i) {
  static const char* const names[kGreetings] = {"Ada", "Grace", "Barbara"};
  greeting.setName(names[i]);
  greeting.setNumber(i + 1);
}

/// The child's answer to a greeting.
inline void fill_reply(example::Reply::Builder reply, example::Greeting::Reader greeting) {
  reply.setText("hello " + std::string(greeting.getName().cStr()) + ", you are number " +
                std::to_string(greeting.getNumber()));
}

inline void print_reply(example::Reply::Reader reply) {
  std::printf("%s\n", reply.getText().cStr());
}
