// Setting a signal's disposition for the length of a scope, in tests.
#pragma once

#include <catch2/catch.hpp>

#include <csignal>

namespace capnsplice::testing {

/// Sets `signal`'s handler (SIG_IGN, SIG_DFL or a function) and restores the previous
/// disposition when it goes.
class SignalDisposition {
 public:
  SignalDisposition(int signal, void (*handler)(int)) : signal_(signal) {
    struct sigaction action {};
    action.sa_handler = handler;
    REQUIRE(::sigaction(signal, &action, &previous_) == 0);
  }
  ~SignalDisposition() { ::sigaction(signal_, &previous_, nullptr); }
  SignalDisposition(const SignalDisposition&) = delete;
  SignalDisposition& operator=(const SignalDisposition&) = delete;

 private:
  int signal_;
  struct sigaction previous_ {};
};

}  // namespace capnsplice::testing
