#!/bin/sh
# Installs the build tree into a temporary prefix, then runs the Rust
# crate's tests and example against it: once found through CVMSTATE_PREFIX,
# once through PKG_CONFIG_PATH. Offline, no crates.
set -eu
build="$1"
crate="$2"
libdir="$3"
cargo="$4"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" > /dev/null
# The rustc beside this cargo (Debian's pair), not another one on PATH.
rustc="$(dirname "$cargo")/rustc"
[ -x "$rustc" ] || rustc=rustc
export RUSTC="$rustc"
# Kept in the build tree between runs; the crate's own directory stays clean.
export CARGO_TARGET_DIR="$build/rust-target"
echo "rust_crate: $("$cargo" --version), $("$rustc" --version)"
cd "$crate"
CVMSTATE_PREFIX="$tmp/prefix" "$cargo" test --offline --quiet
CVMSTATE_PREFIX="$tmp/prefix" "$cargo" run --offline --quiet --example vmm_example
# The same crate found through pkg-config (the .pc file of the install).
env -u CVMSTATE_PREFIX PKG_CONFIG_PATH="$tmp/prefix/$libdir/pkgconfig" "$cargo" build --offline --quiet --example vmm_example
echo "rust_crate: tests and example pass against the installed library"
