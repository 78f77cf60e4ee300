"""Benchmarks: fused linear + cross-entropy (an LM head's loss), hidden (N, H) @ weight.T (V, H).

Implementations, all float32, reduction='mean', no bias, every row a real target:

``fastce``              :func:`fastce.linear_cross_entropy` / ``..._with_grad`` (chunks of rows,
                        one reused (chunk, V) logits buffer, default 64 MiB budget)
``torch-lce-chunked``   ``F.linear_cross_entropy(h, W, t, options=LinearCrossEntropyOptions())``
                        (torch's chunked path; its default ``options=None`` *is* the unfused
                        path below, so it is not timed separately)
``torch-unfused``       ``F.cross_entropy(F.linear(h, W), t)``: the N x V logits materialised

Groups ``linear-ce-fwd-{N}x{H}x{V}-float32`` (the loss only; torch without autograd) and
``linear-ce-fwdbwd-{N}x{H}x{V}-float32`` (loss and the gradients of hidden and weight;
torch through ``loss.backward()`` on leaf tensors, their ``.grad`` released before each
call, untimed).  Shapes: 4096x1024x32000 (fwd and fwdbwd) and 4096x1024x128256 (fwd only:
one fwdbwd call there is ~3 full GEMMs of 4096x1024x128256, over a minute per call on 2
cores); ``--bench-quick`` / ``FASTCE_BENCH_QUICK=1`` uses two small shapes instead, and
``FASTCE_BENCH_LINEAR_SHAPES=NxHxV[:fwd],...`` any others (``:fwd`` = forward only).

Threads: the largest of ``--bench-threads`` (default all cores) for fastce's kernels, for
the BLAS (``threadpoolctl``) and for torch.  Each call here costs seconds, so rounds are
few (3 when a call takes under 20 s, else 2), after one untimed call that measures memory.

``extra_info`` records ``peak_extra_bytes`` (one call: tracemalloc for fastce, torch's
profiler memory events for torch) and ``peak_extra_bytes_excl_outputs`` (minus the
gradients of hidden and weight that a fwdbwd call returns), next to ``logits_bytes``
(N x V x 4, what the unfused path holds).
"""
import math
import os
import time
import warnings

import numpy as np
import pytest

import fastce
from fastce.bench import _usable_cpus, peak_extra_torch, peak_extra_tracemalloc

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the torch benchmarks skip themselves
    torch = F = None

FULL_SHAPES = [((4096, 1024, 32000), True), ((4096, 1024, 128256), False)]  # (shape, with fwdbwd)
QUICK_SHAPES = [((1024, 128, 4000), True), ((1024, 256, 8000), True)]
IMPLS = ["fastce", "torch-lce-chunked", "torch-unfused"]


def _quick(config):
    return bool(config.getoption("--bench-quick", default=False)) or os.environ.get(
        "FASTCE_BENCH_QUICK", "") not in ("", "0")


def _shapes(config):
    text = os.environ.get("FASTCE_BENCH_LINEAR_SHAPES")
    if text:
        out = []
        for item in text.split(","):
            item = item.strip()
            fwd_only = item.endswith(":fwd")
            dims = item.removesuffix(":fwd").split("x")
            if len(dims) != 3 or not all(d.isdigit() and int(d) > 0 for d in dims):
                raise pytest.UsageError(f"FASTCE_BENCH_LINEAR_SHAPES: expected NxHxV[:fwd], got {item!r}")
            out.append((tuple(int(d) for d in dims), not fwd_only))
        return out
    return QUICK_SHAPES if _quick(config) else FULL_SHAPES


def _threads(config):
    text = config.getoption("--bench-threads", default=None) or os.environ.get("FASTCE_BENCH_THREADS")
    if text:
        return max(int(t) for t in str(text).split(",") if t.strip())
    return _usable_cpus()


def pytest_generate_tests(metafunc):
    if "lin_case" in metafunc.fixturenames:
        shapes = _shapes(metafunc.config)
        if metafunc.function.__name__.endswith("fwdbwd"):
            shapes = [s for s in shapes if s[1]]
        metafunc.parametrize("lin_case", [s for s, _ in shapes], indirect=True, scope="module",
                             ids=[f"{n}x{h}x{v}" for (n, h, v), _ in shapes])


class LinCase:
    """Inputs of one (N, H, V) float32 shape, shared by every implementation."""

    def __init__(self, shape):
        n, h, v = shape
        self.shape = shape
        self.label = f"{n}x{h}x{v}"
        rng = np.random.default_rng([n, h, v])
        self.hidden = rng.standard_normal((n, h), dtype=np.float32)
        self.weight = rng.standard_normal((v, h), dtype=np.float32) * np.float32(1.0 / math.sqrt(h))
        self.target = rng.integers(0, v, size=n)

    @property
    def logits_bytes(self):
        return self.shape[0] * self.shape[2] * 4

    @property
    def grads_bytes(self):
        n, h, v = self.shape
        return (n * h + v * h) * 4


