#!/bin/sh
# Installs the build tree into a temporary prefix, then builds a consumer
# with find_package (shared and static) and with pkg-config, and runs them.
set -eu
build="$1"
src="$2"
libdir="$3"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" > /dev/null
test -x "$tmp/prefix/bin/cvmstate"
# Only the C API is exported from the shared library.
# (the version node CVMSTATE_0 is an absolute symbol, not code)
if nm -D --defined-only "$tmp/prefix/$libdir/libcvmstate.so" | awk '$2 != "A" {print $3}' | grep -v '^cvmstate_' | grep -q .; then
  echo "libcvmstate.so exports more than the C API:"; nm -D --defined-only "$tmp/prefix/$libdir/libcvmstate.so" | grep -v ' cvmstate_' | head
  exit 1
fi
objdump -p "$tmp/prefix/$libdir/libcvmstate.so" | grep -q 'SONAME *libcvmstate.so.0'
cmake -S "$src/consumer" -B "$tmp/cmake-build" -DCMAKE_PREFIX_PATH="$tmp/prefix" > /dev/null
cmake --build "$tmp/cmake-build" > /dev/null
LD_LIBRARY_PATH="$tmp/prefix/$libdir" "$tmp/cmake-build/consumer"
"$tmp/cmake-build/consumer_static"
PKG_CONFIG_PATH="$tmp/prefix/$libdir/pkgconfig" pkg-config --exists cvmstate
cc -std=c11 "$src/consumer/main.c" -o "$tmp/pc-consumer" \
  $(PKG_CONFIG_PATH="$tmp/prefix/$libdir/pkgconfig" pkg-config --cflags --libs cvmstate) \
  -Wl,-rpath,"$tmp/prefix/$libdir"
"$tmp/pc-consumer"
# The static library through pkg-config --static (Libs.private), C only,
# with no libcvmstate.so to fall back on.
pc_static_libs=$(PKG_CONFIG_PATH="$tmp/prefix/$libdir/pkgconfig" pkg-config --static --libs-only-l cvmstate | sed 's/-lcvmstate\( \|$\)//')
cc -std=c11 "$src/consumer/main.c" -o "$tmp/pc-consumer-static" \
  $(PKG_CONFIG_PATH="$tmp/prefix/$libdir/pkgconfig" pkg-config --cflags cvmstate) \
  "$tmp/prefix/$libdir/libcvmstate.a" $pc_static_libs
if objdump -p "$tmp/pc-consumer-static" | grep -q 'NEEDED *libcvmstate'; then
  echo "the pkg-config static consumer links libcvmstate.so"; exit 1
fi
"$tmp/pc-consumer-static"
echo "package: C-only find_package (shared, static) and pkg-config (shared, static) consumers pass"
