// Catching the capnsplice::Error an operation is expected to throw.
#pragma once

#include <catch2/catch.hpp>
#include <stdexcept>

#include "capnsplice/error.h"

namespace capnsplice::testing {

/// The capnsplice::Error `operation` throws; fails the test when it throws none.
template <typename Operation>
Error error_from(Operation&& operation) {
  try {
    operation();
  } catch (const Error& error) {
    return error;
  }
  FAIL("no capnsplice::Error was thrown");
  throw std::logic_error("unreachable");
}

}  // namespace capnsplice::testing