@pytest.fixture(scope="module")
def lin_case(request):
    # first calls import things (SciPy's BLAS for the multi-chunk weight gradient) whose
    # allocations tracemalloc would count: make them here, on a tiny problem
    tiny = np.ones((2, 3), np.float32)
    fastce.linear_cross_entropy(tiny, tiny, np.zeros(2, np.int64), chunk_size=1)
    fastce.linear_cross_entropy_with_grad(tiny, tiny, np.zeros(2, np.int64), chunk_size=1)
    c = LinCase(request.param)
    yield c
    del c


@pytest.fixture
def lin_threads(request):
    """All of fastce, the BLAS and torch on the same thread count."""
    from threadpoolctl import threadpool_limits

    n = _threads(request.config)
    old_fastce = fastce.get_num_threads()
    fastce.set_num_threads(n)
    old_torch = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    with threadpool_limits(n, user_api="blas"):
        yield n
    fastce.set_num_threads(old_fastce)
    if torch is not None:
        torch.set_num_threads(old_torch)


def _require_torch():
    if torch is None:
        pytest.skip("torch is not installed")
    if not hasattr(F, "linear_cross_entropy"):
        pytest.skip(f"torch {torch.__version__} has no F.linear_cross_entropy")


def _run(benchmark, request, case, threads, op, impl, fn, setup=None, torch_mem=False):
    benchmark.group = f"linear-ce-{op}-{case.label}-float32"
    n, h, v = case.shape
    benchmark.extra_info.update(op=f"linear-ce-{op}", impl=impl, shape=[n, h, v], dtype="float32",
                                threads=threads, logits_bytes=case.logits_bytes)
    # one untimed call: the memory measurement, and the warm-up
    t0 = time.perf_counter()
    if torch_mem:
        peak = peak_extra_torch(torch, fn, setup)
    else:
        peak = peak_extra_tracemalloc(fn, setup)
    per_call = time.perf_counter() - t0
    if peak is not None:
        outputs = case.grads_bytes if op == "fwdbwd" else 0
        benchmark.extra_info.update(peak_extra_bytes=int(peak),
                                    peak_extra_bytes_excl_outputs=int(max(0, peak - outputs)))
    if getattr(benchmark, "disabled", False):
        return benchmark.pedantic(fn, setup=setup, rounds=1, iterations=1)
    if _quick(request.config):
        rounds = 3
    else:
        rounds = 3 if per_call < 20 else 2
        if per_call < 1:
            rounds = max(3, min(20, math.ceil(2.0 / per_call)))
    wrapped = None
    if setup is not None:
        def wrapped():
            setup()
    return benchmark.pedantic(fn, setup=wrapped, rounds=rounds, iterations=1)


@pytest.mark.parametrize("impl", IMPLS)
def test_linear_ce_fwd(benchmark, request, lin_case, lin_threads, impl):
    h, w, t = lin_case.hidden, lin_case.weight, lin_case.target
    torch_mem = impl != "fastce"
    if impl == "fastce":
        def fn():
            return fastce.linear_cross_entropy(h, w, t, n_threads=lin_threads)
    else:
        _require_torch()
        ht, wt, tt = torch.from_numpy(h), torch.from_numpy(w), torch.from_numpy(t)
        if impl == "torch-lce-chunked":
            options = torch.nn.LinearCrossEntropyOptions()

            def fn():
                with torch.no_grad():
                    return F.linear_cross_entropy(ht, wt, tt, options=options)
        else:
            def fn():
                with torch.no_grad():
                    return F.cross_entropy(F.linear(ht, wt), tt)
    _run(benchmark, request, lin_case, lin_threads, "fwd", impl, fn, torch_mem=torch_mem)


@pytest.mark.parametrize("impl", IMPLS)
def test_linear_ce_fwdbwd(benchmark, request, lin_case, lin_threads, impl):
    h, w, t = lin_case.hidden, lin_case.weight, lin_case.target
    setup = None
    leaves = ()
    if impl == "fastce":
        def fn():
            return fastce.linear_cross_entropy_with_grad(h, w, t, n_threads=lin_threads)
    else:
        _require_torch()
        ht = torch.from_numpy(h).requires_grad_(True)
        wt = torch.from_numpy(w).requires_grad_(True)
        tt = torch.from_numpy(t)
        leaves = (ht, wt)

        def setup():
            ht.grad = wt.grad = None

        if impl == "torch-lce-chunked":
            options = torch.nn.LinearCrossEntropyOptions()

            def fn():
                loss = F.linear_cross_entropy(ht, wt, tt, options=options)
                loss.backward()
                return loss
        else:
            def fn():
                loss = F.cross_entropy(F.linear(ht, wt), tt)
                loss.backward()
                return loss
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _run(benchmark, request, lin_case, lin_threads, "fwdbwd", impl, fn, setup,
                 torch_mem=impl != "fastce")
    finally:
        for leaf in leaves:
            leaf.grad = None  # do not keep V x H gradients alive between benchmarks
