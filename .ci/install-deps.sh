#!/usr/bin/env bash
# Installs the Debian 12 packages cvmstate needs to build and test.
# Idempotent: does nothing when everything is already installed.
set -euo pipefail
packages=(
  build-essential cmake ninja-build python3 pkg-config
  libcli11-dev libgtest-dev libbenchmark-dev
  librocksdb-dev libzstd-dev libflatbuffers-dev flatbuffers-compiler flatbuffers-compiler-dev
  libroaring-dev libboost-dev
  libssl-dev librsvg2-bin iproute2 clang libclang-rt-14-dev
  rustc cargo
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "installing: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
