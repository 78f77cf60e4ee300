"""Benchmarks: fastce.torch (the torch front end) vs torch's own functions, and vs fastce's NumPy API.

Groups (one pytest-benchmark table each):

``torch-ce-fwd-{N}x{C}-t{threads}``     the loss, logits not requiring grad:
    ``fastce.torch`` (``fastce.torch.cross_entropy``), ``torch`` (``F.cross_entropy``),
    ``numpy-api`` (``fastce.cross_entropy`` on the same memory: what the wrapper adds)
``torch-ce-fwdbwd-{N}x{C}-t{threads}``  ``loss.backward()`` on a leaf that requires grad
    (its ``.grad`` dropped before each call, untimed); ``numpy-api`` is
    ``fastce.cross_entropy_with_grad(x, t, out=buf)``
``torch-lce-fwdbwd-{N}x{H}x{V}-t{threads}`` ``fastce.torch.linear_cross_entropy`` vs torch's
    ``F.linear_cross_entropy`` (chunked: ``options=LinearCrossEntropyOptions()``) and the
    unfused ``F.cross_entropy(F.linear(h, W), t)``; gradients of hidden and weight

float32, reduction 'mean', random class-index targets. Shapes: by default the small end
of the grid, (32, 10), (512, 1000) and (64, 32000) (seconds in all); ``FASTCE_BENCH_TORCH_LARGE=1``
adds (65536, 10), (8192, 1000), (4096, 32000) and (512, 128256) (minutes: torch needs
~0.5 s and 1.5 GiB per fwd+bwd call at 4096 x 32000), and ``FASTCE_BENCH_TORCH_SHAPES=NxC,...``
replaces them. Linear CE: (256, 128, 8000) by default, (4096, 1024, 32000) with the large
set. Threads: bench/conftest.py's (1 and all cores; ``--bench-threads``); torch and fastce
get the same count.

    pytest bench/test_bench_torch.py --benchmark-only
"""
import math
import os
import time

import pytest

import fastce

torch = pytest.importorskip("torch")  # bench/ runs without torch too: skip this module then
F = torch.nn.functional
import fastce.torch as fce  # noqa: E402

SMALL = [(32, 10), (512, 1000), (64, 32000)]
LARGE = [(65536, 10), (8192, 1000), (4096, 32000), (512, 128256)]
LIN_SMALL = [(256, 128, 8000)]
LIN_LARGE = [(4096, 1024, 32000)]
TARGET_S = 0.3  # timed seconds per benchmark


def _large():
    return os.environ.get("FASTCE_BENCH_TORCH_LARGE", "") not in ("", "0")


def _shapes():
    text = os.environ.get("FASTCE_BENCH_TORCH_SHAPES")
    if text:
        return [tuple(int(d) for d in s.strip().split("x")) for s in text.split(",") if s.strip()]
    return SMALL + (LARGE if _large() else [])


@pytest.fixture
def nthreads(threads):
    """conftest's ``threads`` parameter (1 and all cores, or --bench-threads), for both libraries."""
    old_t, old_f = torch.get_num_threads(), fastce.get_num_threads()
    torch.set_num_threads(threads)
    fastce.set_num_threads(threads)
    yield threads
    torch.set_num_threads(old_t)
    fastce.set_num_threads(old_f)


_CACHE = {}


def _ce_inputs(shape):
    if shape not in _CACHE:
        _CACHE.clear()  # one large shape in memory at a time
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g) * 2
        t = torch.randint(0, shape[1], shape[:1], generator=g)
        _CACHE[shape] = (x, t, torch.empty_like(x))
    return _CACHE[shape]


def _time(benchmark, fn, setup=None):
    if setup is not None:
        setup()
    t0 = time.perf_counter()
    fn()  # warm-up, and the cost of one call
    once = max(time.perf_counter() - t0, 1e-6)
    rounds = max(3, min(500, math.ceil(TARGET_S / once)))
    return benchmark.pedantic(fn, setup=setup, rounds=rounds, iterations=1, warmup_rounds=1)


def _info(benchmark, op, impl, shape, nthreads):
    label = "x".join(map(str, shape))
    benchmark.group = f"torch-{op}-{label}-t{nthreads}"
    benchmark.extra_info.update(op=op, impl=impl, shape=list(shape), dtype="float32", threads=nthreads)


@pytest.mark.parametrize("impl", ["fastce.torch", "torch", "numpy-api"])
@pytest.mark.parametrize("shape", _shapes(), ids=lambda s: "x".join(map(str, s)))
def test_ce_fwd(benchmark, shape, nthreads, impl):
    x, t, _ = _ce_inputs(shape)
    _info(benchmark, "ce-fwd", impl, shape, nthreads)
    if impl == "fastce.torch":
        fn = lambda: fce.cross_entropy(x, t)  # noqa: E731
    elif impl == "torch":
        fn = lambda: F.cross_entropy(x, t)  # noqa: E731
    else:
        xn, tn = x.numpy(), t.numpy()
        fn = lambda: fastce.cross_entropy(xn, tn)  # noqa: E731
    _time(benchmark, fn)


@pytest.mark.parametrize("impl", ["fastce.torch", "torch", "numpy-api"])
@pytest.mark.parametrize("shape", _shapes(), ids=lambda s: "x".join(map(str, s)))
def test_ce_fwdbwd(benchmark, shape, nthreads, impl):
    x0, t, buf = _ce_inputs(shape)
    _info(benchmark, "ce-fwdbwd", impl, shape, nthreads)
    if impl == "numpy-api":
        xn, tn, bn = x0.numpy(), t.numpy(), buf.numpy()
        _time(benchmark, lambda: fastce.cross_entropy_with_grad(xn, tn, out=bn))
        return
    x = x0.detach().requires_grad_()
    loss_fn = fce.cross_entropy if impl == "fastce.torch" else F.cross_entropy

    def setup():
        x.grad = None

    def fn():
        loss_fn(x, t).backward()

    _time(benchmark, fn, setup)
    assert x.grad is not None and x.grad.shape == x.shape


def _lin_shapes():
    return LIN_SMALL + (LIN_LARGE if _large() else [])


@pytest.mark.parametrize("impl", ["fastce.torch", "torch-lce-chunked", "torch-unfused"])
@pytest.mark.parametrize("shape", _lin_shapes(), ids=lambda s: "x".join(map(str, s)))
def test_linear_ce_fwdbwd(benchmark, shape, nthreads, impl):
    n, hdim, v = shape
    g = torch.Generator().manual_seed(1)
    h = torch.randn(n, hdim, generator=g).requires_grad_()
    w = (torch.randn(v, hdim, generator=g) / math.sqrt(hdim)).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    _info(benchmark, "lce-fwdbwd", impl, shape, nthreads)
    if impl == "fastce.torch":
        fn = lambda: fce.linear_cross_entropy(h, w, t).backward()  # noqa: E731
    elif impl == "torch-lce-chunked":
        opts = torch.nn.LinearCrossEntropyOptions()
        fn = lambda: F.linear_cross_entropy(h, w, t, options=opts).backward()  # noqa: E731
    else:
        fn = lambda: F.cross_entropy(F.linear(h, w), t).backward()  # noqa: E731

    def setup():
        h.grad = w.grad = None

    _time(benchmark, fn, setup)
    assert h.grad is not None and w.grad is not None
