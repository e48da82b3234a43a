#!/usr/bin/env python3
"""Golden conformance corpus of cvmstate (docs/contract.md, SPEC.md sections 2-4).

usage: run_golden.py BINARY [--impl NAME]

Runs `BINARY replay` on every case in this folder and compares stdout, stderr
and the exit status with the files beside each trace:

  NAME.trace                  the input
  NAME.expected               exact stdout of `replay NAME.trace` (exit 0, empty stderr)
  NAME.error                  the 1-based number of the first invalid line: replay exits 1,
                              prints nothing on stdout and exactly one stderr line
                              `NAME.trace:LINE: error: REASON`
  NAME.keep-going.expected    (with .error) stdout of `replay --keep-going` (exit 0)
  NAME.keep-going.errors      (with .error) the line numbers --keep-going reports
  NAME.impls                  (optional) the only implementations the case is for

It also checks --quiet, --keep-going on valid traces, standard input ('-'),
usage errors (exit 2), unreadable traces (exit 1, one stderr line) and, for the
cvmstate implementation, that `replay --db` commits what it lists and that
`dump --format runs` gives the same listing back. Prints one FAIL line per
failed check and ends with `N passed, M failed`; exits 0 only if none failed.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
IMPLS = ("cvmstate", "bitmap", "roaring", "icl")
TIMEOUT = 300


def usage():
    sys.stderr.write(__doc__)
    sys.exit(2)


def parse_args(argv):
    if len(argv) < 1 or argv[0].startswith("-"):
        usage()
    binary, impl, rest = argv[0], None, argv[1:]
    while rest:
        if rest[0] == "--impl" and len(rest) >= 2:
            impl, rest = rest[1], rest[2:]
        elif rest[0].startswith("--impl="):
            impl, rest = rest[0][len("--impl="):], rest[1:]
        else:
            usage()
    if impl is not None and impl not in IMPLS:
        sys.exit("run_golden.py: unknown --impl %r (one of %s)" % (impl, ", ".join(IMPLS)))
    if os.sep in binary or (os.altsep and os.altsep in binary):
        binary = os.path.abspath(binary)
    else:
        binary = shutil.which(binary) or os.path.abspath(binary)
    return binary, impl


def read(path):
    with open(path, "r", encoding="utf-8", newline="") as f:
        return f.read()


def checkpoint_lines(path):
    """Lines of a trace that are a valid `checkpoint` directive."""
    n = 0
    with open(path, "rb") as f:
        for raw in f.read().split(b"\n"):
            if len(raw) > 4096:
                continue
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            toks = [t for t in re.split(rb"[ \t]+", raw.split(b"#", 1)[0]) if t]
            n += toks == [b"checkpoint"]
    return n


def first_difference(got, want):
    g, w = got.split("\n"), want.split("\n")
    for i in range(max(len(g), len(w))):
        a = g[i] if i < len(g) else "<end>"
        b = w[i] if i < len(w) else "<end>"
        if a != b:
            return "first difference at stdout line %d: got %r, want %r" % (i + 1, a[:120], b[:120])
    return "stdout differs (line endings?)"


class Runner:
    def __init__(self, binary, impl):
        self.binary, self.impl = binary, impl
        self.effective_impl = impl or "cvmstate"
        self.passed = self.failed = 0

    def verdict(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print("FAIL", what, flush=True)
        return ok

    def run(self, args, stdin=None):
        try:
            p = subprocess.run([self.binary, *args], cwd=HERE, stdin=stdin, capture_output=True,
                               timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            return None, "", "timed out after %d s" % TIMEOUT
        except OSError as e:
            return None, "", "cannot run %s: %s" % (self.binary, e)
        return (p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace"))

    def replay(self, trace, *flags, stdin=None):
        impl = ["--impl", self.impl] if self.impl else []
        return self.run(["replay", trace, *flags, *impl], stdin=stdin)

    # --- one case --------------------------------------------------------------

    def check_listing(self, what, res, want, want_errors=(), trace="", store=False):
        """Exit 0, stdout == want, stderr: the error lines (and checkpoint lines)."""
        rc, out, err = res
        ok = self.verdict(rc == 0, "%s: exit status %s, want 0 (stderr: %r)" % (what, rc, err.strip()[:200]))
        if ok:
            self.verdict(out == want, "%s: %s" % (what, first_difference(out, want)))
        errors, checkpoints, other = [], [], []
        pat = re.compile(r"^%s:(\d+): error: \S" % re.escape(trace))
        lines = err.split("\n")  # newlines only: a reason may echo a token holding \v, \f or \r
        if lines[-1] == "":
            lines.pop()
        for line in lines:
            m = pat.match(line)
            c = re.match(r"^checkpoint (\d+) committed: (\d+) bytes$", line)
            if m:
                errors.append(int(m.group(1)))
            elif store and c:
                checkpoints.append((int(c.group(1)), int(c.group(2))))
            else:
                other.append(line)
        self.verdict(errors == list(want_errors) and not other,
                     "%s: stderr error lines %s, want %s%s" % (
                         what, errors, list(want_errors), "; unexpected stderr %r" % other[:3] if other else ""))
        return checkpoints

    def check_store(self, what, trace, flags, want, want_errors):
        """replay --db commits at every checkpoint line and at the end; dump gives the listing back."""
        with tempfile.TemporaryDirectory(prefix="cvmstate-golden-") as tmp:
            db = os.path.join(tmp, "db")
            res = self.run(["replay", trace, *flags, "--db", db, "--vm", "golden"])
            got = self.check_listing(what + " --db", res, want, want_errors, trace, store=True)
            n = checkpoint_lines(os.path.join(HERE, trace)) + 1
            self.verdict([c[0] for c in got] == list(range(1, n + 1)) and all(c[1] > 0 for c in got),
                         "%s --db: want stderr 'checkpoint N committed: B bytes' for N = 1..%d, B > 0; got %s"
                         % (what, n, got))
            rc, out, err = self.run(["dump", "--db", db, "--vm", "golden", "--format", "runs"])
            if self.verdict(rc == 0, "%s: dump --format runs after --db: exit status %s (stderr: %r)"
                            % (what, rc, err.strip()[:200])):
                self.verdict(out == want, "%s: dump --format runs after --db: %s" % (what, first_difference(out, want)))

    def check_error(self, what, res, trace, line):
        rc, out, err = res
        self.verdict(rc == 1, "%s: exit status %s, want 1" % (what, rc))
        self.verdict(out == "", "%s: stdout must be empty, got %r" % (what, out[:120]))
        want = re.compile(r"%s:%d: error: \S[^\n]*\n?" % (re.escape(trace), line))
        self.verdict(want.fullmatch(err) is not None,
                     "%s: stderr must be exactly one line '%s:%d: error: REASON', got %r"
                     % (what, trace, line, err[:240]))

    def case(self, name):
        trace = name + ".trace"
        p = lambda ext: os.path.join(HERE, name + ext)
        if os.path.exists(p(".impls")):
            impls = read(p(".impls")).split()
            if self.effective_impl not in impls:
                return False
        store = self.effective_impl == "cvmstate"
        if os.path.exists(p(".expected")):
            want = read(p(".expected"))
            self.check_listing(name, self.replay(trace), want, (), trace)
            self.check_listing(name + " --keep-going", self.replay(trace, "--keep-going"), want, (), trace)
            rc, out, err = self.replay(trace, "--quiet")
            self.verdict(rc == 0 and out == "" and err == "",
                         "%s --quiet: want exit 0 and nothing printed, got %s, %r, %r" % (name, rc, out[:80], err[:200]))
            if store:
                self.check_store(name, trace, [], want, ())
        else:
            line = int(read(p(".error")))
            self.check_error(name, self.replay(trace), trace, line)
            self.check_error(name + " --quiet", self.replay(trace, "--quiet"), trace, line)
            if os.path.exists(p(".keep-going.expected")):
                want = read(p(".keep-going.expected"))
                errors = [int(x) for x in read(p(".keep-going.errors")).split()]
                self.verdict(errors and errors[0] == line,
                             "%s: layout: the first of %s.keep-going.errors must be the line in %s.error"
                             % (name, name, name))
                self.check_listing(name + " --keep-going", self.replay(trace, "--keep-going"), want, errors, trace)
                if store:
                    self.check_store(name + " --keep-going", trace, ["--keep-going"], want, errors)
        return True

    # --- the folder, and the command line -------------------------------------

    def layout(self):
        """Self-check of the corpus: cases exist and every file belongs to one."""
        files = sorted(os.listdir(HERE))
        names = [f[:-len(".trace")] for f in files if f.endswith(".trace")]
        self.verdict(len(names) > 0, "self-check: no NAME.trace cases in %s" % HERE)
        good = []
        for n in names:
            has_exp, has_err = n + ".expected" in files, n + ".error" in files
            kg = [n + ".keep-going.expected" in files, n + ".keep-going.errors" in files]
            ok = has_exp != has_err and (not has_exp or not any(kg)) and kg[0] == kg[1]
            if ok and has_err:
                ok = re.fullmatch(r"\s*[1-9][0-9]*\s*", read(os.path.join(HERE, n + ".error"))) is not None
            if self.verdict(ok, "self-check: %s: needs exactly one of .expected / .error (a positive line number), "
                                "and .keep-going.expected with .keep-going.errors only beside .error" % n):
                good.append(n)
        known = set(["README.md", "run_golden.py", "__pycache__"])
        for n in names:
            for ext in (".trace", ".expected", ".error", ".keep-going.expected", ".keep-going.errors", ".impls"):
                known.add(n + ext)
        stray = [f for f in files if f not in known]
        self.verdict(not stray, "self-check: files that belong to no case: %s" % stray)
        self.verdict(any(os.path.exists(os.path.join(HERE, n + ".expected")) for n in good) and
                     any(os.path.exists(os.path.join(HERE, n + ".error")) for n in good),
                     "self-check: the corpus needs both listing (.expected) and error (.error) cases")
        return good

    def command_line(self, expected_cases, error_cases):
        impl = ["--impl", self.impl] if self.impl else []
        some = expected_cases[0] + ".trace" if expected_cases else "01-empty.trace"
        usage = [
            ["replay"],                                  # no TRACE
            ["replay", some, "--impl", "no-such-impl"],
            ["replay", some, "--no-such-option", *impl],
            ["replay", some, some, *impl],               # an extra positional
            ["replay", some, "--db", "unused-dir", *impl],     # --db needs --vm
            ["replay", some, "--vm", "g", *impl],              # --vm needs --db
            [],                                          # no subcommand
            ["no-such-subcommand"],
        ]
        for args in usage:
            rc, out, err = self.run(args)
            self.verdict(rc == 2 and out == "" and err.strip() != "",
                         "usage error 'cvmstate %s': want exit 2, empty stdout, a message on stderr; got %s, %r, %r"
                         % (" ".join(args), rc, out[:80], err[:160]))
        for trace, what in (("no-such-file.trace", "a missing trace"), (".", "a directory as trace")):
            rc, out, err = self.replay(trace)
            self.verdict(rc == 1 and out == "" and err.count("\n") == 1 and err.strip() != "",
                         "%s: want exit 1, empty stdout, one stderr line; got %s, %r, %r"
                         % (what, rc, out[:80], err[:200]))
        # Standard input: '-' is the trace, and names itself '-' in errors.
        for name in expected_cases[-3:]:
            with open(os.path.join(HERE, name + ".trace"), "rb") as f:
                rc, out, err = self.replay("-", stdin=f)
            want = read(os.path.join(HERE, name + ".expected"))
            self.verdict(rc == 0 and out == want and err == "",
                         "%s from standard input ('replay -'): exit %s, %s" % (name, rc, "listing matches" if out == want
                                                                               else first_difference(out, want)))
        for name in error_cases[:2]:
            line = int(read(os.path.join(HERE, name + ".error")))
            with open(os.path.join(HERE, name + ".trace"), "rb") as f:
                self.check_error(name + " from standard input", self.replay("-", stdin=f), "-", line)


def main():
    binary, impl = parse_args(sys.argv[1:])
    r = Runner(binary, impl)
    cases = r.layout()
    ran = [n for n in cases if r.case(n)]
    skipped = [n for n in cases if n not in ran]
    r.verdict(len(ran) > 0, "self-check: no case ran for implementation %s" % r.effective_impl)
    exp = [n for n in ran if os.path.exists(os.path.join(HERE, n + ".expected"))]
    err = [n for n in ran if os.path.exists(os.path.join(HERE, n + ".error"))]
    r.command_line(exp, err)
    if skipped:
        print("skipped for %s (see NAME.impls): %s" % (r.effective_impl, " ".join(skipped)))
    print("%d cases for %s" % (len(ran), r.effective_impl))
    print("%d passed, %d failed" % (r.passed, r.failed))
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
