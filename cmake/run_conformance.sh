#!/bin/sh
# Runs ../shared/conformance/check against the binary; skips (exit 77) with a
# clear message when shared/ is not beside the repository.
check="$1"
shift
if [ ! -f "$check" ]; then
  echo "SKIP: $check not found; the conformance check needs the shared/ folder beside the repository"
  exit 77
fi
exec python3 "$check" "$@"
