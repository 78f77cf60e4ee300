"""pytest-benchmark suites: fastce vs torch (CPU) vs NumPy user code, side by side.

Run::

    pytest bench/ --benchmark-only                        # reference shapes, float32+float64, 1 and all threads
    pytest bench/ --benchmark-only --bench-quick          # two smallest shapes, short timing (CI smoke)
    pytest bench/ --benchmark-only --benchmark-json=bench.json && python tools/bench_report.py bench.json

Every benchmark has a ``group`` ``"{op}-{N}x{C}-{dtype}-t{threads}"`` (op in ``lse``,
``log_softmax``, ``softmax``, ``ce-fwd``, ``ce-fwdbwd``, ``nll``, ``floor-read``,
``floor-copy``), so pytest-benchmark prints each comparison as one table, and
``extra_info`` with ``op``, ``impl``, ``shape``, ``dtype``, ``threads`` and ``nbytes``.
All implementations of a group see the same input arrays (torch through
``torch.from_numpy``: no copies) and the same thread count (fastce ``n_threads`` and
``fastce.set_num_threads``, ``torch.set_num_threads``).

Options (each also an environment variable, for CI):

``--bench-quick`` / ``FASTCE_BENCH_QUICK=1``
    Only the two smallest reference shapes and ~0.02 s per benchmark: seconds in all.
``--bench-shapes`` / ``FASTCE_BENCH_SHAPES``
    ``NxC,...`` instead of the reference shapes.
``--bench-dtypes`` / ``FASTCE_BENCH_DTYPES``
    ``float32,float64`` (default both).
``--bench-threads`` / ``FASTCE_BENCH_THREADS``
    ``1,2`` (default 1 and all cores).
``--bench-time`` / ``FASTCE_BENCH_TIME``
    Seconds of timed calls per benchmark (default 0.5; the rounds adapt to the cost of
    a call, at least ``--benchmark-min-rounds`` of them).

Timing goes through ``benchmark.pedantic`` so that set-up work (the copy of the logits
that ``inplace=True`` overwrites, releasing torch's previous gradient) stays outside
the timed region.  torch benchmarks are skipped when torch is not installed.
"""
import math
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property

import numpy as np
import pytest

from fastce.bench import REFERENCE_SHAPES, _usable_cpus, make_inputs, numpy_log_softmax, parse_shapes

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the torch benchmarks skip themselves
    torch = F = None

_SETTINGS = pytest.StashKey()

try:
    import pytest_benchmark  # noqa: F401
except ImportError:  # nothing to run without the plugin: collect nothing rather than error
    collect_ignore_glob = ["test_bench_*.py"]


class Settings:
    """What to run, from the command line or the environment."""

    def __init__(self, config):
        def opt(name, env):
            v = config.getoption(name, default=None)
            return v if v is not None else os.environ.get(env) or None

        self.quick = bool(config.getoption("--bench-quick", default=False)) or os.environ.get(
            "FASTCE_BENCH_QUICK", "") not in ("", "0")
        shapes = opt("--bench-shapes", "FASTCE_BENCH_SHAPES")
        if shapes:
            try:
                self.shapes = parse_shapes(shapes)
            except Exception as exc:  # argparse.ArgumentTypeError: say it pytest's way
                raise pytest.UsageError(str(exc).replace("--shapes", "--bench-shapes")) from None
        elif self.quick:
            self.shapes = sorted(REFERENCE_SHAPES, key=lambda s: s[0] * s[1])[:2]
        else:
            self.shapes = list(REFERENCE_SHAPES)
        dtypes = opt("--bench-dtypes", "FASTCE_BENCH_DTYPES") or "float32,float64"
        self.dtypes = [d.strip() for d in dtypes.split(",") if d.strip()]
        for d in self.dtypes:
            if d not in ("float32", "float64"):
                raise pytest.UsageError(f"--bench-dtypes: expected float32 or float64, got {d!r}")
        threads = opt("--bench-threads", "FASTCE_BENCH_THREADS")
        if threads:
            try:
                self.threads = [int(t) for t in str(threads).split(",") if t.strip()]
            except ValueError:
                raise pytest.UsageError(f"--bench-threads: expected integers like 1,2, got {threads!r}") from None
            if not self.threads or any(t < 1 for t in self.threads):
                raise pytest.UsageError(f"--bench-threads: thread counts must be >= 1, got {threads!r}")
        else:
            self.threads = sorted({1, _usable_cpus()})
        t = opt("--bench-time", "FASTCE_BENCH_TIME")
        self.target = float(t) if t is not None else (0.02 if self.quick else 0.5)
        min_rounds = config.getoption("benchmark_min_rounds", default=5) or 5
        self.min_rounds = min(3, min_rounds) if self.quick else min_rounds
        self.max_rounds = 20 if self.quick else 200


