// A private temporary directory for a test's socket files, removed with everything in it.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace capnsplice::testing {

/// A directory others may traverse (so only a socket file's mode stops them).
struct TempDir {
  std::string path;
  TempDir() {
    char name[] = "/tmp/capnsplice-rendezvous-XXXXXX";
    if (::mkdtemp(name) == nullptr) throw std::runtime_error("mkdtemp failed");
    path = name;
    ::chmod(name, 0755);
  }
  ~TempDir() { static_cast<void>(std::system(("rm -rf " + path).c_str())); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string socket() const { return path + "/host.sock"; }
};

}  // namespace capnsplice::testing
