#!/usr/bin/env python
"""Build fastce with AddressSanitizer + UndefinedBehaviorSanitizer and run tests under it.

Usage::

    python tools/sanitize.py                 # build (incremental), run the default subset
    python tools/sanitize.py -- test_bce.py  # pytest arguments after "--" (run in tests/)
    python tools/sanitize.py --build-only

The sanitized extension is a second build, in its own copy of the sources
(``build/sanitize/tree`` by default): the normal in-place build and any installed fastce
are left alone.  It is compiled with ``-fsanitize=address,undefined
-fno-sanitize-recover=undefined -fno-omit-frame-pointer -g`` (setup.py's own flags,
-O3 included, come after, so the optimised kernels are what gets checked) through the
CFLAGS and LDFLAGS that setuptools appends to every compile and link.  Only the extension
is instrumented; Python is not, so the ASan runtime is preloaded (``LD_PRELOAD``) and
``PYTHONMALLOC=malloc`` sends Python's own allocations through it as well.  Leak
detection is off: CPython keeps its interned objects alive until exit by design.

Every report fails the run: a report ends the process that hit it (UBSan included, by
``-fno-sanitize-recover``) with a non-zero status.  pytest runs with ``--capture=sys`` so
that a report from the test process itself reaches the log (fd-level capture would
swallow it with the dying process), and its stderr is scanned for reports as well; a
child process's report (the fuzz worker, the fork and crash tests) fails the test that
ran it, with the report in the failure message.  A missing sanitizer runtime or a
compiler without ``-fsanitize`` is an error, never a skip.

Needs Cython, setuptools and NumPy in the running Python (the build is ``python setup.py
build_ext --inplace`` in the copy) and the test extras (pytest, torch, hypothesis).
Exit status: 0 clean; 1 a failed test or a sanitizer report; 2 the toolchain is missing
or the build failed.
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SAN_CFLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
              "-fno-omit-frame-pointer", "-g"]
SAN_LDFLAGS = ["-fsanitize=address,undefined"]

#: what the build needs from the source tree
SOURCES = ["setup.py", "pyproject.toml", "README.md", "fastce", "src", "include"]

#: The default subset (tests/ files), picked for coverage of the compiled code per second:
#: every kernel family (softmax, CE rows / columns / split rows, BCE, linear CE) on every
#: ISA the CPU has, every layout, the compiled contract's argument checks, the
#: reliability and fuzz suites (bad input, aliasing, huge sizes, fork, threads), half
#: precision and the LLM options.  The whole suite takes ~15 min unsanitized on 2 cores.
DEFAULT_TESTS = [
    "test_softmax.py", "test_cross_entropy.py", "test_contract.py", "test_errors.py",
    "test_bce.py", "test_linear.py", "test_llm_options.py", "test_reliability.py",
    "test_fuzz.py",
]
#: ... less reduction='sum' in the two largest option products (a quarter of the run):
#: 'sum' takes the kernels' path of 'mean', only the final scale differs
DEFAULT_K = "not ((test_vs_reference or test_options_vs_reference) and sum)"


def fail(msg, code=2):
    print(f"sanitize: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def compiler():
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return cc.split()


def asan_runtime(cc):
    """The ASan runtime to preload (gcc's libasan.so), checked to exist."""
    try:
        path = subprocess.run([*cc, "-print-file-name=libasan.so"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        fail(f"cannot ask the compiler {cc} for libasan.so: {exc}")
    if not os.path.isabs(path) or not os.path.exists(path):
        fail(f"the compiler {' '.join(cc)} has no AddressSanitizer runtime (libasan.so: "
             f"{path!r}); on Debian/Ubuntu it comes with gcc (libasan8, libubsan1)")
    return os.path.realpath(path)


def probe(cc):
    """Compile and link a sanitized shared object, as the real build will."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("int probe(int *p, int i) { return p[i] << i; }\n")
        cmd = [*cc, *SAN_CFLAGS, "-fPIC", "-shared", src, "-o", os.path.join(tmp, "probe.so"),
               *SAN_LDFLAGS]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            fail(f"the compiler cannot build with -fsanitize=address,undefined:\n"
                 f"  {' '.join(cmd)}\n{proc.stderr}")


def copy_sources(tree):
    """Mirror the sources into ``tree``, keeping modification times (so the in-place
    build there is incremental) and never copying a built module or build products."""
    ignore = shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "build", "_kernels.c",
                                    "_kernels.html")
    os.makedirs(tree, exist_ok=True)
    for name in SOURCES:
        src, dst = os.path.join(ROOT, name), os.path.join(tree, name)
        if os.path.isdir(src):
            shutil.copytree(src, dst, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)


def build(tree, jobs):
    env = dict(os.environ)
    env["CFLAGS"] = " ".join([env.get("CFLAGS", ""), *SAN_CFLAGS]).strip()
    env["LDFLAGS"] = " ".join([env.get("LDFLAGS", ""), *SAN_LDFLAGS]).strip()
    cmd = [sys.executable, "setup.py", "-q", "build_ext", "--inplace", "-j", str(jobs)]
    print(f"sanitize: building in {tree}\n  CFLAGS={env['CFLAGS']}\n  LDFLAGS={env['LDFLAGS']}\n"
          f"  {' '.join(cmd)}", flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode:
        fail(f"the sanitized build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    mods = glob.glob(os.path.join(tree, "fastce", "_kernels.*"))
    mods = [m for m in mods if m.endswith((".so", ".pyd"))]
    if len(mods) != 1:
        fail(f"expected one built fastce._kernels in {tree}/fastce, found {mods}")
    with open(mods[0], "rb") as f:
        blob = f.read()
    # the flags really reached the compiler and the linker
    for marker in (b"__asan_report_", b"__ubsan_handle_"):
        if marker not in blob:
            fail(f"{mods[0]} has no {marker.decode()}* calls: not instrumented")
    print(f"sanitize: built {mods[0]} in {time.time() - t0:.0f} s", flush=True)
    return mods[0]


#: how a sanitizer report starts (ASan, UBSan, and the SEGV handler ASan installs)
MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer",
           "UndefinedBehaviorSanitizer", "AddressSanitizer:DEADLYSIGNAL")


def sanitizer_env(tree, runtime):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([tree, *filter(None, [env.get("PYTHONPATH")])])
    env["LD_PRELOAD"] = " ".join([runtime, *filter(None, [env.get("LD_PRELOAD")])])
    env["PYTHONMALLOC"] = "malloc"
    env["ASAN_OPTIONS"] = ":".join([
        "detect_leaks=0",                # CPython's deliberate at-exit "leaks"
        "halt_on_error=1", "abort_on_error=0",
        "allocator_may_return_null=1",   # huge-size tests expect MemoryError, not a report
    ])
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
    return env


def run_scanned(cmd, cwd, env):
    """Run ``cmd`` with its stderr copied through; (exit status, report lines seen)."""
    seen = []
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stderr=subprocess.PIPE)

    def pump():
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            sys.stderr.write(line)
            if any(m in line for m in MARKERS):
                seen.append(line.rstrip())
        sys.stderr.flush()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    rc = proc.wait()
    t.join()
    return rc, seen


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build", "sanitize"),
                    help="where the sanitized copy is built (default: build/sanitize)")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1,
                    help="parallel compiles (default: all processors)")
    ap.add_argument("--build-only", action="store_true", help="build, run no test")
    ap.add_argument("pytest_args", nargs="*",
                    help="pytest arguments after --, run in tests/ (default: the subset)")
    args = ap.parse_args(argv)

    if not sys.platform.startswith("linux"):
        fail("the sanitizer run is for Linux with gcc (LD_PRELOAD of libasan)")
    cc = compiler()
    runtime = asan_runtime(cc)
    probe(cc)
    build_dir = os.path.abspath(args.build_dir)
    tree = os.path.join(build_dir, "tree")
    copy_sources(tree)
    build(tree, args.jobs)
    if args.build_only:
        return 0

    env = sanitizer_env(tree, runtime)
    # the tests must import the sanitized build, not the source tree or an installed one
    check = subprocess.run(
        [sys.executable, "-c", "import fastce._kernels as k; print(k.__file__)"],
        cwd=os.path.join(ROOT, "tests"), env=env, capture_output=True, text=True)
    if check.returncode or not check.stdout.strip().startswith(tree):
        fail(f"the sanitized fastce does not import (or another one does):\n{check.stdout}"
             f"{check.stderr}", code=1)

    pytest_args = args.pytest_args or ["-q", "-p", "no:cacheprovider", "-k", DEFAULT_K,
                                       *DEFAULT_TESTS]
    cmd = [sys.executable, "-m", "pytest", "--capture=sys", *pytest_args]
    print(f"sanitize: LD_PRELOAD={env['LD_PRELOAD']} PYTHONMALLOC=malloc\n"
          f"  ASAN_OPTIONS={env['ASAN_OPTIONS']}\n  UBSAN_OPTIONS={env['UBSAN_OPTIONS']}\n"
          f"  (cd tests && {' '.join(cmd)})", flush=True)
    t0 = time.time()
    rc, seen = run_scanned(cmd, os.path.join(ROOT, "tests"), env)
    for line in seen:
        print(f"sanitize: report: {line}", flush=True)
    verdict = ("clean" if rc == 0 and not seen else
               f"FAILED: pytest exit status {rc}, {len(seen)} sanitizer report line(s) in the "
               f"test process (reports in child processes are in the failing tests' messages)")
    print(f"\nsanitize: {verdict} ({time.time() - t0:.0f} s of tests)", flush=True)
    return 0 if rc == 0 and not seen else 1


if __name__ == "__main__":
    sys.exit(main())