def pytest_addoption(parser):
    group = parser.getgroup("fastce-bench", "fastce benchmark grid")
    group.addoption("--bench-quick", action="store_true", default=False,
                    help="only the two smallest reference shapes and short timing (or FASTCE_BENCH_QUICK=1)")
    group.addoption("--bench-shapes", default=None, help="NxC,... logits shapes (or FASTCE_BENCH_SHAPES)")
    group.addoption("--bench-dtypes", default=None,
                    help="float32,float64 (default both; or FASTCE_BENCH_DTYPES)")
    group.addoption("--bench-threads", default=None,
                    help="thread counts, e.g. 1,2 (default 1 and all cores; or FASTCE_BENCH_THREADS)")
    group.addoption("--bench-time", type=float, default=None,
                    help="seconds of timed calls per benchmark (default 0.5, 0.02 quick; or FASTCE_BENCH_TIME)")


def pytest_configure(config):
    config.stash[_SETTINGS] = Settings(config)


def pytest_report_header(config):
    s = config.stash.get(_SETTINGS, None)
    if s is None:
        return None
    import fastce

    isa = getattr(fastce, "get_isa", lambda: "?")()
    return (f"fastce bench: shapes {','.join(f'{n}x{c}' for n, c in s.shapes)}; dtypes {','.join(s.dtypes)}; "
            f"threads {','.join(map(str, s.threads))}; ~{s.target:g} s per benchmark; ISA {isa}; "
            f"torch {torch.__version__ if torch is not None else 'not installed (torch benchmarks skip)'}")


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record fastce's version and ISA and the library versions in --benchmark-json."""
    import fastce

    machine_info["fastce"] = {
        "version": getattr(fastce, "__version__", "?"),
        "isa": getattr(fastce, "get_isa", lambda: "?")(),
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "threads": config.stash[_SETTINGS].threads,
    }


def pytest_generate_tests(metafunc):
    s = metafunc.config.stash[_SETTINGS]
    if "case" in metafunc.fixturenames:
        params = [(shape, dtype) for dtype in s.dtypes for shape in s.shapes]
        metafunc.parametrize("case", params, indirect=True, scope="session",
                             ids=[f"{n}x{c}-{d}" for (n, c), d in params])
    if "threads" in metafunc.fixturenames:
        metafunc.parametrize("threads", s.threads, ids=[f"t{t}" for t in s.threads])


class Case:
    """Inputs of one (shape, dtype), shared by every implementation.

    Buffers are made on first use, with every page touched once (outside any timing).
    The torch views (``xt``, ``xg``, ``yt``, ...) skip the requesting benchmark when
    torch is not installed.
    """

    def __init__(self, shape, dtype):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.label = f"{shape[0]}x{shape[1]}"
        self.x, self.y = make_inputs(shape, dtype, seed=0)

    # NumPy buffers -----------------------------------------------------------------
    @cached_property
    def buf(self):
        """(N, C) buffer: out= of the fused call and of (log_)softmax, copy-floor target."""
        b = np.empty_like(self.x)
        np.copyto(b, self.x)
        return b

    @cached_property
    def scratch(self):
        """(N, C) buffer that ``inplace=True`` overwrites (refilled before each call)."""
        b = np.empty_like(self.x)
        np.copyto(b, self.x)
        return b

    @cached_property
    def row_buf(self):
        """(N,) buffer for logsumexp's out=."""
        return np.zeros(self.shape[0], dtype=self.x.dtype)

    @cached_property
    def logp(self):
        """Log-probabilities of x (the input of nll_loss)."""
        return numpy_log_softmax(self.x.astype(np.float64)).astype(self.x.dtype)

    # torch views ---------------------------------------------------------------------
    @property
    def torch(self):
        if torch is None:
            pytest.skip("torch is not installed")
        return torch

    @property
    def F(self):
        self.torch  # noqa: B018 - skips without torch
        return F

    @cached_property
    def xt(self):
        return self.torch.from_numpy(self.x)

    @cached_property
    def xg(self):
        """x as an autograd leaf (shares memory with x)."""
        return self.torch.from_numpy(self.x).requires_grad_(True)

    @cached_property
    def yt(self):
        return self.torch.from_numpy(self.y)

    @cached_property
    def logpt(self):
        return self.torch.from_numpy(self.logp)

    @cached_property
    def buft(self):
        return self.torch.from_numpy(self.buf)


