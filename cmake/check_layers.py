#!/usr/bin/env python3
"""Checks that every #include in the source tree points down the layers.

usage: check_layers.py ROOT      check the tree at ROOT
       check_layers.py --self-test  check that an upward include is caught

A quoted include "FOLDER/file.h" names the layer FOLDER ("cvmstate/..." is
the installed C API in include/, "cvmstate/schema/..." the generated
FlatBuffers code of schema/); a bare "file.h" must sit beside the file that
includes it. Each layer may include only the layers listed for it below, and
only its own external libraries. tests/ may include anything. Prints one line
per violation and exits 1 if there is any.
"""
import os
import re
import sys
import tempfile

# Layer -> the layers it may include (below it). Order is lowest first.
LAYERS = {
    "include": [],
    "tracker": [],
    "codec": ["tracker"],
    "schema": [],
    "sim": ["tracker"],
    "text": ["tracker"],
    "store": ["tracker", "codec", "schema"],
    "migration": ["tracker", "codec", "schema"],
    "session": ["tracker", "store", "migration"],
    "capi": ["include", "tracker", "codec", "store", "migration", "session"],
    "bench": ["tracker", "sim", "text"],
    "tools": ["tracker", "codec", "sim", "text", "store", "migration", "session", "bench"],
    "examples": ["include"],
}
# External headers (by prefix) that only these layers may include.
EXTERNAL = {
    "rocksdb/": ["store"],
    "zstd.h": ["codec"],
    "openssl/": ["migration"],
    "flatbuffers/": ["store", "migration"],
    "CLI/": ["tools"],
    "roaring": ["bench"],
    "boost/": ["bench"],
    "benchmark/": ["bench"],
    "gtest/": [],
}
SOURCES = (".h", ".hh", ".cc", ".c", ".cpp")
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')


def layer_of_include(name):
    if name.startswith("cvmstate/schema/"):
        return "schema"
    if name.startswith("cvmstate/"):
        return "include"
    return name.split("/", 1)[0] if "/" in name else None


def check(root):
    problems = []
    for layer in LAYERS:
        top = os.path.join(root, layer)
        for dirpath, _, files in os.walk(top):
            for f in sorted(files):
                if not f.endswith(SOURCES):
                    continue
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, root)
                with open(path, errors="replace") as fh:
                    for n, line in enumerate(fh, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        quoted, name = m.group(1) == '"', m.group(2)
                        if quoted:
                            target = layer_of_include(name)
                            if target is None:
                                if not os.path.exists(os.path.join(dirpath, name)):
                                    problems.append('%s:%d: "%s" is neither beside it nor LAYER/FILE' % (rel, n, name))
                            elif target not in LAYERS:
                                problems.append('%s:%d: "%s" names no layer' % (rel, n, name))
                            elif target != layer and target not in LAYERS[layer]:
                                problems.append('%s:%d: layer %s includes "%s" from layer %s, which is not below it'
                                                % (rel, n, layer, name, target))
                        else:
                            for prefix, allowed in EXTERNAL.items():
                                if name.startswith(prefix) and layer not in allowed:
                                    problems.append("%s:%d: layer %s includes <%s>, which only %s may use"
                                                    % (rel, n, layer, name, ", ".join(allowed) or "tests"))
    return problems


def self_test():
    with tempfile.TemporaryDirectory() as d:
        def write(rel, text):
            os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
            with open(os.path.join(d, rel), "w") as fh:
                fh.write(text)
        write("tracker/a.h", "#include <vector>\n")
        write("store/b.h", '#include "tracker/a.h"\n#include <rocksdb/db.h>\n')
        if check(d):
            print("self-test: a clean tree was reported:", check(d))
            return 1
        write("tracker/c.cc", '#include "store/b.h"\n')
        write("migration/d.cc", "#include <rocksdb/db.h>\n")
        write("codec/e.cc", '#include "missing.h"\n')
        got = check(d)
        if len(got) != 3:
            print("self-test: want 3 violations, got:", got)
            return 1
    print("self-test: upward, external and unresolved includes are caught")
    return 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    problems = check(sys.argv[1])
    for p in problems:
        print(p)
    print("layering: %d violation(s)" % len(problems) if problems else "layering: every include points down")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
