#!/usr/bin/env bash
# Installs capnsplice into a scratch prefix, decodes the installed tool's output with the
# installed demo schema, then configures and builds a project outside the tree that uses
# find_package(capnsplice), and runs it.
# usage: install_consumer_test.sh SOURCE_DIR WORK_DIR
set -euo pipefail
source_dir=$1
work=$2
cmake=${CMAKE:-cmake}
rm -rf "$work"
mkdir -p "$work"
"$cmake" -S "$source_dir" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DCAPNSPLICE_BUILD_TESTS=OFF -DCAPNSPLICE_BUILD_EXAMPLES=OFF -DCAPNSPLICE_BUILD_BENCH=OFF \
  -DCMAKE_INSTALL_PREFIX="$work/prefix" > "$work/configure.log"
"$cmake" --build "$work/build" -j2 > "$work/build.log"
"$cmake" --install "$work/build" > "$work/install.log"
test -x "$work/prefix/bin/capnsplice-pipe"
# The installed tool's stream decodes with the installed demo schema.
decoded=$("$work/prefix/bin/capnsplice-pipe" produce --count 2 --size 16 \
  | capnp decode "$work/prefix/share/capnsplice/demo.capnp" Chunk)
echo "$decoded"
grep -q 'seq = 1,' <<<"$decoded"
"$cmake" -S "$source_dir/tests/consumer" -B "$work/consumer" \
  -DCMAKE_PREFIX_PATH="$work/prefix" > "$work/consumer-configure.log"
"$cmake" --build "$work/consumer" > "$work/consumer-build.log"
output=$("$work/consumer/consumer")
echo "$output"
test "$output" = "consumer received 42"
