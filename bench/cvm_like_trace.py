#!/usr/bin/env python3
"""Writes a CVM-like trace to stdout: states `cvmstate gen` does not make,
for the shared-run scan figures in README (held out from gen's profiles).

One block, private after boot, converted by OPS conversions at random
places: discarded holes of up to 4 MiB (balloon, unaccepted memory),
private re-accepts of up to 2 MiB, and shared DMA buffers of 4 KiB to
1 MiB (bounce buffers, virtqueues) that only the three quarters of the
256 MiB chunks holding device memory receive. SHARED is the fraction of
conversions that share (default 0.30). Same arguments, same trace.

  bench/cvm_like_trace.py SIZE_GIB OPS SEED [SHARED] > cvm.trace

The README's traces: 1024 135000 101; 1024 150000 102 0.45;
512 100000 103 0.4; 256 60000 104 0.35; 2048 250000 105 0.3.
"""
import random
import sys


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit("usage: cvm_like_trace.py SIZE_GIB OPS SEED [SHARED]")
    try:
        size_gib, ops, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
        shared = float(sys.argv[4]) if len(sys.argv) == 5 else 0.30
    except ValueError as e:
        sys.exit(f"cvm_like_trace.py: {e}")
    if size_gib < 1 or ops < 0 or not 0 <= shared <= 0.75:
        sys.exit("cvm_like_trace.py: SIZE_GIB >= 1, OPS >= 0, 0 <= SHARED <= 0.75")
    rng = random.Random(seed)
    page = 4096
    chunk = 1 << 16  # pages: 256 MiB, cvmstate's chunk
    chunks = (size_gib << 18) // chunk
    with_devices = [c for c in range(chunks) if rng.random() < 0.75] or [0]
    out = sys.stdout
    out.write(f"block ram {size_gib}G initial=private\n")
    for _ in range(ops):
        r = rng.random()
        if r < shared:
            c, state, n = rng.choice(with_devices), "shared", int(2 ** rng.uniform(0, 8))
        elif r < 0.75:
            c, state, n = rng.randrange(chunks), "discarded", int(2 ** rng.uniform(0, 10))
        else:
            c, state, n = rng.randrange(chunks), "private", int(2 ** rng.uniform(0, 9))
        offset = c * chunk + rng.randrange(chunk - n)
        out.write(f"{state} ram {offset * page:#x} {n * page:#x}\n")


if __name__ == "__main__":
    main()