@pytest.fixture(scope="session")
def case(request):
    """The inputs of one (shape, dtype); one at a time is alive (pytest tears the last down)."""
    shape, dtype = request.param
    c = Case(shape, dtype)
    yield c
    del c


@pytest.fixture
def nthreads(threads):
    """The thread count of this benchmark, set for fastce's default and for torch."""
    import fastce

    old_fastce = fastce.get_num_threads() if hasattr(fastce, "get_num_threads") else None
    if old_fastce is not None:
        fastce.set_num_threads(threads)
    old_torch = None
    if torch is not None:
        old_torch = torch.get_num_threads()
        torch.set_num_threads(threads)
    yield threads
    if old_fastce is not None:
        fastce.set_num_threads(old_fastce)
    if old_torch is not None:
        torch.set_num_threads(old_torch)


_POOLS = {}


@pytest.fixture(scope="session")
def thread_pools():
    """ThreadPoolExecutors by size (for the threaded NumPy floors); shut down at the end."""
    yield _POOLS
    for p in _POOLS.values():
        p.shutdown()
    _POOLS.clear()


_LAST_RUNTIME = [None]


def _runtime_switch(impl):
    """Pause when switching between torch and the rest (each has its own OpenMP runtime,
    whose worker threads spin for a few ms after a parallel region: let them sleep)."""
    fam = "torch" if impl.startswith("torch") else "other"
    if _LAST_RUNTIME[0] not in (None, fam):
        time.sleep(0.03)
    _LAST_RUNTIME[0] = fam


def _plan(fn, setup, s):
    """Warm up, time a few untimed calls and choose (rounds, iterations)."""
    if setup is not None:
        setup()
    fn()  # warm-up
    times, spent = [], 0.0
    while True:
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
        times.append(t)
        spent += t
        if spent >= min(0.05, s.target / 4) or len(times) >= 10:
            break
    per_call = max(statistics.median(times), 1e-9)
    iterations = 1
    if setup is None and per_call < 1e-4:  # rounds of at least ~0.1 ms: timer noise stays small
        iterations = math.ceil(1e-4 / per_call)
    rounds = math.ceil(s.target / (per_call * iterations))
    return int(min(s.max_rounds, max(s.min_rounds, rounds))), iterations


@pytest.fixture
def bench(benchmark, case, nthreads, request):
    """``bench(op, impl, fn, setup=None)``: time ``fn`` in the group of this case.

    ``setup`` runs before every timed call, outside the timed region.
    """
    s = request.config.stash[_SETTINGS]

    def run(op, impl, fn, setup=None):
        benchmark.group = f"{op}-{case.label}-{case.dtype}-t{nthreads}"
        benchmark.extra_info.update(op=op, impl=impl, shape=list(case.shape), dtype=case.dtype,
                                    threads=nthreads, nbytes=int(case.x.nbytes))
        _runtime_switch(impl)
        wrapped = None
        if setup is not None:
            def wrapped():
                setup()
                return None
        if getattr(benchmark, "disabled", False):
            return benchmark.pedantic(fn, setup=wrapped, rounds=1, iterations=1)
        rounds, iterations = _plan(fn, setup, s)
        return benchmark.pedantic(fn, setup=wrapped, rounds=rounds, iterations=iterations)

    return run


@pytest.fixture
def pool(thread_pools, nthreads):
    """A thread pool of ``nthreads`` workers."""
    if nthreads not in thread_pools:
        thread_pools[nthreads] = ThreadPoolExecutor(nthreads)
    return thread_pools[nthreads]
