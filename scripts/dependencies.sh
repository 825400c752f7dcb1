# Sourced by the other scripts: installs the Debian packages capnsplice needs, if missing.
# usage: capnsplice_install_packages PACKAGE...
capnsplice_install_packages() {
  local missing=()
  local package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "capnsplice: installing ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# What building and testing capnsplice needs.
CAPNSPLICE_BUILD_PACKAGES=(g++ cmake make capnproto libcapnp-dev libboost-dev catch2 libzmq3-dev
                           gnuplot-nox)

# What the hardening checks need besides (scripts/fuzz, scripts/tidy, the sanitizer
# presets of CMakePresets.json): clang with its sanitizer and libFuzzer runtimes.
CAPNSPLICE_HARDENING_PACKAGES=(clang-14 clang-tidy-14 libclang-rt-14-dev)
